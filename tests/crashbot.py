"""The bot as a process that dies abruptly at a chosen point (for crash tests).

``CRASH_POINT`` names a Store method and ``CRASH_WHEN`` says "before" or "after" it;
``CRASH_AT`` is which call (1 = first). The process then ends with os._exit — no cleanup,
no flush, like kill -9 — exactly between two steps of the delivery protocol.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bot.cli import main
from bot.store.sqlite import SqliteStore

point = os.environ["CRASH_POINT"]
when = os.environ.get("CRASH_WHEN", "before")
crash_at = int(os.environ.get("CRASH_AT", "1"))
original = getattr(SqliteStore, point)
calls = 0


async def crashing(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
    global calls
    calls += 1
    if calls == crash_at and when == "before":
        os._exit(137)
    result = await original(self, *args, **kwargs)
    if calls == crash_at and when == "after":
        os._exit(137)
    return result


setattr(SqliteStore, point, crashing)
sys.exit(main(sys.argv[1:]))
