"""Reading the outbox in tests: a row's message as the Matrix transport would send it."""

from __future__ import annotations

from typing import Any

from bot.model import Delivery
from bot.transport.matrix.events import message_content


def content_of(delivery: Delivery) -> dict[str, Any]:
    """The event content a row's message becomes (its picture not resolved yet)."""
    if delivery.message is None:
        return dict(delivery.payload or {})
    return message_content(delivery.message, key=delivery.key)
