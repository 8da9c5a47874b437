"""What a member on Element's own crypto stack sees of the bot (issue 11): a client on
matrix-js-sdk with its Rust crypto (tests/jsmember), with "exclude insecure devices" on,
reads every item, edit and command reply of the bot — across a restart too — and sees
the bot's device as signed by its owner. Without cross-signing it could read none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.jsmember import JsMember
from tests.support import FeedItem, FeedServer, NewUserFactory, SynapseServer
from tests.test_promises import item


def titles(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"].splitlines()[0] for e in events if e["content"]]


async def test_a_member_excluding_insecure_devices_reads_everything_the_bot_sends(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    reader_user = await new_user("lectrice")
    feed_server.set_feed(feed_path, [])
    async with JsMember(tmp_path, "reader") as reader:
        await reader.login(synapse.base_url, reader_user)
        # A member who excludes insecure devices has cross-signing set up (Element will
        # not send from an account without it).
        await reader.bootstrap_cross_signing()
        await reader.exclude_insecure(True)
        room = await reader.create_room(encrypted=True, invite=[bot.user_id])
        config = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
            admins=[reader_user.user_id],
            feeds=[{"name": "lettre", "url": feed_server.url(feed_path), "rooms": [room],
                    "interval": "1s"}])), bot)

        async with InProcessBot(config):
            # As a member's client would before reading: the bot's keys, as now published.
            status = await reader.wait_device_status(bot.user_id, bot.device_id,
                                                     signed_by_owner=True, timeout=60)
            assert status["signed_by_owner"] is True
            feed_server.set_feed(feed_path, [item(1)])
            [first] = await reader.messages(room, sender=bot.user_id, min_count=1)
            # A correction: an edit, which the member decrypts too.
            feed_server.set_feed(feed_path, [item(1, title="Numéro 1 (corrigé)")])
            events = await reader.messages(room, sender=bot.user_id, min_count=2)
            # A command, answered encrypted (the reader shares its keys with signed
            # devices only: the bot can read it because it is signed).
            command = await reader.send(room, "!news status", wait_joined=[bot.user_id])
            events = await reader.messages(room, sender=bot.user_id, min_count=3)

        async with InProcessBot(config):       # a restart: same device, still signed
            feed_server.set_feed(feed_path, [item(2), item(1, title="Numéro 1 (corrigé)")])
            events = await reader.messages(room, sender=bot.user_id, min_count=4)
            await asyncio.sleep(1)
            events = await reader.messages(room, sender=bot.user_id, min_count=4)

    assert len(events) == 4
    for event in events:
        assert event["encrypted"] is True
        assert event["decryption_failure"] is None, event
        assert event["sender_device"] == bot.device_id
        # No red "encrypted by a device not verified by its owner" shield.
        assert event["shield"]["reason"] != "UNSIGNED_DEVICE", event
        assert event["shield"]["colour"] != "RED", event
    item_one, edit, reply, item_two = events
    assert item_one["event_id"] == first["event_id"]
    assert titles([item_one]) == ["Numéro 1"]
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace",
                                               "event_id": item_one["event_id"]}
    assert edit["content"]["m.new_content"]["body"].startswith("Numéro 1 (corrigé)")
    assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == command
    assert reply["content"]["body"].startswith("Feed status:")
    assert titles([item_two]) == ["Numéro 2"]


async def test_an_unsigned_bot_is_unreadable_with_exclude_insecure_devices(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, tmp_path: Path) -> None:
    """The control: the same reader, a bot whose account has cross-signing keys made
    elsewhere (so its device stays unsigned): its items do not decrypt. This is what
    members would live with if the bot did not sign its device."""
    from bot.transport.matrix.cross_signing import CrossSigningKeys, KeysApi, upload_body
    bot = await new_user("newsbot")
    reader_user = await new_user("lecteur")
    elsewhere = CrossSigningKeys.generate()
    assert await KeysApi(synapse.base_url, bot.access_token).upload_signing_keys(
        upload_body(bot.user_id, elsewhere), bot.user_id, None) is None
    feed_server.set_feed(feed_path, [])
    async with JsMember(tmp_path, "reader") as reader:
        await reader.login(synapse.base_url, reader_user)
        await reader.exclude_insecure(True)
        room = await reader.create_room(encrypted=True, invite=[bot.user_id])
        config = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
            admins=[reader_user.user_id],
            feeds=[{"name": "lettre", "url": feed_server.url(feed_path), "rooms": [room],
                    "interval": "1s"}])), bot)
        async with InProcessBot(config) as running:
            assert running.app is not None
            transport: Any = running.app.transport
            for _ in range(300):
                if transport.cross_signing is not None:
                    break
                await asyncio.sleep(0.1)
            assert transport.cross_signing is not None
            assert not transport.cross_signing.signed
            await reader.wait_device_status(bot.user_id, bot.device_id, signed_by_owner=False,
                                            timeout=60)
            feed_server.set_feed(feed_path, [FeedItem(
                guid="urn:control:1", title="Numéro 1", link="http://127.0.0.1/n/1")])
            await asyncio.sleep(4)
            events = await reader.messages(room, sender=bot.user_id, min_count=0, timeout=5)
    assert events, "the bot posted nothing the reader could see"
    assert all(e["decryption_failure"] == "UNSIGNED_SENDER_DEVICE" for e in events), events
