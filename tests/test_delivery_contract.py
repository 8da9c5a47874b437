"""The delivery contract, run against every transport: Matrix on a real Synapse, and an
in-memory network whose idempotency works like XMPP's (an origin id looked up in the
room's history, no server-side deduplication).

What every transport must give: each row arrives exactly once, in the order it was
queued, across a restart and across a crash between any two steps of the protocol
(claim, encode, record the attempt, send, acknowledge, mark sent), and after the
network forgot what it was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.clock import Clock
from bot.delivery import Deliverer, DeliveryTransport
from bot.errors import TemporaryTransportError
from bot.model import Message, Sent, delivery_key
from bot.store import NewDelivery, PollOutcome, SqliteStore, Store
from bot.store.postgres import PostgresStore
from bot.transport.matrix import MatrixTransport
from bot.transport.matrix.events import DELIVERY_KEY_FIELD, TXN_MEMORY_SECONDS
from bot.transport.xmpp import XmppAccount, XmppTransport
from tests.botkit import bot_config, load, write_config
from tests.support import MemberFactory, NewUserFactory, SynapseServer
from tests.support.memnet import MemoryNetwork, MemoryTransport
from tests.support.postgres import PostgresServer
from tests.support.prosody import ProsodyServer
from tests.support.xmppmember import XmppMember

FEED = "contract"


class Crash(BaseException):
    """The process dies here (not an error the worker could handle)."""


@dataclass
class Network:
    """One transport under the contract: how to make a fresh one (a new process), the
    room it posts to, and what a member of that room sees (delivery keys and first lines,
    oldest first)."""

    name: str
    room: str
    connect: Callable[[], Awaitable[DeliveryTransport]]
    received: Callable[[], Awaitable[list[tuple[str, str]]]]
    closers: list[Callable[[], Awaitable[None]]]
    # The state the rows are queued in (opened again: the same state, as after a restart).
    open_store: Callable[[], Awaitable[Store]]


# The contract on each network with SQLite, and on the in-memory one with PostgreSQL too
# (what the store does is the same whatever the network).
@pytest_asyncio.fixture(params=["matrix", "memory", "xmpp", "memory-postgres"])
async def network(request: pytest.FixtureRequest, tmp_path: Path, synapse: SynapseServer,
                  new_user: NewUserFactory, member: MemberFactory,
                  prosody: ProsodyServer, postgres: PostgresServer) -> AsyncIterator[Network]:
    closers: list[Callable[[], Awaitable[None]]] = []

    async def open_sqlite() -> Store:
        return SqliteStore.open(tmp_path / "state")

    if request.param == "xmpp":
        async for xmpp in xmpp_network(prosody, tmp_path, closers, open_sqlite):
            yield xmpp
        return
    if request.param.startswith("memory"):
        open_store = open_sqlite
        if request.param == "memory-postgres":
            url = await postgres.clean_database()

            async def open_postgres() -> Store:
                return await PostgresStore.open(url, max_size=4)
            open_store = open_postgres
        net = MemoryNetwork()

        async def connect_memory() -> DeliveryTransport:
            return MemoryTransport(net)

        async def received_memory() -> list[tuple[str, str]]:
            return [(p.origin_id, p.text.split("\n", 1)[0]) for p in net.room("news")]

        yield Network("memory", "news", connect_memory, received_memory, closers, open_store)
        return
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="contract")
    await alice.invite(room, bot.user_id)
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "matrix-state",
        feeds=[{"name": FEED, "url": "http://127.0.0.1:9/feed", "rooms": [room]}])), bot)
    session_store = SqliteStore.open(tmp_path / "matrix-state")

    async def connect_matrix() -> DeliveryTransport:
        transport = MatrixTransport(cfg.matrix, session_store, tmp_path / "matrix-state")
        await transport.connect()
        closers.append(transport.close)
        return transport

    async def received_matrix() -> list[tuple[str, str]]:
        events = await alice.messages(room, sender=bot.user_id)
        return [(str(e["content"].get(DELIVERY_KEY_FIELD)),
                 str(e["content"].get("body", "")).split("\n", 1)[0]) for e in events]

    try:
        yield Network("matrix", room, connect_matrix, received_matrix, closers, open_sqlite)
    finally:
        for close in closers:
            await close()
        session_store.close()


async def xmpp_network(prosody: ProsodyServer, tmp_path: Path,
                       closers: list[Callable[[], Awaitable[None]]],
                       open_store: Callable[[], Awaitable[Store]]) -> AsyncIterator[Network]:
    """A group chat on a real Prosody, made by its member alice, who reads its archive."""
    bot = await prosody.register("newsbot")
    room = prosody.new_room("contract")
    account = XmppAccount(bot.jid, bot.password, nick="newsbot", host=prosody.host,
                          port=prosody.port, tls=False)
    session_store = SqliteStore.open(tmp_path / "xmpp-state")
    async with XmppMember(prosody, await prosody.register("alice")) as alice:
        await alice.join(room)

        async def connect_xmpp() -> DeliveryTransport:
            # No history at join: a delivery is found in the room's archive, the hard way.
            transport = XmppTransport(account, session_store, join_history=0)
            await transport.connect()
            closers.append(transport.close)
            return transport

        async def received_xmpp() -> list[tuple[str, str]]:
            return [(m.origin_id, m.body.split("\n", 1)[0].strip("*"))
                    for m in await alice.archive(room) if m.sender == "newsbot"]

        try:
            yield Network("xmpp", f"xmpp:{room}", connect_xmpp, received_xmpp, closers,
                          open_store)
        finally:
            for close in closers:
                await close()
            session_store.close()


class LaterClock:
    """A clock that can jump: the network then may have forgotten earlier sends."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


