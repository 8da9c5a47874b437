"""Reading the state in tests: a row's message as the Matrix transport would send it, and
every stored row that mentions something (a person, a conversation)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bot.model import Delivery
from bot.transport.matrix.events import message_content


def content_of(delivery: Delivery) -> dict[str, Any]:
    """The event content a row's message becomes (its picture not resolved yet)."""
    if delivery.message is None:
        return dict(delivery.payload or {})
    return message_content(delivery.message, key=delivery.key)


def rows_mentioning(db: Path, *needles: str) -> list[tuple[str, tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    found = []
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        found += [(table, row) for row in conn.execute(f"SELECT * FROM {table}")
                  if any(n in str(value) for value in row for n in needles)]
    conn.close()
    return found
