"""How commands are taken in: the rate limit applies before a command is queued, each
room has its own bounded queue and worker, and workers go away when their room is quiet.
(The same promises against a real Synapse: tests/test_direct_messages.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

from bot.clock import SystemClock
from bot.commands import ROOM_QUEUE, CommandRunner, FeedView, Reply
from bot.config import load_config
from bot.delivery import Outbox
from bot.feeds.fetch import Fetcher
from bot.store import RoomFeed, SqliteStore
from bot.subscriptions import PersonalSubscriptions
from bot.transport.base import IncomingMessage, Transport

DM, ROOM = "!dm:test", "!room:test"


class Book:
    def feeds_in_room(self, room_id: str) -> list[FeedView]:
        return []

    async def name_taken(self, name: str) -> bool:
        return False

    async def may_add_feeds(self, room_id: str) -> bool:
        return False

    async def add_room_feed(self, feed: RoomFeed) -> None:
        pass

    async def remove_room_feed(self, name: str) -> None:
        pass


class Directs:
    """The only part of a transport the intake asks: which rooms are conversations."""

    def is_direct(self, room_id: str) -> bool:
        return room_id == DM

    def direct_rooms(self) -> dict[str, str]:
        return {DM: "@flood:test"}


def runner(tmp_path: Path) -> CommandRunner:
    path = tmp_path / "c.yaml"
    path.write_text(
        "matrix: {homeserver: 'http://127.0.0.1:1', user_id: '@bot:test',"
        " access_token: secret, device_id: DEV}\n"
        "storage: {path: state}\n"
        "feeds: [{name: actus, url: 'http://127.0.0.1:1/feed', rooms: ['!room:test'],"
        " public: true}]\n")
    config, _ = load_config(path, environ={})
    store = SqliteStore.open(tmp_path / "state")
    clock = SystemClock()
    subscriptions = PersonalSubscriptions(config, store, clock, lambda rooms: None)
    outbox = Outbox(store, clock, lambda rooms: None)
    return CommandRunner(config, store, cast(Transport, Directs()), cast(Fetcher, None),
                         Book(), clock, outbox, subscriptions=subscriptions)


def message(room: str, sender: str, n: int, body: str) -> IncomingMessage:
    return IncomingMessage(room, sender, f"$e{n}", body, 0)


async def test_a_flood_of_direct_messages_never_takes_a_moderators_place(
        tmp_path: Path) -> None:
    commands = runner(tmp_path)
    handled: list[IncomingMessage] = []

    async def handle(incoming: IncomingMessage, **_: Any) -> Reply | None:
        handled.append(incoming)
        return None
    commands.handle = handle  # type: ignore[method-assign]
    for n in range(250):
        commands.submit(message(DM, "@flood:test", n, "list"))
    commands.submit(message(ROOM, "@mod:test", 999, "!news pause actus"))
    task = asyncio.create_task(commands.run())
    try:
        deadline = time.monotonic() + 10
        while not any(m.sender == "@mod:test" for m in handled):
            assert time.monotonic() < deadline, "the moderator's command was dropped"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    flood = [m for m in handled if m.sender == "@flood:test"]
    assert len(flood) == 5 + 1       # the rate limit's five, and one "slow down" answer


async def test_each_room_has_a_bounded_queue_and_its_worker_ends_when_it_is_quiet(
        tmp_path: Path) -> None:
    commands = runner(tmp_path)
    gate = asyncio.Event()
    handled: list[str] = []

    async def handle(incoming: IncomingMessage, **_: Any) -> Reply | None:
        if incoming.room_id == ROOM:
            await gate.wait()        # a slow command holds its own room only
        handled.append(incoming.event_id)
        return None
    commands.handle = handle  # type: ignore[method-assign]
    task = asyncio.create_task(commands.run())
    try:
        # Many senders in one room (each within its rate limit): the room's queue is
        # bounded; another room is answered while this one waits.
        for n in range(ROOM_QUEUE * 3):
            commands.submit(message(ROOM, f"@u{n}:test", n, "!news status"))
        commands.submit(message(DM, "@flood:test", 1000, "help"))
        deadline = time.monotonic() + 10
        while "$e1000" not in handled:
            assert time.monotonic() < deadline, "a quiet room waited for a busy one"
            await asyncio.sleep(0.05)
        gate.set()
        deadline = time.monotonic() + 10
        while commands._rooms:
            assert time.monotonic() < deadline, "a worker outlived its room's commands"
            await asyncio.sleep(0.05)
        # At most the queue plus the one being handled when the queue filled up.
        assert len([e for e in handled if e != "$e1000"]) <= ROOM_QUEUE + 1
    finally:
        task.cancel()
