"""One item to 100 rooms: 100 sends at once while the sync's long poll holds a connection,
none of them waiting for a free one (aiohttp's default pool of 100 made the last send wait
for the first answer)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from bot.store import SqliteStore
from bot.transport.matrix import MatrixTransport
from bot.transport.matrix.session import SEND_CONNECTIONS
from tests.botkit import bot_config, load, write_config
from tests.support import NewUserFactory, SynapseServer


async def test_a_fan_out_beside_the_sync_never_waits_for_a_connection(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": ["!r:localhost"]}])),
        bot)
    store = SqliteStore.open(tmp_path / "state")
    transport = MatrixTransport(cfg.matrix, store, tmp_path / "state")
    try:
        await transport.connect()
        client = transport._client
        session = client.client_session
        assert session is not None
        queued: list[int] = []

        async def on_queued(_session: aiohttp.ClientSession, _context: SimpleNamespace,
                            _params: aiohttp.TraceConnectionQueuedStartParams) -> None:
            queued.append(1)

        trace = aiohttp.TraceConfig()
        trace.on_connection_queued_start.append(on_queued)
        trace.freeze()
        session._trace_configs.append(trace)
        # The sync's long poll, as the bot keeps one open all the time.
        first = await client.sync(timeout=0)
        long_poll = asyncio.create_task(client.sync(timeout=30_000, since=first.next_batch))
        await asyncio.sleep(0.5)
        try:
            answers = await asyncio.gather(*(client.whoami()
                                             for _ in range(SEND_CONNECTIONS)))
        finally:
            long_poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await long_poll
        assert all(answer.user_id == bot.user_id for answer in answers)
        assert queued == []
    finally:
        await transport.close()
        store.close()
