"""welcome: dm — a newcomer of an announcement room gets the latest issue privately."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MatrixAPIError,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    make_items,
)
from tests.support.e2emember import EncryptedMember


async def test_a_newcomer_is_welcomed_privately_and_the_room_stays_quiet(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    local = f"accueil-{uuid.uuid4().hex[:6]}"
    alias = f"#{local}:localhost"
    feed_server.set_feed(feed_path, make_items(2))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", language="fr",
        rooms=[{"alias": local, "name": "Actualités", "welcome": "dm"}],
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [alias],
                "backfill": 1}])), bot)
    newcomer_user = await new_user("nouvelle")
    newcomer = await member(newcomer_user)
    # The newcomer's own client, with its keys: the private conversation is encrypted.
    own_client = await EncryptedMember(synapse.base_url, newcomer_user,
                                       tmp_path / "newcomer-store").__aenter__()
    async with InProcessBot(config) as running:
        deadline = time.monotonic() + 20
        # The feed's first poll is recorded before the newcomer comes: a welcome then
        # has an issue to show (one who comes earlier is told there is none yet).
        while not await running.app.store.latest(["actus"], 1):
            assert time.monotonic() < deadline, "the feed was not polled"
            await asyncio.sleep(0.1)
        room_id = None
        while room_id is None:
            try:
                room_id = await newcomer.resolve_alias(alias)
            except Exception:
                assert time.monotonic() < deadline, "the room was not created"
                await asyncio.sleep(0.3)
        # The alias can answer a moment before the room's join rule is set (the room is
        # still being created): a refused join is tried again.
        joined = False
        while not joined:
            try:
                await newcomer.join(room_id)
                joined = True
            except MatrixAPIError as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        await newcomer.wait_for_messages(room_id, 1, sender=bot.user_id)   # the backfill
        deadline = time.monotonic() + 20
        invites: list[str] = []
        while not invites:
            assert time.monotonic() < deadline, "no private conversation was opened"
            invites = await newcomer.pending_invites()
            await asyncio.sleep(0.3)
        dm = await newcomer.join(invites[0])
        body = (await own_client.wait_for(dm, 1, sender=bot.user_id))[0]
        await asyncio.sleep(1)
        in_room = await newcomer.messages(room_id, sender=bot.user_id)
        assert await newcomer.messages(dm, sender=bot.user_id) == []   # nothing in clear
    await own_client.close()
    assert body.startswith("Bienvenue dans Actualités ! Chaque nouveau numéro y est publié.")
    assert make_items(2)[0].title in body
    assert len(in_room) == 1          # the room itself got nothing but the issue
