"""Encrypted rooms against a real Synapse; members use their own nio clients and crypto
stores, as people's clients do."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from bot.transport import matrix as matrix_transport
from bot.transport.matrix.crypto import NIO_DEFAULT_PICKLE_KEY, PICKLE_KEY_FILE, STORE_NAME
from tests.botkit import BotProcess, InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)
from tests.support.e2emember import ENCRYPTION_STATE, EncryptedMember, history_state


def first_lines(bodies: list[str]) -> list[str]:
    return [b.splitlines()[0] for b in bodies]


class Scene:
    """An encrypted room with two members (alice created it) and a bot configured for it."""

    def __init__(self, synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
                 tmp_path: Path, bot: RegisteredUser, alice: EncryptedMember,
                 bob: EncryptedMember, room: str) -> None:
        self.synapse, self.feed_server, self.feed_path = synapse, feed_server, feed_path
        self.tmp_path, self.bot, self.alice, self.bob, self.room = (
            tmp_path, bot, alice, bob, room)

    def config(self, **extra: Any) -> Any:
        path = write_config(self.tmp_path / "c.yaml", bot_config(
            homeserver=self.synapse.base_url, bot=self.bot, storage=self.tmp_path / "state",
            feeds=[{"name": "news", "url": self.feed_server.url(self.feed_path),
                    "rooms": [self.room], "backfill": 1}], **extra))
        return load(path, self.bot)

    async def member(self, user: RegisteredUser, name: str) -> EncryptedMember:
        return await EncryptedMember(self.synapse.base_url, user,
                                     self.tmp_path / f"{name}-store").__aenter__()

    async def clear_messages_from_bot(self, user: RegisteredUser) -> list[dict[str, Any]]:
        async with MemberClient(self.synapse.base_url, user) as raw:
            return await raw.messages(self.room, sender=self.bot.user_id)


@pytest.fixture
async def scene(synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
                new_user: NewUserFactory, tmp_path: Path) -> Any:
    bot = await new_user("newsbot")
    alice_u, bob_u = await new_user("alice"), await new_user("bob")
    async with MemberClient(synapse.base_url, alice_u) as raw:
        room = await raw.create_room(
            name="Actualités chiffrées", preset="private_chat",
            invite=[bot.user_id, bob_u.user_id],
            initial_state=[ENCRYPTION_STATE, history_state("shared")])
    async with MemberClient(synapse.base_url, bob_u) as raw:
        await raw.join(room)
    alice = await EncryptedMember(synapse.base_url, alice_u, tmp_path / "alice-store").__aenter__()
    bob = await EncryptedMember(synapse.base_url, bob_u, tmp_path / "bob-store").__aenter__()
    feed_server.set_feed(feed_path, make_items(1))
    made = Scene(synapse, feed_server, feed_path, tmp_path, bot, alice, bob, room)
    yield made
    await alice.close()
    await bob.close()


async def test_two_members_decrypt_and_nothing_goes_out_in_the_clear(scene: Scene) -> None:
    async with InProcessBot(scene.config()):
        for member in (scene.alice, scene.bob):
            bodies = await member.wait_for(scene.room, 1, sender=scene.bot.user_id)
            assert first_lines(bodies) == [make_items(1)[0].title]
    assert scene.alice.messages[-1][1]["decrypted"] is True
    assert await scene.clear_messages_from_bot(scene.bob.user) == []


async def test_a_member_who_joins_later_decrypts_the_next_item(
        scene: Scene, new_user: NewUserFactory) -> None:
    async with InProcessBot(scene.config()):
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        carl_u = await new_user("carl")
        carl = await scene.member(carl_u, "carl")
        async with MemberClient(scene.synapse.base_url, scene.alice.user) as raw:
            await raw.invite(scene.room, carl_u.user_id)
        async with MemberClient(scene.synapse.base_url, carl_u) as raw:
            await raw.join(scene.room)
        await asyncio.sleep(1.5)        # the bot's sync sees the join
        scene.feed_server.set_feed(scene.feed_path, make_items(2))
        bodies = await carl.wait_for(scene.room, 1, sender=scene.bot.user_id)
        assert first_lines(bodies) == [make_items(2)[0].title]
        await scene.bob.wait_for(scene.room, 2, sender=scene.bot.user_id)
        await carl.close()


async def test_after_a_restart_earlier_and_new_items_decrypt(
        scene: Scene, synapse: SynapseServer) -> None:
    config = scene.config()
    async with InProcessBot(config):
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
    async with InProcessBot(config):    # the crypto store is reused
        scene.feed_server.set_feed(scene.feed_path, make_items(2))
        bodies = await scene.bob.wait_for(scene.room, 2, sender=scene.bot.user_id)
    assert first_lines(bodies) == [make_items(2)[1].title, make_items(2)[0].title]
    # A member's fresh client, on the member's own store, reads the whole history.
    await scene.alice.close()
    alice = await scene.member(scene.alice.user, "alice")
    resp = await alice.client.room_messages(scene.room, limit=50)
    texts = [e.body.splitlines()[0] for e in resp.chunk
             if getattr(e, "sender", "") == scene.bot.user_id and hasattr(e, "body")]
    assert sorted(texts) == sorted(first_lines(bodies))
    scene.alice = alice


async def test_a_command_in_an_encrypted_room_is_answered_encrypted(scene: Scene) -> None:
    async with InProcessBot(scene.config(admins=[scene.alice.user_id])):
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        command = await scene.alice.send_text(scene.room, "!news status")
        deadline = time.monotonic() + 20
        reply = None
        while reply is None and time.monotonic() < deadline:
            await scene.alice.sync(timeout_ms=1000)
            for room, source in scene.alice.messages:
                relates = source["content"].get("m.relates_to", {})
                if room == scene.room and \
                        relates.get("m.in_reply_to", {}).get("event_id") == command:
                    reply = source
    assert reply is not None, "no encrypted answer"
    assert reply["decrypted"] is True
    assert reply["content"]["body"].startswith("Feed status:")
    assert await scene.clear_messages_from_bot(scene.alice.user) == []


async def test_without_encryption_nothing_is_posted_in_the_clear_until_it_is_back(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with InProcessBot(scene.config(encryption={"enabled": False})) as running:
        await asyncio.sleep(3)
        assert running.app is not None
        assert await running.app.store.pending_count() == 1
    assert any("refusing to post in the clear" in r.getMessage() for r in caplog.records)
    assert await scene.clear_messages_from_bot(scene.alice.user) == []
    async with InProcessBot(scene.config()):
        bodies = await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        await asyncio.sleep(1)
    assert first_lines(bodies) == [make_items(1)[0].title]
    assert len(scene.alice.bodies(scene.room, scene.bot.user_id)) == 1


async def test_verified_trust_skips_unverified_devices_and_says_so(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    scene.feed_server.set_feed(scene.feed_path, [])      # nothing to post yet
    async with InProcessBot(scene.config(encryption={"trust": "verified"})) as running:
        assert running.app is not None
        # The bot verifies alice's device (as an operator would), not bob's.
        client = running.app.transport._client  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while (client.olm is None or scene.alice.user_id not in client.device_store.users) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        client.verify_device(client.device_store[scene.alice.user_id][
            scene.alice.user.device_id])
        scene.feed_server.set_feed(scene.feed_path, make_items(1))
        bodies = await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        await scene.bob.sync(timeout_ms=1500)
    assert first_lines(bodies) == [make_items(1)[0].title]
    assert scene.bob.bodies(scene.room, scene.bot.user_id) == []
    assert scene.bob.undecryptable, "bob's device got no key: it sees an undecryptable event"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not sharing the room key with the unverified devices" in w
               and scene.bob.user_id in w and scene.alice.user_id not in w for w in warnings)


async def test_room_key_requests_answered_by_history_visibility(
        scene: Scene, new_user: NewUserFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with InProcessBot(scene.config()):
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        dora_u = await new_user("dora")
        dora = await scene.member(dora_u, "dora")
        dora.accept_forwards_from_session_creator()
        async with MemberClient(scene.synapse.base_url, scene.alice.user) as raw:
            await raw.invite(scene.room, dora_u.user_id)
        async with MemberClient(scene.synapse.base_url, dora_u) as raw:
            await raw.join(scene.room)
        # History is 'shared': dora may read the item posted before she joined.
        resp = await dora.client.room_messages(scene.room, limit=50)
        missed = [e for e in resp.chunk if getattr(e, "sender", "") == scene.bot.user_id
                  and type(e).__name__ == "MegolmEvent"]
        assert missed, "the earlier item should be undecryptable for a newcomer"
        await dora.request_key(missed[0], scene.bot.user_id)
        deadline = time.monotonic() + 15
        body = None
        while body is None and time.monotonic() < deadline:
            await dora.sync(timeout_ms=1000)
            body = dora.decrypt(missed[0])
        # A member whose client keeps asking is reported (the self-check).
        await dora.request_key(missed[0], scene.bot.user_id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                "asked 2 times for a room key" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.2)
        await dora.close()
    assert body is not None and body.splitlines()[0] == make_items(1)[0].title
    messages = [r.getMessage() for r in caplog.records]
    assert any("room key forwarded to " + dora_u.user_id in m for m in messages)
    assert any(m.startswith(f"room {scene.room}: {dora_u.user_id} (device "
                            f"{dora_u.device_id}) asked 2 times") for m in messages)


async def test_megolm_sessions_rotate_as_the_room_says(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, tmp_path: Path) -> None:
    bot, alice_u = await new_user("newsbot"), await new_user("alice")
    encryption = {**ENCRYPTION_STATE,
                  "content": {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 2}}
    async with MemberClient(synapse.base_url, alice_u) as raw:
        room = await raw.create_room(name="rotation", preset="private_chat",
                                     invite=[bot.user_id], initial_state=[encryption])
    feed_server.set_feed(feed_path, make_items(4))
    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                "backfill": 4}])), bot)
    async with EncryptedMember(synapse.base_url, alice_u, tmp_path / "alice") as alice, \
            InProcessBot(config):
        await alice.wait_for(room, 4, sender=bot.user_id)
        sessions = [s["session_id"] for r, s in alice.messages if r == room]
    assert len(set(sessions)) == 2, sessions


async def test_a_crypto_store_of_another_account_refuses_to_start(
        scene: Scene, new_user: NewUserFactory) -> None:
    async with InProcessBot(scene.config()):
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
    other = await new_user("otherbot")
    path = write_config(scene.tmp_path / "other.yaml", bot_config(
        homeserver=scene.synapse.base_url, bot=other, storage=scene.tmp_path / "state",
        feeds=[{"name": "news", "url": scene.feed_server.url(scene.feed_path),
                "rooms": [scene.room]}]))
    process = BotProcess(path, other, scene.tmp_path / "other.log")
    await process.start()
    assert await process.wait(30) == 1
    log = process.log()
    assert f"belongs to {scene.bot.user_id}" in log
    assert "Traceback" not in log


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


async def test_state_files_are_private_in_an_existing_0755_directory(scene: Scene) -> None:
    storage = scene.tmp_path / "state"
    old_umask = os.umask(0o022)
    try:
        storage.mkdir(mode=0o755)
        storage.chmod(0o755)
        # With a password, the session file is written too.
        async with InProcessBot(scene.config(auth="password")):
            await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
    finally:
        os.umask(old_umask)
    modes = _modes(storage)
    for name in ("newsbot.sqlite3", "matrix-session.json", "crypto", "crypto/crypto.db",
                 f"crypto/{PICKLE_KEY_FILE}", "crypto/shared-sessions.json"):
        assert name in modes, sorted(modes)
    loose = {name: oct(m) for name, m in modes.items()
             if m != (0o700 if (storage / name).is_dir() else 0o600)}
    assert loose == {}


def _account_pickles(crypto: Path) -> list[tuple[bytes, bool]]:
    conn = sqlite3.connect(crypto / STORE_NAME)
    try:
        return [(bytes(b) if not isinstance(b, str) else b.encode(), bool(s))
                for b, s in conn.execute("SELECT account, shared FROM accounts")]
    finally:
        conn.close()


def _count(crypto: Path, table: str) -> int:
    conn = sqlite3.connect(crypto / STORE_NAME)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


async def test_a_store_made_with_nios_default_key_keeps_its_identity_under_a_random_key(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    from nio.crypto import OlmAccount

    crypto = scene.tmp_path / "state" / "crypto"
    # Older newsbot: nio's default pickle key, no key file.
    monkeypatch.setattr(matrix_transport, "prepare_pickle_key",
                        lambda directory: NIO_DEFAULT_PICKLE_KEY)
    async with InProcessBot(scene.config()) as running:
        await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        assert running.app is not None
        client = running.app.transport._client  # type: ignore[attr-defined]
        identity = dict(client.olm.account.identity_keys)
        device = client.device_id
    monkeypatch.undo()
    assert not (crypto / PICKLE_KEY_FILE).exists()
    [(old_pickle, shared)] = _account_pickles(crypto)
    assert OlmAccount.from_pickle(old_pickle, NIO_DEFAULT_PICKLE_KEY, shared).identity_keys \
        == identity
    olm_sessions = _count(crypto, "olmsessions")
    assert olm_sessions >= 2           # one per member's device the room key went to

    async with InProcessBot(scene.config()) as running:
        assert running.app is not None
        scene.feed_server.set_feed(scene.feed_path, make_items(2))
        for member in (scene.alice, scene.bob):
            bodies = await member.wait_for(scene.room, 2, sender=scene.bot.user_id)
            assert first_lines(bodies)[-1] == make_items(2)[0].title
        client = running.app.transport._client  # type: ignore[attr-defined]
        assert client.device_id == device
        assert client.olm.account.identity_keys == identity
    key_file = crypto / PICKLE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    [(new_pickle, shared)] = _account_pickles(crypto)
    with pytest.raises(ValueError, match="couldn't be decrypted"):
        OlmAccount.from_pickle(new_pickle, NIO_DEFAULT_PICKLE_KEY, shared)
    assert OlmAccount.from_pickle(new_pickle, key_file.read_text(), shared).identity_keys \
        == identity
    assert _count(crypto, "olmsessions") >= olm_sessions     # no Olm session lost
    assert await scene.clear_messages_from_bot(scene.alice.user) == []