async def queue(store: Store, room: str, titles: list[str]) -> list[str]:
    """Queue one row per title; returns their delivery keys, in order."""
    await store.ensure_feed(FEED, "http://127.0.0.1:9/feed")
    rows = [NewDelivery(t, room, Message(f"{t}\nhttps://example.org/{t}",
                                         f"<p>{t}</p>")) for t in titles]
    await store.record_poll(PollOutcome(FEED, time.time(), time.time() + 60, None, None, None, None,
                                  None, titles, rows))
    return [delivery_key(FEED, t, room) for t in titles]


async def deliver_all(store: Any, transport: DeliveryTransport, room: str,
                      clock: Clock | None = None, timeout: float = 30.0) -> Deliverer:
    deliverer = Deliverer(store, transport, clock or LaterClock(), retry_base=0.05)
    worker = asyncio.create_task(deliverer.run_room(room))
    try:
        async with asyncio.timeout(timeout):
            while await store.pending_count(room) and not worker.done():
                await asyncio.sleep(0.02)
    finally:
        deliverer.stop()
        await asyncio.wait_for(worker, 10)
    return deliverer


async def crash_run(store: Any, transport: Any, room: str) -> None:
    """Run a worker until it dies of a Crash."""
    deliverer = Deliverer(store, transport, LaterClock(), retry_base=0.05)
    worker = asyncio.create_task(deliverer.run_room(room))
    with pytest.raises(Crash):
        async with asyncio.timeout(30):
            await worker


class CrashingStore:
    """The store, dying at one step for one row (before or after that step's write)."""

    def __init__(self, store: Store, method: str, key: str, *, after: bool = False) -> None:
        self._store, self._method, self._key, self._after = store, method, key, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name != self._method:
            return real

        async def step(*args: Any, **kwargs: Any) -> Any:
            mine = self._key in args or any(getattr(a, "key", None) == self._key
                                            for a in args)
            if mine and not self._after:
                raise Crash(name)
            result = await real(*args, **kwargs)
            if self._method == "claim_next" and getattr(result, "key", None) == self._key:
                raise Crash(name)
            if mine:
                raise Crash(name)
            return result
        return step


class CrashingTransport:
    """A transport dying around its send of one row: before it, or once the network has
    it but before the answer reached the bot."""

    def __init__(self, transport: DeliveryTransport, key: str, *, after: bool) -> None:
        self._transport, self._key, self._after = transport, key, after

    async def join_room(self, room: str) -> str:
        return await self._transport.join_room(room)

    async def prepare(self, outgoing: Any, images: Any) -> Any:
        return await self._transport.prepare(outgoing, images)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float) -> Sent:
        if key == self._key and not self._after:
            raise Crash("send")
        sent = await self._transport.send(room_id, payload, key, attempted_at=attempted_at,
                                          now=now)
        if key == self._key:
            raise Crash("answer")
        return sent


