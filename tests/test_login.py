"""``newsbot login`` against a real Synapse: the password is asked once, the token lands in
a 0600 file the configuration reads, and the bot then runs on it."""

from __future__ import annotations

import asyncio
import re
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bot.config import load_config
from tests.botkit import InProcessBot
from tests.support import FeedServer, MemberFactory, NewUserFactory, SynapseServer, make_items
from tests.test_cli import ROOT, Result, cli_env


async def login(config: Path, stdin: str, *args: str,
                options: tuple[str, ...] = ()) -> Result:
    """``newsbot OPTIONS login -c CONFIG ARGS`` with ``stdin`` piped in (not a terminal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *options, "login", "-c", str(config), *args,
        cwd=ROOT, env=cli_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def config_data(synapse: SynapseServer, user_id: str, tmp_path: Path,
                **matrix: Any) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": synapse.base_url, "user_id": user_id, **matrix},
        "storage": {"path": str(tmp_path / "state")},
        "fetch": {"allow_private_networks": True},
        "encryption": {"enabled": False},
        "feeds": [{"name": "news", "url": "http://127.0.0.1:1/feed",
                   "rooms": ["#nowhere:localhost"]}],
    }


async def whoami(synapse: SynapseServer, token: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"{synapse.base_url}/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


async def test_login_writes_a_private_token_file_the_bot_runs_on(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="news")
    items = make_items(2)
    feed_server.set_feed(feed_path, items)
    data = config_data(synapse, bot.user_id, tmp_path, access_token_file="secrets/bot.token")
    data["feeds"] = [{"name": "news", "url": feed_server.url(feed_path), "rooms": [room],
                      "interval": "1s", "backfill": 1}]
    (tmp_path / "secrets").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    result = await login(config, bot.password + "\n")
    assert result.code == 0, result.err
    token_file = tmp_path / "secrets" / "bot.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert await whoami(synapse, token) == 200
    for secret in (bot.password, token):
        assert secret not in result.out and secret not in result.err
    assert "  access_token_file: secrets/bot.token" in result.out
    found = re.search(r"^  device_id: (\S+)$", result.out, re.MULTILINE)
    assert found is not None, result.out

    # The configuration as the command says: the bot starts on it and posts.
    data["matrix"]["device_id"] = found.group(1)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded, _ = load_config(config, environ={})
    assert loaded.matrix.access_token == token and loaded.matrix.password is None
    assert "password" not in config.read_text()
    async with InProcessBot(loaded):
        seen = await alice.wait_for_messages(room, 1, sender=bot.user_id)
    assert seen[0]["content"]["body"].splitlines()[0] == items[0].title

    # Once written, the file is not replaced without --force.
    again = await login(config, bot.password + "\n")
    assert again.code == 1
    assert "exists already; pass --force to replace it" in again.err
    assert token_file.read_text().strip() == token

    # With --force, the same device (its keys kept) gets a new token. (Synapse leaves the
    # old one valid too, against the spec: element-hq/synapse#6616.)
    forced = await login(config, bot.password + "\n", "--force")
    assert forced.code == 0, forced.err
    assert f"device {found.group(1)}" in forced.out
    new_token = token_file.read_text().strip()
    assert new_token != token
    assert await whoami(synapse, new_token) == 200
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


async def test_a_wrong_password_is_refused_and_writes_nothing(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_data(synapse, bot.user_id, tmp_path)))
    wrong = "not-" + bot.password
    # DEBUG logs too: nothing below the CLI may show the password.
    result = await login(config, wrong + "\n", options=("--log-level", "DEBUG"))
    assert result.code == 1
    assert "login refused (is the password right?)" in result.err
    assert "M_FORBIDDEN" in result.err
    assert wrong not in result.out + result.err
    assert not (tmp_path / "newsbot.token").exists()

    empty = await login(config, "\n")
    assert empty.code == 1 and "no password given" in empty.err


async def test_a_config_without_account_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("matrix:\n  homeserver: ftp://example.org\n  user_id: newsbot\n")
    result = await login(config, "whatever\n")
    assert result.code == 2
    assert "matrix.homeserver: needs the homeserver's http(s) URL" in result.err
    assert "matrix.user_id: needs the bot's Matrix id" in result.err
