"""What a member sees, and when: a long-polling /sync of the member's own, recording the
moment each message reaches them.

The member's client (tests/support/member.py) reads rooms by pagination, which is right
for what arrived but too coarse for when: here every incremental /sync answer is stamped
with ``time.monotonic()`` as it comes in, so a figure is the time until a member's client
would show the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support.synapse import RegisteredUser, matrix_request

_FILTER = json.dumps({
    "room": {"timeline": {"types": ["m.room.message"], "limit": 500},
             "state": {"types": []}, "ephemeral": {"types": []},
             "account_data": {"types": []}},
    "presence": {"types": []}, "account_data": {"types": []},
})


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
        self._url = base_url.rstrip("/") + "/_matrix/client/v3/sync"
        self._user = user
        self._seen: list[Seen] = []
        self._arrived = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MemberSync:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        # The first sync only finds where "now" is: what came before is not counted.
        first = await self._sync(None, 0)
        self._task = asyncio.create_task(self._run(str(first["next_batch"])))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _sync(self, since: str | None, timeout_ms: int) -> dict[str, Any]:
        assert self._session is not None
        params = {"timeout": str(timeout_ms), "filter": _FILTER}
        if since is not None:
            params["since"] = since
        return await matrix_request(self._session, "GET", self._url,
                                    access_token=self._user.access_token, params=params)

    async def _run(self, since: str) -> None:
        while True:
            answer = await self._sync(since, 20_000)
            now = time.monotonic()
            since = str(answer["next_batch"])
            for room_id, room in answer.get("rooms", {}).get("join", {}).items():
                for event in room.get("timeline", {}).get("events", []):
                    self._seen.append(Seen(now, room_id, event))
            self._arrived.set()

    def mark(self) -> int:
        """A point in what was seen: ``wait(after=mark)`` looks only at what came later."""
        return len(self._seen)

    async def wait(self, match: Callable[[Seen], bool], count: int, *, after: int = 0,
                   timeout: float = 120.0) -> list[Seen]:  # noqa: ASYNC109 (a deadline)
        """The first ``count`` messages seen after ``after`` that ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            if self._task is not None and self._task.done():
                self._task.result()         # the sync loop died: say why
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
