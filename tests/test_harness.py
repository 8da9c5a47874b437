"""Smoke tests for the real-parts harness itself (tests/support) and the demo built on it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import feedparser
import pytest
import yaml
from aiohttp import web

from tests.botkit import ROOT
from tests.support import (
    FeedItem,
    FeedServer,
    MatrixAPIError,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    free_port,
    make_items,
)


async def test_member_sees_html_notice(synapse: SynapseServer, new_user: NewUserFactory,
                                       member: MemberFactory) -> None:
    alice, bob = await new_user("alice"), await new_user("bob")
    a, b = await member(alice), await member(bob)

    room = await a.create_room(name="Actualités")
    await a.invite(room, bob.user_id)
    assert room in await b.pending_invites()
    assert await b.join(room) == room
    assert await a.joined_members(room) == sorted([alice.user_id, bob.user_id])

    event_id = await a.send_text(room, "Bonjour à tous", msgtype="m.notice",
                                 html="<p><b>Bonjour</b> à tous</p>")
    seen = await b.wait_for_messages(room, 1, sender=alice.user_id, timeout=10)
    assert [e["event_id"] for e in seen] == [event_id]
    content = seen[0]["content"]
    assert content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert content["formatted_body"] == "<p><b>Bonjour</b> à tous</p>"
    assert await b.messages(room, msgtypes=["m.text"]) == []


async def test_messages_paginates_in_order_and_errors_are_clear(
        new_user: NewUserFactory, member: MemberFactory) -> None:
    alice = await new_user("alice")
    a = await member(alice)
    room = await a.create_room(preset="private_chat")
    # More than one page of /messages (100 events).
    for i in range(105):
        await a.send_text(room, f"message {i}")
    bodies = [e["content"]["body"] for e in await a.messages(room)]
    assert bodies == [f"message {i}" for i in range(105)]

    with pytest.raises(AssertionError, match="message 104"):
        await a.wait_for_messages(room, 106, timeout=0.3)
    with pytest.raises(MatrixAPIError) as excinfo:
        await a.join("#nowhere:localhost")
    assert excinfo.value.status == 404
    assert excinfo.value.errcode == "M_NOT_FOUND"


async def test_synapse_restart_keeps_users_and_rooms(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory) -> None:
    alice = await new_user("alice")
    a = await member(alice)
    room = await a.create_room(alias_localpart=f"restart-{alice.localpart}")
    await a.send_text(room, "avant le redémarrage")
    base_url = synapse.base_url

    await synapse.restart()

    assert synapse.base_url == base_url
    # Same token, same room, same history.
    assert await a.joined_members(room) == [alice.user_id]
    assert [e["content"]["body"] for e in await a.messages(room)] == ["avant le redémarrage"]
    await a.send_text(room, "après")
    assert len(await a.messages(room)) == 2


async def test_feed_formats_parse(feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(8)
    items[0].content = "<p>Texte &amp; <i>suite</i> &lt;fin&gt;</p>"
    async with aiohttp.ClientSession() as http:
        for kind in ("rss", "atom"):
            feed_server.set_feed(f"{feed_path}.{kind}", items, kind=kind)
            async with http.get(feed_server.url(f"{feed_path}.{kind}")) as resp:
                assert resp.status == 200
                parsed = feedparser.parse(await resp.read())
            assert not parsed.bozo, parsed.get("bozo_exception")
            assert parsed.feed.title == "Actualités"
            assert [e.id for e in parsed.entries] == [i.guid for i in items]
            assert [e.title for e in parsed.entries] == [i.title for i in items]
            assert parsed.entries[0].content[0].value == items[0].content
            assert parsed.entries[2].title == "Recherche & développement : où en est-on ? (n° 6)"

        feed_server.set_feed(f"{feed_path}.json", items, kind="json")
        async with http.get(feed_server.url(f"{feed_path}.json")) as resp:
            assert resp.headers["Content-Type"].startswith("application/feed+json")
            doc = json.loads(await resp.read())
        assert doc["version"] == "https://jsonfeed.org/version/1.1"
        assert [i["id"] for i in doc["items"]] == [i.guid for i in items]
        assert doc["items"][0]["date_published"] == "2025-01-01T07:00:00Z"


async def test_feed_conditional_get(feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_feed(feed_path, make_items(2))
    url = feed_server.url(feed_path)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == "gzip"  # aiohttp asks for it
            etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304
            assert resp.headers["ETag"] == etag
        async with http.get(url, headers={"If-Modified-Since": modified}) as resp:
            assert resp.status == 304

        # Same items: same body, same validators. New items: both change at once.
        feed_server.set_feed(feed_path, make_items(2))
        assert feed_server.etag(feed_path) == etag
        feed_server.set_feed(feed_path, make_items(3))
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 200
            assert resp.headers["ETag"] != etag
            assert resp.headers["Last-Modified"] != modified
        async with http.get(url, headers={"If-Modified-Since": modified}) as resp:
            assert resp.status == 200

    records = feed_server.requests(feed_path)
    assert [(r.status, r.conditional) for r in records] == [
        (200, False), (304, True), (304, True), (200, True), (200, True)]
    assert records[1].headers["if-none-match"] == etag


async def test_feed_raw_handler_and_404(feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_raw(feed_path, b"<rss>broken", status=200)

    async def too_many(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "7"})

    feed_server.set_handler(f"{feed_path}/busy", too_many)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(feed_server.url(feed_path)) as resp:
            assert gzip.decompress(await resp.read()) == b"<rss>broken"
        async with http.get(feed_server.url(f"{feed_path}/busy")) as resp:
            assert resp.status == 429
        async with http.get(feed_server.url(f"{feed_path}/missing")) as resp:
            assert resp.status == 404
    assert [r.status for r in feed_server.requests(f"{feed_path}/busy")] == [429]
    assert [r.status for r in feed_server.requests(f"{feed_path}/missing")] == [404]


def test_rate_limit_overrides_merge(tmp_path: Path) -> None:
    # Config only: no need to start a second Synapse to check what it would be given.
    server = SynapseServer(tmp_path, port=free_port(), rate_limits={
        "rc_message": {"per_second": 0.5, "burst_count": 2},
        "rc_login": {"address": {"per_second": 1, "burst_count": 1}},
        "rc_presence": None,
    })
    config = yaml.safe_load(server.config_path.read_text())
    assert config["rc_message"] == {"per_second": 0.5, "burst_count": 2}
    assert config["rc_login"]["address"] == {"per_second": 1, "burst_count": 1}
    assert config["rc_login"]["account"] == {"per_second": 1000, "burst_count": 10000}
    assert "rc_presence" not in config
    assert config["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    # A second instance on the same workdir keeps the port and the secrets.
    again = SynapseServer(tmp_path)
    assert again.port == server.port
    assert again.config()["registration_shared_secret"] == config["registration_shared_secret"]


def test_make_items_newest_first() -> None:
    items = make_items(3, prefix="x", start=datetime(2025, 3, 1, tzinfo=UTC))
    assert [i.guid for i in items] == [f"urn:newsbot-test:x-{n}" for n in (3, 2, 1)]
    assert items[0].published == datetime(2025, 3, 1, 2, tzinfo=UTC)
    assert all(isinstance(i, FeedItem) for i in items)


def test_the_demo_runs_as_dev_demo_runs_it(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tests.support.demo", "--keep", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("[m.notice] from @newsbot:localhost") == 3, run.stdout
    assert run.stdout.rstrip().endswith("3 messages, each posted once."), run.stdout
    assert (tmp_path / "config.yaml").exists()      # --keep kept the demo's files


def test_the_xmpp_demo_runs_as_dev_demo_xmpp_runs_it(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tests.support.demo", "xmpp", "--keep",
                          str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("  from Actualités\n") == 3, run.stdout
    assert "Abonnement à actualites enregistré" in run.stdout, run.stdout
    assert "ERROR" not in run.stdout + run.stderr, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("3 messages in the group chat, each posted once."), \
        run.stdout
