"""What a member sees, and when: a long-polling /sync of the member's own, recording the
moment each message reaches them.

The member's client (tests/support/member.py) reads rooms by pagination, which is right
for what arrived but too coarse for when: here every incremental /sync answer is stamped
with ``time.monotonic()`` as it comes in, so a figure is the time until a member's client
would show the message.

The sync runs in a process of its own, as a member's client does: in the bench's process,
which also runs the bot under test, its answers were stamped only once the bot's own work
let the event loop read them, so the bot's CPU time was counted twice (as its work and
again as a late stamp) and raw nio's, which does almost nothing between sends, was not.
``time.monotonic()`` is the system's monotonic clock, the same in both processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.synapse import RegisteredUser, matrix_request

_FILTER = json.dumps({
    "room": {"timeline": {"types": ["m.room.message"], "limit": 500},
             "state": {"types": []}, "ephemeral": {"types": []},
             "account_data": {"types": []}},
    "presence": {"types": []}, "account_data": {"types": []},
})
_READY = "ready"
_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Seen:
    at: float                   # time.monotonic() when the /sync answer carrying it came
    room_id: str
    event: dict[str, Any]

    @property
    def sender(self) -> str:
        return str(self.event.get("sender", ""))

    @property
    def body(self) -> str:
        return str(self.event.get("content", {}).get("body", ""))


class MemberSync:
    """``async with MemberSync(base_url, user) as sync:`` then ``mark = sync.mark()``,
    act, and ``await sync.wait(lambda seen: ..., count, after=mark)``."""

    def __init__(self, base_url: str, user: RegisteredUser) -> None:
        self._base_url = base_url
        self._user = user
        self._seen: list[Seen] = []
        self._arrived = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemberSync:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.member_sync", self._base_url,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=_ROOT, limit=2**26)
        assert self._process.stdin is not None and self._process.stdout is not None
        # The token goes by a pipe, never on a command line others can read.
        self._process.stdin.write(self._user.access_token.encode() + b"\n")
        await self._process.stdin.drain()
        # Its first sync only finds where "now" is: what came before is not counted.
        line = await asyncio.wait_for(self._process.stdout.readline(), 60)
        if line.strip() != _READY.encode():
            await self.__aexit__()
            raise RuntimeError(f"the member's sync did not start: {line[:300]!r}")
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            record = json.loads(line)
            self._seen.append(Seen(record["at"], record["room_id"], record["event"]))
            self._arrived.set()
        raise RuntimeError(f"the member's sync ended (exit {await self._process.wait()})")

    def mark(self) -> int:
        """A point in what was seen: ``wait(after=mark)`` looks only at what came later."""
        return len(self._seen)

    async def wait(self, match: Callable[[Seen], bool], count: int, *, after: int = 0,
                   timeout: float = 120.0) -> list[Seen]:  # noqa: ASYNC109 (a deadline)
        """The first ``count`` messages seen after ``after`` that ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()         # the sync died: say why
            found = [s for s in self._seen[after:] if match(s)]
            if len(found) >= count:
                return found[:count]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self._user.user_id} saw {len(found)} of {count} "
                                   f"expected messages in {timeout:g} s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 1.0))


async def _sync_forever(base_url: str, access_token: str) -> None:
    """The member's process: one JSON line per message seen, stamped as its answer came."""
    url = base_url.rstrip("/") + "/_matrix/client/v3/sync"
    out = sys.stdout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def sync(since: str | None, timeout_ms: int) -> dict[str, Any]:
            params = {"timeout": str(timeout_ms), "filter": _FILTER}
            if since is not None:
                params["since"] = since
            return await matrix_request(session, "GET", url, access_token=access_token,
                                        params=params)
        since = str((await sync(None, 0))["next_batch"])
        out.write(_READY + "\n")
        out.flush()
        while True:
            answer = await sync(since, 20_000)
            now = time.monotonic()
            since = str(answer["next_batch"])
            for room_id, room in answer.get("rooms", {}).get("join", {}).items():
                for event in room.get("timeline", {}).get("events", []):
                    out.write(json.dumps({"at": now, "room_id": room_id, "event": event}) + "\n")
            out.flush()


if __name__ == "__main__":
    asyncio.run(_sync_forever(sys.argv[1], sys.stdin.readline().strip()))