def assert_exactly_once_in_order(received: list[tuple[str, str]], keys: list[str],
                                 titles: list[str]) -> None:
    assert [k for k, _ in received] == keys, "not each row exactly once, in order"
    assert [t for _, t in received] == titles


async def test_rows_arrive_once_in_order_and_a_restart_posts_nothing_again(
        network: Network) -> None:
    store = await network.open_store()
    titles = [f"Numéro {n}" for n in range(1, 6)]
    keys = await queue(store, network.room, titles)
    await deliver_all(store, await network.connect(), network.room)
    # A restart with nothing new: nothing is sent again.
    await deliver_all(store, await network.connect(), network.room)
    assert await store.pending_count() == 0
    assert_exactly_once_in_order(await network.received(), keys, titles)
    store.close()


# Each step of the protocol, and whether the process dies before or after it.
CRASH_POINTS = [
    ("claim_next", "store", True),         # claimed, nothing else done
    ("mark_attempt", "store", False),      # encoded, attempt not recorded
    ("send", "transport", False),          # attempt recorded, never sent
    ("send", "transport", True),           # the network has it, the answer was lost
    ("mark_sent", "store", False),         # answered, not recorded as sent
    ("mark_sent", "store", True),          # recorded: nothing left to do
]


@pytest.mark.parametrize(("step", "where", "after"), CRASH_POINTS,
                         ids=[f"{s}-{'after' if a else 'before'}" for s, _, a in CRASH_POINTS])
@pytest.mark.parametrize("forgotten", [False, True], ids=["soon", "late"])
async def test_a_crash_between_any_two_steps_loses_nothing_and_repeats_nothing(
        network: Network, step: str, where: str, after: bool,
        forgotten: bool) -> None:
    store = await network.open_store()
    titles = ["Un", "Deux", "Trois"]
    keys = await queue(store, network.room, titles)
    victim = keys[1]
    transport = await network.connect()
    if where == "store":
        await crash_run(CrashingStore(store, step, victim, after=after), transport,
                        network.room)
    else:
        await crash_run(store, CrashingTransport(transport, victim, after=after),
                        network.room)
    # A new process: a new transport (on Matrix, a new client with the same device);
    # with "late", restarted so late that the network may have forgotten the
    # first attempt's transaction.
    clock = LaterClock()
    if forgotten:
        clock.offset = TXN_MEMORY_SECONDS + 60
    await deliver_all(store, await network.connect(), network.room, clock)
    assert await store.pending_count() == 0
    assert_exactly_once_in_order(await network.received(), keys, titles)
    store.close()


async def test_temporary_failures_keep_the_order(network: Network) -> None:
    store = await network.open_store()
    titles = ["A", "B", "C", "D"]
    keys = await queue(store, network.room, titles)
    transport = await network.connect()
    failures = iter([True, False, True, True, False])

    class Flaky(CrashingTransport):
        async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                       attempted_at: float | None, now: float) -> Sent:
            if next(failures, False):
                raise TemporaryTransportError("try again")
            return await self._transport.send(room_id, payload, key,
                                              attempted_at=attempted_at, now=now)

    await deliver_all(store, Flaky(transport, "", after=False), network.room)
    assert_exactly_once_in_order(await network.received(), keys, titles)
    store.close()


async def test_an_edit_replaces_the_message_it_corrects(network: Network) -> None:
    store = await network.open_store()
    keys = await queue(store, network.room, ["Titre"])
    await deliver_all(store, await network.connect(), network.room)
    await store.enqueue(FEED, [NewDelivery("Titre#edit#1", network.room,
                                     Message("Titre corrigé\nhttps://example.org/t",
                                             "<p>Titre corrigé</p>"),
                                     kind="edit", subject="Titre")], time.time())
    await deliver_all(store, await network.connect(), network.room)
    received = await network.received()
    assert len(received) == 2 and received[0][0] == keys[0]
    original = await store.event_of(FEED, "Titre", network.room)
    assert original is not None
    if network.name == "matrix":
        assert received[1][1] == "* Titre corrigé"
    store.close()
