"""Shared fixtures: one real Synapse and one feed server per session, fresh users per test.

Session-scoped servers keep the suite fast (Synapse takes ~2 s to start); tests stay
independent by registering their own users and creating their own rooms and feed paths.
A test makes a member with ``member`` and runs the bot with ``run_bot`` (or ``async with
InProcessBot(config)`` when the bot lives only inside a block).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.clock import Clock
from bot.config import Config
from bot.store import SqliteStore, Store

# `tests.*` import as packages because pyproject's `pythonpath = ["."]` puts the checkout's
# root on sys.path.
from tests.botkit import BotRunner, InProcessBot
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
)
from tests.support.postgres import PostgresServer, StoreOpener, postgres_available
from tests.support.prosody import ProsodyServer, prosody_available


@pytest_asyncio.fixture(scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    """A running Synapse with relaxed rate limits, shared by the whole session."""
    workdir: Path = tmp_path_factory.mktemp("synapse")
    async with SynapseServer(workdir) as server:
        yield server


@pytest_asyncio.fixture(scope="session")
async def feed_server() -> AsyncIterator[FeedServer]:
    """A running FeedServer shared by the session: use paths unique to your test
    (see ``feed_path``)."""
    async with FeedServer() as server:
        yield server


@pytest.fixture
def feed_path(request: pytest.FixtureRequest) -> str:
    """A path on ``feed_server`` no other test uses, e.g. ``/test_foo-1a2b3c/feed``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    return f"/{name}-{uuid.uuid4().hex[:6]}/feed"


@pytest_asyncio.fixture
async def new_user(synapse: SynapseServer) -> NewUserFactory:
    """``await new_user("alice", admin=False, password=None)``: a freshly registered user
    whose localpart starts with the given name and is unique in the session."""

    async def register(name: str = "user", *, admin: bool = False,
                       password: str | None = None) -> RegisteredUser:
        # Matrix localparts are lowercase; a random suffix keeps them unique even across
        # restarts of a Synapse whose database persists.
        base = re.sub(r"[^a-z0-9._=-]+", "-", name.lower()) or "user"
        localpart = f"{base}-{uuid.uuid4().hex[:8]}"
        return await synapse.register(localpart, password, admin)

    return register


@pytest_asyncio.fixture
async def member(synapse: SynapseServer) -> AsyncIterator[MemberFactory]:
    """``await member(user)``: an open MemberClient for ``user``, closed after the test."""
    clients: list[MemberClient] = []

    async def make(user: RegisteredUser) -> MemberClient:
        client = MemberClient(synapse.base_url, user)
        await client.__aenter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def run_bot() -> AsyncIterator[BotRunner]:
    """``await run_bot(config, clock=None)``: an InProcessBot, running until the test ends
    (``await bot.stop()`` stops it sooner, ``bot.start()`` restarts it); a crash of the bot
    is the test's error."""
    bots: list[InProcessBot] = []

    async def start(config: Config, *, clock: Clock | None = None) -> InProcessBot:
        bot = InProcessBot(config, clock=clock)
        bots.append(bot)
        await bot.start()
        return bot

    yield start
    for bot in bots:
        await bot.stop()


@pytest_asyncio.fixture(scope="session")
async def prosody(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProsodyServer]:
    """A running Prosody (group chats with archives), shared by the whole session; ``./dev``
    installs Debian's package when it is missing."""
    if not prosody_available():
        pytest.fail("prosody is not installed: `./dev test` installs it (apt-get install prosody)")
    async with ProsodyServer(tmp_path_factory.mktemp("prosody")) as server:
        yield server


@pytest_asyncio.fixture(scope="session")
async def postgres() -> AsyncIterator[PostgresServer]:
    """A running PostgreSQL cluster shared by the session (``await
    postgres.new_database()``: a fresh database's URL); ``./dev`` installs Debian's package
    when it is missing."""
    if not postgres_available():
        pytest.fail("PostgreSQL is not installed: `./dev test` installs it "
                    "(apt-get install postgresql)")
    async with PostgresServer() as server:
        yield server


# The stores a store test runs on: the embedded one and the shared one.
STORE_KINDS = ("sqlite", "postgres")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_server(store_kind: str, request: pytest.FixtureRequest) -> PostgresServer | None:
    # The cluster starts only when a PostgreSQL case runs.
    return request.getfixturevalue("postgres") if store_kind == "postgres" else None


@pytest_asyncio.fixture
async def open_store(store_server: PostgresServer | None,
                     tmp_path: Path) -> AsyncIterator[StoreOpener]:
    """``store = await open_store()``: a store of the test's kind (SQLite in ``tmp_path``,
    or an emptied PostgreSQL database); calling it again opens the same state anew (as after
    a restart). Every store opened is closed after the test."""
    stores: list[Store] = []
    url = None if store_server is None else await store_server.clean_database()

    async def open_one() -> Store:
        store: Store
        if url is None:
            store = SqliteStore.open(tmp_path)
        else:
            from bot.store.postgres import PostgresStore
            store = await PostgresStore.open(url, max_size=4)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.aclose()
