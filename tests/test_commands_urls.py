"""Feed URLs with credentials against a real Synapse: a member with power level 0 never
sees userinfo or query strings, a moderator sees the URL without its userinfo, and no log
line shows userinfo."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest
from aiohttp import web

from bot.logs import make_handler
from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import FeedServer, MemberFactory, NewUserFactory, SynapseServer, make_items
from tests.test_commands import ask

NO_TITLE_RSS = (b'<?xml version="1.0"?><rss version="2.0"><channel>'
                b"<item><title>Untitled feed's item</title><guid>one</guid></item>"
                b"</channel></rss>")


def with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@", 1)


async def test_list_shows_members_no_credentials_and_moderators_no_userinfo(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logged = io.StringIO()
    handler = make_handler(logged)      # what the operator's log shows, filter included
    logging.getLogger().addHandler(handler)
    try:
        await _scenario(synapse, feed_server, feed_path, new_user, member, tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
    output = logged.getvalue()
    for secret in ("secret", "hunter2", "carl:pw", "dora:pw"):
        assert secret not in output, secret
    assert "http://***@127.0.0.1" in output      # the URLs are logged, their userinfo masked


async def _scenario(synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
                    new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    moderator = await member(await new_user("moderator"))
    reader = await member(await new_user("reader"))
    room = await moderator.create_room(name="intranet")
    await reader.join(room)

    feed_server.set_feed(feed_path, make_items(1))
    plain = feed_server.url(feed_path)
    secret_url = with_userinfo(plain, "user:secret") + "?token=abc"
    # A feed redirecting to itself: its error names its URL, credentials included.
    loop_path = feed_path + "-loop"
    loop_url = with_userinfo(feed_server.url(loop_path), "bob:hunter2") + "?key=xyz"

    async def redirect_to_itself(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(loop_url)

    feed_server.set_handler(loop_path, redirect_to_itself)
    gone_path = feed_path + "-gone"
    gone_url = with_userinfo(feed_server.url(gone_path), "eve:hunter2") + "?sig=s3cr"
    feed_server.set_raw(gone_path, b"gone", status=410, content_type="text/plain")

    config = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "intranet", "url": secret_url, "rooms": [room], "backfill": 1},
               {"name": "looping", "url": loop_url, "rooms": [room]},
               {"name": "closed", "url": gone_url, "rooms": [room]}],
        commands={"rate_limit": 50})), bot)
    async with InProcessBot(config) as running:
        await moderator.wait_for_messages(room, 1, sender=bot.user_id)
        assert running.app is not None
        store = running.app.store
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            looping, closed = await store.feed_state("looping"), await store.feed_state("closed")
            if looping and looping.last_error and closed and closed.disabled:
                break
            await asyncio.sleep(0.2)
        # What the store holds does name the credentials: the answers must not.
        assert looping is not None and "hunter2" in (looping.last_error or "")
        assert closed is not None and "hunter2" in (closed.disabled or "")

        listing = await ask(reader, room, bot, "!news list")
        for hidden in ("secret", "user:", "token", "hunter2", "bob:", "key=xyz", "s3cr", "?"):
            assert hidden not in listing, (hidden, listing)
        assert f"• intranet: {plain}, every" in listing
        assert "redirect loop at " + feed_server.url(loop_path) in listing

        status = await ask(reader, room, bot, "!news status")
        for hidden in ("hunter2", "eve:", "s3cr", "?"):
            assert hidden not in status, (hidden, status)
        assert "Gone at " + feed_server.url(gone_path) in status

        listing = await ask(moderator, room, bot, "!news list")
        for hidden in ("secret", "user:", "hunter2", "bob:", "eve:"):
            assert hidden not in listing, (hidden, listing)
        assert f"• intranet: {plain}?token=abc, every" in listing
        assert feed_server.url(loop_path) + "?key=xyz" in listing

        # A moderator's add answers: the failure names the URL without its userinfo; a
        # feed without a title is named after the host, never after the credentials.
        missing = with_userinfo(feed_server.url(feed_path + "-missing"), "carl:pw") + "?a=1"
        failed = await ask(moderator, room, bot, f"!news add {missing}")
        assert failed.startswith("I could not add " + feed_server.url(feed_path + "-missing"))
        assert "carl" not in failed and "pw" not in failed
        untitled = feed_path + "-untitled"
        feed_server.set_raw(untitled, NO_TITLE_RSS)
        added = await ask(moderator, room, bot,
                          f"!news add {with_userinfo(feed_server.url(untitled), 'dora:pw')}")
        assert added.startswith("Added “127-0-0-1”: 127.0.0.1 (1 entries)"), added
        # The 410 notice every member reads names the address without credentials.
        said = [e["content"]["body"] for e in await reader.messages(room, sender=bot.user_id)
                if "m.relates_to" not in e["content"]]     # not the answers to moderators
        gone = [b for b in said if "410" in b]
        assert gone, said
        assert feed_server.url(gone_path) + " " in gone[0] or \
            feed_server.url(gone_path) + ")" in gone[0], gone[0]
        for body in said:
            for hidden in ("hunter2", "eve:", "s3cr", "secret", "bob:"):
                assert hidden not in body, (hidden, body)
