"""Cross-signing against a real Synapse: the bot signs its own device, keeps it signed
across restarts and new devices, leaves keys made elsewhere alone, and with
``trust: cross-signed`` shares room keys only with devices their owners signed.

What a member's client concludes is checked from the homeserver's own answer to
``keys/query`` (signatures verified with PyNaCl through signedjson), and, where
Element's behaviour matters, by a client on Element's own crypto stack
(tests/test_cross_signing_element.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.transport.matrix.cross_signing import (
    KEYS_FILE,
    CrossSigningKeys,
    KeysApi,
    device_cross_signed,
    ensure_device_signed,
    upload_body,
)
from tests.botkit import ROOT, InProcessBot, bot_config, bot_environ, write_config
from tests.support import MemberClient, NewUserFactory, SynapseServer, make_items
from tests.test_encryption import Scene, first_lines, scene  # noqa: F401 (fixture)

CRYPTO = "crypto"


async def account_keys(synapse: SynapseServer, token: str, user_id: str) -> dict[str, Any]:
    return await KeysApi(synapse.base_url, token).query(user_id)


def is_cross_signed(answer: dict[str, Any], user_id: str, device_id: str) -> bool:
    return device_cross_signed(
        user_id, answer["device_keys"][user_id][device_id],
        answer.get("master_keys", {}).get(user_id),
        answer.get("self_signing_keys", {}).get(user_id))


def master_of(answer: dict[str, Any], user_id: str) -> str | None:
    master = answer.get("master_keys", {}).get(user_id)
    return None if master is None else next(iter(master["keys"].values()))


async def test_the_bot_signs_its_device_and_keeps_it_signed(
        scene: Scene, synapse: SynapseServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO)
    bot = scene.bot
    async with InProcessBot(scene.config()) as running:
        await scene.alice.wait_for(scene.room, 1, sender=bot.user_id)
        assert running.app is not None
    answer = await account_keys(synapse, bot.access_token, bot.user_id)
    assert is_cross_signed(answer, bot.user_id, bot.device_id)
    first_master = master_of(answer, bot.user_id)
    keys_file = scene.tmp_path / "state" / CRYPTO / KEYS_FILE
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    said = [r.getMessage() for r in caplog.records if "cross-signing" in r.getMessage()]
    assert any(f"device {bot.device_id} is signed" in line for line in said), said

    # A restart keeps the same identity, and the device signed.
    async with InProcessBot(scene.config()):
        scene.feed_server.set_feed(scene.feed_path, make_items(2))
        await scene.alice.wait_for(scene.room, 2, sender=bot.user_id)
    answer = await account_keys(synapse, bot.access_token, bot.user_id)
    assert master_of(answer, bot.user_id) == first_master
    assert is_cross_signed(answer, bot.user_id, bot.device_id)

    # A new device (a password login after the crypto store was moved aside, as after
    # losing the session) is signed by the same account keys.
    state = scene.tmp_path / "state"
    (state / CRYPTO).rename(state / "crypto.old")
    (state / CRYPTO).mkdir(mode=0o700)
    shutil.copy2(state / "crypto.old" / KEYS_FILE, state / CRYPTO / KEYS_FILE)
    config = scene.config(auth="password")
    async with InProcessBot(config) as running:
        assert running.app is not None
        transport: Any = running.app.transport
        for _ in range(300):
            if transport.cross_signing is not None:
                break
            await asyncio.sleep(0.1)
        assert transport.cross_signing is not None and transport.cross_signing.signed
        new_device = transport._client.device_id
        assert new_device != bot.device_id
    answer = await account_keys(synapse, bot.access_token, bot.user_id)
    assert master_of(answer, bot.user_id) == first_master
    assert is_cross_signed(answer, bot.user_id, new_device)


async def test_keys_made_elsewhere_are_left_alone_until_a_reset(
        scene: Scene, synapse: SynapseServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    bot = scene.bot
    # Someone set up cross-signing for the bot's account from another client.
    elsewhere = CrossSigningKeys.generate()
    api = KeysApi(synapse.base_url, bot.access_token)
    assert await api.upload_signing_keys(upload_body(bot.user_id, elsewhere), bot.user_id,
                                         None) is None
    caplog.set_level(logging.INFO)
    async with InProcessBot(scene.config()):
        await scene.alice.wait_for(scene.room, 1, sender=bot.user_id)
    answer = await account_keys(synapse, bot.access_token, bot.user_id)
    assert master_of(answer, bot.user_id) == elsewhere.public("master")     # untouched
    assert not is_cross_signed(answer, bot.user_id, bot.device_id)
    warning = next(r.getMessage() for r in caplog.records
                   if "NOT signed" in r.getMessage())
    assert "--reset-cross-signing" in warning and "another client" in warning

    # The operator asks for a reset: with the password, new keys, the device signed.
    # (A password login: a new device, with a store of its own.)
    config_path = write_config(scene.tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=scene.tmp_path / "state2",
        auth="password", feeds=[{"name": "news", "url": scene.feed_server.url(
            scene.feed_path), "rooms": [scene.room]}]))
    env = {**os.environ, **bot_environ(bot)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", "-c", str(config_path), "--reset-cross-signing",
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    signed = False
    try:
        for _ in range(600):
            await asyncio.sleep(0.1)
            answer = await account_keys(synapse, bot.access_token, bot.user_id)
            devices = set(answer["device_keys"][bot.user_id]) - {bot.device_id}
            if master_of(answer, bot.user_id) != elsewhere.public("master") and devices and \
                    all(is_cross_signed(answer, bot.user_id, d) for d in devices):
                signed = True
                break
    finally:
        process.terminate()
        output = (await process.communicate())[0].decode()
    assert signed, output
    assert "cross-signing keys replaced" in output

    # newsbot doctor says so.
    doctor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "doctor", "-c", str(config_path), env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    report = (await doctor.communicate())[0].decode()
    assert doctor.returncode == 0, report
    assert "cross-signing: signed" in report
    assert any(f"device {d} is signed" in report for d in devices), report


async def test_doctor_reports_an_unsigned_device(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        f"matrix:\n  homeserver: {synapse.base_url}\n  user_id: \"{bot.user_id}\"\n"
        f"  access_token: \"${{BOT_TOKEN}}\"\n  device_id: {bot.device_id}\n"
        f"storage:\n  path: {tmp_path / 'state'}\nfeeds:\n  - name: a\n"
        f"    url: https://example.org/feed\n    rooms: [\"!r:localhost\"]\n")
    env = {**os.environ, **bot_environ(bot)}
    doctor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "doctor", "-c", str(config_path), env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    report = (await doctor.communicate())[0].decode()
    assert doctor.returncode == 1, report
    assert "cross-signing: NOT signed" in report
    assert f"no keys for device {bot.device_id}" in report     # it never ran
    assert bot.access_token not in report


async def test_cross_signed_trust_skips_devices_their_owners_did_not_sign(
        scene: Scene, synapse: SynapseServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    # Alice signs her own device (as her client does when she sets up cross-signing);
    # Bob never did.
    alice = scene.alice.user
    status = await ensure_device_signed(
        KeysApi(synapse.base_url, alice.access_token), alice.user_id, alice.device_id,
        scene.tmp_path, password=None)
    assert status.signed
    caplog.set_level(logging.INFO)
    scene.feed_server.set_feed(scene.feed_path, [])
    async with InProcessBot(scene.config(encryption={"trust": "cross-signed"})):
        await asyncio.sleep(2)
        scene.feed_server.set_feed(scene.feed_path, make_items(1))
        bodies = await scene.alice.wait_for(scene.room, 1, sender=scene.bot.user_id)
        await scene.bob.sync(timeout_ms=1500)
    assert first_lines(bodies) == [make_items(1)[0].title]
    assert scene.bob.bodies(scene.room, scene.bot.user_id) == []
    assert scene.bob.undecryptable, "bob's unsigned device got no room key"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not sharing the room key with the devices not signed by their owners" in w
               and f"{scene.bob.user_id} {scene.bob.user.device_id}" in w
               and scene.alice.user_id not in w for w in warnings), warnings
    async with MemberClient(synapse.base_url, scene.bob.user) as raw:
        assert await raw.messages(scene.room, sender=scene.bot.user_id, msgtypes=["m.notice"]) \
            == []


async def test_a_reset_without_a_password_asks_for_one_or_says_how(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    """A token-configured bot has no password to give the homeserver: from a terminal
    the reset asks for it; without one, it says so and changes nothing."""
    bot = await new_user("newsbot")
    config_path = write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "a", "url": "https://example.org/feed", "rooms": ["!r:localhost"]}]))
    env = {**os.environ, **bot_environ(bot)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", "-c", str(config_path), "--reset-cross-signing",
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    output = (await process.communicate())[0].decode()
    assert process.returncode == 2, output
    assert "needs the account's password" in output
    keys = await account_keys(synapse, bot.access_token, bot.user_id)
    assert bot.user_id not in keys.get("master_keys", {})         # nothing uploaded
