"""Several instances on one PostgreSQL database: killed, frozen, restarted — every item
exactly once in every room, in order; every command answered once."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.store.postgres import PostgresStore
from bot.transport.matrix.cross_signing import KEYS_FILE
from tests.botkit import BotProcess, bot_config, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    free_port,
    make_items,
)
from tests.support.postgres import PostgresServer
from tests.support.prosody import ProsodyServer
from tests.support.xmppmember import XmppMember
from tests.test_xmpp import answers, titles, xmpp_section

LEASE = 3.0         # storage.lease in these tests: a dead instance's work waits this long


@dataclass
class Instance:
    """One newsbot process: its own device and storage directory, the shared database."""

    name: str
    config_path: Path
    device: RegisteredUser
    log_path: Path
    process: BotProcess | None = None
    starts: int = 0

    async def start(self) -> None:
        self.process = BotProcess(self.config_path, self.device, self.log_path)
        await self.process.start()
        self.starts += 1

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count("watching ") < self.starts:
            assert self.process is not None and self.process.proc is not None
            assert self.process.proc.returncode is None and time.monotonic() < deadline, \
                f"{self.name} did not start:\n{self.log()[-3000:]}"
            await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None and self.process.proc is not None
        self.process.proc.send_signal(sig)

    async def kill9(self) -> None:
        assert self.process is not None
        self.process.kill9()
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.proc is None:
            return
        if self.process.proc.returncode is None:
            self.signal(signal.SIGCONT)         # a frozen one must be able to stop
            assert await self.process.terminate(timeout=30) == 0, self.log()[-3000:]


@dataclass
class Cluster:
    instances: list[Instance]
    database: str
    bot: RegisteredUser


@asynccontextmanager
async def cluster(count: int, *, synapse: SynapseServer, postgres: PostgresServer,
                  new_user: NewUserFactory, tmp_path: Path, feeds: list[dict[str, Any]],
                  per_instance: Callable[[int], dict[str, Any]] | None = None,
                  together: bool = False, **extra: Any) -> AsyncIterator[Cluster]:
    """``count`` instances of one bot (one Matrix account, a device each) on a fresh
    database, started; all stopped at the end (each must stop cleanly). ``together``:
    all started at the same moment (their devices then are not all cross-signed)."""
    database = await postgres.new_database()
    bot = await new_user("newsbot")
    devices = [bot, *[await synapse.login(bot, f"NEWSBOT{i}") for i in range(1, count)]]
    instances = []
    for i, device in enumerate(devices):
        data = bot_config(homeserver=synapse.base_url, bot=device,
                          storage=tmp_path / f"state{i}", feeds=feeds, **extra,
                          **(per_instance(i) if per_instance is not None else {}))
        data["storage"].update(url=database, lease=f"{LEASE:g}s")
        instances.append(Instance(f"instance {i}", write_config(tmp_path / f"c{i}.yaml", data),
                                  device, tmp_path / f"bot{i}.log"))
    try:
        if together:
            await asyncio.gather(*(instance.start() for instance in instances))
            for instance in instances:
                await instance.ready()
            yield Cluster(instances, database, bot)
            return
        # The first makes the account's cross-signing keys; the others get a copy (as the
        # README says), so that every instance's device is signed by the same identity.
        await instances[0].start()
        await instances[0].ready()
        keys = tmp_path / "state0" / "crypto" / KEYS_FILE
        for i, instance in enumerate(instances[1:], start=1):
            crypto = tmp_path / f"state{i}" / "crypto"
            crypto.mkdir(mode=0o700, parents=True)
            shutil.copy2(keys, crypto / KEYS_FILE)
            await instance.start()
        for instance in instances:
            await instance.ready()
            assert "NOT signed" not in instance.log(), instance.log()[-2000:]
        yield Cluster(instances, database, bot)
    finally:
        for instance in instances:
            await instance.stop()


async def nothing_pending(database: str, timeout: float = 90) -> None:
    store = await PostgresStore.open(database, max_size=1)
    try:
        deadline = time.monotonic() + timeout
        while await store.pending_count():
            assert time.monotonic() < deadline, "deliveries stayed pending"
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


async def assert_each_once(alice: MemberClient, rooms: list[str], bot: RegisteredUser,
                           expected: list[str], database: str) -> None:
    for room in rooms:
        await alice.wait_for_messages(room, len(expected), sender=bot.user_id, timeout=90)
    await nothing_pending(database)
    for room in rooms:
        titles = [e["content"]["body"].splitlines()[0]
                  for e in await alice.messages(room, sender=bot.user_id)]
        assert titles == expected, f"room {room}: duplicates or losses"


@pytest.mark.parametrize("count", [2, 3])
async def test_instances_killed_over_and_over_post_each_item_once_in_order(
        count: int, synapse: SynapseServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name=f"instances {i}") for i in range(3)]
    cycles = 5
    items = make_items(3 * cycles + 1)               # newest first
    published = 1
    feed_server.set_feed(feed_path, items[-published:])
    feeds = [{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
              "interval": "1s", "backfill": 1, "max_per_poll": len(items)}]
    async with cluster(count, synapse=synapse, postgres=postgres, new_user=new_user,
                       tmp_path=tmp_path, feeds=feeds) as c:
        for room in rooms:
            await alice.wait_for_messages(room, 1, sender=c.bot.user_id, timeout=60)
        rng = random.Random(20261130 + count)
        for _ in range(cycles):
            published += 3
            feed_server.set_feed(feed_path, items[-published:])
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            victim = rng.choice(c.instances)
            await victim.kill9()
            await victim.start()
            await victim.ready()
        expected = [item.title for item in reversed(items[-published:])]
        await assert_each_once(alice, rooms, c.bot, expected, c.database)
        # The work was shared: more than one instance sent messages.
        senders = [i for i in c.instances if "posted item" in i.log()]
        assert len(senders) >= 2, "one instance did everything"


async def test_a_frozen_instance_does_not_send_what_another_took_over(
        synapse: SynapseServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name=f"frozen {i}") for i in range(2)]
    cycles = 2          # each instance frozen once
    items = make_items(4 * cycles + 1)
    published = 1
    feed_server.set_feed(feed_path, items[-published:])
    feeds = [{"name": "news", "url": feed_server.url(feed_path), "rooms": rooms,
              "interval": "1s", "backfill": 1, "max_per_poll": len(items)}]
    async with cluster(2, synapse=synapse, postgres=postgres, new_user=new_user,
                       tmp_path=tmp_path, feeds=feeds) as c:
        for room in rooms:
            await alice.wait_for_messages(room, 1, sender=c.bot.user_id, timeout=60)
        rng = random.Random(20261130)
        for cycle in range(cycles):
            published += 4
            feed_server.set_feed(feed_path, items[-published:])
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            frozen, other = c.instances[cycle % 2], c.instances[1 - cycle % 2]
            frozen.signal(signal.SIGSTOP)
            try:
                # While it is frozen past its leases, the other delivers everything.
                expected = [item.title for item in reversed(items[-published:])]
                for room in rooms:
                    await alice.wait_for_messages(room, len(expected),
                                                  sender=c.bot.user_id, timeout=60)
                await asyncio.sleep(LEASE)
            finally:
                frozen.signal(signal.SIGCONT)
            # Woken, the frozen one finds its claims taken: it sends nothing again. Frozen
            # inside a transaction, it finds its database session ended (so that its locks
            # did not hold the others back) and stops, to be restarted by its supervisor.
            await asyncio.sleep(LEASE)
            assert frozen.process is not None and frozen.process.proc is not None
            if frozen.process.proc.returncode is not None:
                assert "state database" in frozen.log(), frozen.log()[-2000:]
                await frozen.start()
                await frozen.ready()
            assert other.process is not None and other.process.proc is not None
            assert other.process.proc.returncode is None, other.log()[-2000:]
        expected = [item.title for item in reversed(items[-published:])]
        await assert_each_once(alice, rooms, c.bot, expected, c.database)


async def test_each_command_is_answered_once_by_the_leader_or_its_successor_and_an_added_feed_reaches_every_instance(  # noqa: E501
        synapse: SynapseServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    moderator = await member(await new_user("mod"))
    room = await moderator.create_room(name="commands")
    feed_server.set_feed(feed_path, make_items(1))
    added = f"{feed_path}-added"
    feed_server.set_feed(added, make_items(1, prefix="added"))
    feeds = [{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
              "interval": "1s", "backfill": 1}]
    async with cluster(2, synapse=synapse, postgres=postgres, new_user=new_user,
                       tmp_path=tmp_path, feeds=feeds,
                       commands={"default_interval": "1s"}) as c:
        await moderator.wait_for_messages(room, 1, sender=c.bot.user_id, timeout=60)

        async def answers_to(body: str, previous: int) -> int:
            await moderator.send_text(room, body)
            await moderator.wait_for_messages(room, previous + 1, sender=c.bot.user_id,
                                              timeout=60)
            await asyncio.sleep(LEASE)      # time for a second answer, if any came
            return len(await moderator.messages(room, sender=c.bot.user_id))

        count = await answers_to("!news help", 1)
        assert count == 2, "answered twice (or not at all)"
        leader = next(i for i in c.instances if "now leads" in i.log())
        follower = next(i for i in c.instances if i is not leader)
        await leader.kill9()
        count = await answers_to("!news status", count)
        assert count == 3
        assert "now leads" in follower.log()
        await leader.start()
        await leader.ready()
        count = await answers_to(f"!news add {feed_server.url(added)} added", count)
        assert count == 4
        # The feed added by command on one instance is polled by the other, alone once
        # the first is killed.
        adder = next(i for i in c.instances if "added to" in i.log())
        other = next(i for i in c.instances if i is not adder)
        await until(lambda: "feed added was added by another instance" in other.log(),
                    "the other instance starts the feed")
        await adder.kill9()
        feed_server.set_feed(added, make_items(2, prefix="added"))
        await moderator.wait_for_messages(room, 5, sender=c.bot.user_id, timeout=90)
        await adder.start()
        await adder.ready()


async def until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_each_feed_is_polled_by_one_instance_once_per_interval_and_health_says_who_leads(
        synapse: SynapseServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="polite")
    feed_server.set_feed(feed_path, make_items(1))
    interval = 1.0
    feeds = [{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
              "interval": f"{interval:g}s", "backfill": 1}]
    ports = [free_port() for _ in range(2)]
    async with cluster(2, synapse=synapse, postgres=postgres, new_user=new_user,
                       tmp_path=tmp_path, feeds=feeds,
                       per_instance=lambda i: {"http": {"listen": f"127.0.0.1:{ports[i]}"}}) as c:
        await alice.wait_for_messages(room, 1, sender=c.bot.user_id, timeout=60)
        start = time.time()
        window = 10 * interval
        await asyncio.sleep(window)
        polls = [r for r in feed_server.requests(feed_path) if start <= r.at < start + window]
        # Two instances each polling on their own would make ~20 (interval jittered
        # ±10 %); under one lease between them, ~10.
        assert 5 <= len(polls) <= 14, f"{len(polls)} polls in {window:g} s"
        bodies = {}
        async with aiohttp.ClientSession() as session:
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
                    bodies[port] = await answer.text()
        held = [b for b in bodies.values() if "leader" in b.split("leases held:")[-1]]
        assert len(held) == 1, bodies
        assert all("leases held:" in b for b in bodies.values()), bodies


async def test_two_instances_on_xmpp_killed_over_and_over_post_each_item_once_in_order(
        prosody: ProsodyServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, tmp_path: Path) -> None:
    """The same on XMPP group chats: one account, a resource per instance."""
    groups = [prosody.new_room(f"instances{i}") for i in range(2)]
    account = await prosody.register("newsbot")
    database = await postgres.new_database()
    cycles = 4
    items = make_items(3 * cycles + 1)
    published = 1
    feed_server.set_feed(feed_path, items[-published:])
    nobody = RegisteredUser("@nobody:localhost", "", "", "", "nobody")   # no Matrix here
    instances = []
    for i in range(2):
        config = write_config(tmp_path / f"c{i}.yaml", {
            "xmpp": xmpp_section(prosody, account),
            "storage": {"path": str(tmp_path / f"s{i}"), "url": database,
                        "lease": f"{LEASE:g}s"},
            "fetch": {"allow_private_networks": True},
            "feeds": [{"name": "news", "url": feed_server.url(feed_path), "interval": "1s",
                       "backfill": 1, "max_per_poll": len(items),
                       "rooms": [f"xmpp:{group}" for group in groups]}]})
        instances.append(Instance(f"instance {i}", config, nobody, tmp_path / f"bot{i}.log"))
    async with XmppMember(prosody, await prosody.register("owner")) as owner:
        for group in groups:
            await owner.join(group)
        try:
            for instance in instances:
                await instance.start()
            for instance in instances:
                await instance.ready()
            # The feed's first sight (its backfill posted) before items flow.
            async with asyncio.timeout(60):
                while min([len(answers(await owner.archive(g), g)) for g in groups]) < 1:
                    await asyncio.sleep(0.2)
            rng = random.Random(20261130)
            for _ in range(cycles):
                published += 3
                feed_server.set_feed(feed_path, items[-published:])
                await asyncio.sleep(rng.uniform(0.2, 2.0))
                victim = rng.choice(instances)
                await victim.kill9()
                await victim.start()
                await victim.ready()
            async with asyncio.timeout(90):
                while min([len(answers(await owner.archive(g), g)) for g in groups]) < published:
                    await asyncio.sleep(0.5)
            await nothing_pending(database)
            expected = [f"*{item.title}*" for item in reversed(items[-published:])]
            for group in groups:
                got = titles([m.body for m in answers(await owner.archive(group), group)])
                assert got == expected, f"{group}: duplicates or losses"
        finally:
            for instance in instances:
                await instance.stop()


async def test_instances_starting_together_create_a_declared_room_once(
        synapse: SynapseServer, postgres: PostgresServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    alice = await member(await new_user("alice"))
    alias = f"together{random.randrange(10**9)}"
    feed_server.set_feed(feed_path, make_items(2))
    feeds = [{"name": "news", "url": feed_server.url(feed_path),
              "rooms": [f"#{alias}:localhost"], "interval": "1s", "backfill": 2}]
    async with cluster(3, synapse=synapse, postgres=postgres, new_user=new_user,
                       tmp_path=tmp_path, feeds=feeds, together=True,
                       rooms=[{"alias": alias, "name": "Ensemble"}]) as c:
        created = [i for i in c.instances if f"room #{alias}:localhost: created" in i.log()]
        assert len(created) == 1, [i.log()[-1500:] for i in c.instances]
        for instance in c.instances:
            assert "ERROR" not in instance.log(), instance.log()[-2000:]
        room = await alice.join(f"#{alias}:localhost")
        await alice.wait_for_messages(room, 2, sender=c.bot.user_id, timeout=60)
        await asyncio.sleep(2 * LEASE)
        assert len(await alice.messages(room, sender=c.bot.user_id)) == 2
