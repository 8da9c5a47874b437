"""What every line of the bench shares: the Synapse, the feed process, a work directory,
fresh users and an in-process bot."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.feedproc import FeedProcess
from bot.config import Config
from bot.store import SqliteStore
from tests.botkit import bot_config, load, write_config
from tests.support import MemberClient, RegisteredUser, SynapseServer

T = TypeVar("T")


@dataclass
class Scene:
    synapse: SynapseServer
    feeds: FeedProcess
    workdir: Path
    quick: bool
    log: Callable[[str], None]

    async def user(self, name: str) -> RegisteredUser:
        return await self.synapse.register(f"{name}-{uuid.uuid4().hex[:8]}")

    def config(self, name: str, bot: RegisteredUser, feeds: Sequence[dict[str, Any]],
               **extra: Any) -> Config:
        """A bot's configuration, written to and read back from a file as the bot would."""
        return load(self.config_file(name, bot, feeds, **extra), bot)

    def config_file(self, name: str, bot: RegisteredUser, feeds: Sequence[dict[str, Any]],
                    storage: Path | None = None, **extra: Any) -> Path:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        data = bot_config(homeserver=self.synapse.base_url, bot=bot,
                          storage=storage or home / "state", feeds=feeds, **extra)
        return write_config(home / "config.yaml", data)


async def bounded(limit: int, works: Iterable[Awaitable[T]]) -> list[T]:
    """``gather`` with at most ``limit`` at once (a homeserver is not to be flooded by
    the bench's own set-up)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(work: Awaitable[T]) -> T:
        async with semaphore:
            return await work

    return await asyncio.gather(*(one(w) for w in works))


async def until(check: Callable[[], Awaitable[bool]], what: str,
                timeout: float = 120.0) -> None:  # noqa: ASYNC109 (a deadline)
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        await asyncio.sleep(0.2)


async def joined_everywhere(member: MemberClient, rooms: Sequence[str], user_id: str) -> None:
    """Wait until ``user_id`` (the bot) is joined to every one of ``rooms``."""
    waiting = set(rooms)

    async def check() -> bool:
        joined = await bounded(8, (member.joined_members(r) for r in sorted(waiting)))
        for room, members in zip(sorted(waiting), joined, strict=True):
            if user_id in members:
                waiting.discard(room)
        return not waiting

    await until(check, f"{user_id} joined to {len(rooms)} room(s)")


async def polled_once(store: SqliteStore | Any, names: Sequence[str]) -> None:
    """Wait until each feed of ``names`` had its first poll (its first sight)."""
    async def check() -> bool:
        for name in names:
            state = await store.feed_state(name)
            if state is None or not state.initialized:
                return False
        return True

    await until(check, f"first poll of {len(names)} feed(s)")
