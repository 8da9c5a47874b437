"""WebSub against a real hub (tests/support/websubhub.py) and a real feed server: the
subscription is verified, a signed push reaches the feed's poller and its outbox, a bad
signature and a stranger's intent are refused, the lease is renewed before it ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.clock import SystemClock
from bot.config import FeedConfig, load_config_text
from bot.errors import BlockedURLError, ConfigError
from bot.feeds.fetch import Fetcher, FetchResult
from bot.poller import FeedPoller
from bot.store import SqliteStore
from bot.websub import KEY_PREFIX, Discovered, WebSub, discover_links, signature_valid
from tests.botkit import BotRunner, bot_config, load, write_config
from tests.support import (
    FeedItem,
    FeedServer,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    free_port,
    make_items,
)
from tests.support.feedserver import CONTENT_TYPES, render_rss
from tests.support.pollers import feed_poller
from tests.support.websubhub import WebSubHub

ROOM = "!actus:test"
FEED = "actus"
PATH = "/websub-feed.xml"


def hub_feed(items: list[FeedItem], self_url: str, hub_url: str) -> bytes:
    """An RSS feed naming its hub the way WordPress does (atom:link rel=hub)."""
    body = render_rss(items, title="Actualités", lang="fr", link="http://127.0.0.1/",
                      self_url=self_url)
    return body.replace(b"<channel>",
                        f'<channel><atom:link href="{hub_url}" rel="hub" />'.encode(), 1)


@dataclass
class Rig:
    websub: WebSub
    hub: WebSubHub
    feeds: FeedServer
    store: SqliteStore
    poller: FeedPoller
    topic: str
    listener: str       # the bot's listener, where the hub calls back
    http: Listener
    feed: FeedConfig

    def serve(self, items: list[FeedItem]) -> bytes:
        body = hub_feed(items, self.topic, self.hub.url)
        self.feeds.set_raw(PATH, body, content_type=CONTENT_TYPES["rss"])
        return body

    def verified(self) -> list[Any]:
        return [v for v in self.hub.verifications if v.mode == "subscribe" and v.confirmed]


class Listener:
    """The bot's HTTP listener, reduced to WebSub's routes; restarted with another
    WebSub on the same port as after a restart of the bot."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self, websub: WebSub) -> None:
        await self.stop()
        app = web.Application()
        app.add_routes(websub.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def running(websub: WebSub) -> AsyncIterator[None]:
    task = asyncio.create_task(websub.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_websub(store: SqliteStore, poller: FeedPoller, feed: FeedConfig, port: int,
                **options: Any) -> WebSub:
    async def deliver(name: str, fetched: FetchResult) -> None:
        assert name == feed.name
        await poller.poll_once(fetched=fetched)
    settings: dict[str, Any] = {"max_body_bytes": 5 * 1024 * 1024,
                                "allow_private_networks": True, **options}
    return WebSub(public_url=f"http://127.0.0.1:{port}/", store=store, clock=SystemClock(),
                  deliver=deliver, feeds=lambda: [feed], **settings)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, hub_lease: int | None = None,
              **options: Any) -> AsyncIterator[Rig]:
    store = SqliteStore.open(tmp_path / "state")
    port = free_port()
    async with FeedServer() as feeds, WebSubHub(lease=hub_lease) as hub, \
            Fetcher(allow_private_networks=True) as fetcher:
        topic = feeds.url(PATH)
        feed = FeedConfig(name=FEED, url=topic, rooms=(ROOM,))
        poller = feed_poller(feed, store, fetcher)
        websub = make_websub(store, poller, feed, port, **options)
        http = Listener(port)
        the_rig = Rig(websub, hub, feeds, store, poller, topic, f"http://127.0.0.1:{port}",
                      http, feed)
        the_rig.serve(make_items(2))
        await poller.poll_once()        # first sight: the two items are known
        assert await store.pending_count(ROOM) == 0
        await http.start(websub)
        try:
            yield the_rig
        finally:
            await http.stop()
            await the_rig.websub.close()
            store.close()


async def queued(store: SqliteStore, timeout: float = 30.0) -> str:
    """The entry id of the first row queued for the room, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await store.next_pending(ROOM)
        if row is not None:
            return row.entry_id
        await asyncio.sleep(0.05)
    raise AssertionError("nothing was queued")


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}=" + hmac.new(secret.encode(), body, algorithm).hexdigest()


# -- end to end with the hub -----------------------------------------------------------

async def test_a_verified_subscription_and_a_signed_push_reach_the_outbox(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.websub")
    async with rig(tmp_path) as r, running(r.websub):
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        [request] = r.hub.requests
        assert request["hub.topic"] == r.topic
        assert request["hub.callback"].startswith(r.listener + "/websub/")
        assert request["hub.lease_seconds"] == str(10 * 24 * 3600)
        [verification] = r.verified()
        assert verification.callback == request["hub.callback"]
        # What is stored is what answering a push after a restart needs, nothing more.
        stored = json.loads(await r.store.get(KEY_PREFIX + FEED) or "{}")
        assert set(stored) == {"feed", "hub", "topic", "id", "secret", "expires", "renew"}
        assert stored["secret"] == request["hub.secret"]
        assert request["hub.callback"].endswith("/" + stored["id"])

        r.serve(make_items(3))          # item 3 is new
        [distribution] = await r.hub.publish(r.topic)
        assert distribution.status == 202
        assert await queued(r.store) == "urn:newsbot-test:item-3"
        assert r.websub.pushes["accepted"] == 1
        # The poller's own schedule is untouched: it was never asked to fetch.
        assert [x.method for x in r.feeds.requests(PATH)] == ["GET", "GET", "GET"]
    assert stored["secret"] not in caplog.text and stored["id"] not in caplog.text


async def test_a_push_and_a_poll_of_the_same_item_queue_it_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, running(r.websub):
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        r.serve(make_items(3))
        # The poller's own schedule may poll while a push is handled: one outbox.
        [distribution], _delay = await asyncio.gather(r.hub.publish(r.topic),
                                                      r.poller.poll_once())
        assert distribution.status == 202
        assert await queued(r.store) == "urn:newsbot-test:item-3"
        await r.poller.poll_once()
        assert await r.store.pending_count(ROOM) == 1


async def test_a_push_with_a_bad_signature_is_acknowledged_ignored_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.websub")
    async with rig(tmp_path) as r, running(r.websub):
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        [sub] = r.hub.active(r.topic)
        assert sub.secret is not None
        body = r.serve(make_items(3))
        forged = {
            "wrong key": sign("not the secret", body),
            "other body": sign(sub.secret, body + b" "),
            "unknown algorithm": "md5=" + hashlib.md5(body).hexdigest(),
            "garbage": "sha256",
            "none": None,
        }
        async with aiohttp.ClientSession() as http:
            for signature in forged.values():
                headers = {"Content-Type": CONTENT_TYPES["rss"]}
                if signature is not None:
                    headers["X-Hub-Signature"] = signature
                async with http.post(sub.callback, data=body, headers=headers) as resp:
                    # The spec: 2xx, and the message is locally ignored.
                    assert resp.status == 202
        assert r.websub.pushes == {"accepted": 0, "bad_signature": len(forged), "unknown": 0,
                                   "too_large": 0}
        assert await r.store.pending_count(ROOM) == 0
        refusals = [m for m in caplog.messages if "signature ignored" in m]
        assert len(refusals) == len(forged)
        assert all(s not in caplog.text for s in forged.values() if s and "=" in s[4:])
        assert sub.secret not in caplog.text

        # The hub's own push of the same body, signed with the secret, goes through.
        [distribution] = await r.hub.publish(r.topic, body=body,
                                             content_type=CONTENT_TYPES["rss"])
        assert distribution.status == 202
        assert await queued(r.store) == "urn:newsbot-test:item-3"


@pytest.mark.parametrize("algorithm", ["sha1", "sha512"])
async def test_other_algorithms_of_the_spec_are_accepted(tmp_path: Path,
                                                         algorithm: str) -> None:
    async with rig(tmp_path) as r, running(r.websub):
        r.hub.algorithm = algorithm
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        r.serve(make_items(3))
        await r.hub.publish(r.topic)
        assert await queued(r.store) == "urn:newsbot-test:item-3"


async def test_an_intent_the_bot_did_not_ask_for_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.websub")
    async with rig(tmp_path) as r, running(r.websub):
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        [sub] = r.hub.active(r.topic)
        attempts = [
            (sub.callback, "subscribe", "http://127.0.0.1:1/another-topic"),
            # A stranger unsubscribing the bot: nothing of the sort is pending.
            (sub.callback, "unsubscribe", r.topic),
            (sub.callback, "subscribe", r.topic),       # already verified: not pending
            (r.listener + "/websub/made-up-id", "subscribe", r.topic),
            (sub.callback, "denied", "http://127.0.0.1:1/another-topic"),
        ]
        async with aiohttp.ClientSession() as http:
            for callback, mode, topic in attempts:
                params = {"hub.mode": mode, "hub.topic": topic,
                          "hub.challenge": "echo-me", "hub.lease_seconds": "60"}
                async with http.get(callback, params=params) as resp:
                    assert resp.status == 404
                    assert "echo-me" not in await resp.text()
            # A push to a callback the bot never gave: 410, the hub may drop it.
            async with http.post(r.listener + "/websub/made-up-id", data=b"x") as resp:
                assert resp.status == 410
        assert r.websub.current(FEED) is not None        # still subscribed
        assert sum("matches no pending request" in m for m in caplog.messages) == 4


async def test_a_pending_subscription_is_confirmed_only_for_its_topic_and_mode(
        tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        forms: list[dict[str, str]] = []

        async def quiet_hub(request: web.Request) -> web.Response:
            forms.append({k: str(v) for k, v in (await request.post()).items()})
            return web.Response(status=202)     # accepted, verification left to the test
        r.feeds.set_handler("/quiet-hub", quiet_hub)
        assert await r.websub.subscribe(FEED, r.feeds.url("/quiet-hub"), r.topic)
        [form] = forms
        callback = form["hub.callback"]

        async def intent(mode: str, topic: str, challenge: str | None = "c-1") -> int:
            params = {"hub.mode": mode, "hub.topic": topic, "hub.lease_seconds": "600"}
            if challenge is not None:
                params["hub.challenge"] = challenge
            async with aiohttp.ClientSession() as http, \
                    http.get(callback, params=params) as resp:
                assert resp.status == 404 or await resp.text() == challenge
                return resp.status
        assert await intent("subscribe", r.topic + "?other") == 404
        assert await intent("unsubscribe", r.topic) == 404
        assert await intent("subscribe", r.topic, challenge=None) == 404
        assert r.websub.current(FEED) is None
        assert await intent("subscribe", r.topic) == 200
        assert r.websub.current(FEED) is not None
        assert await intent("subscribe", r.topic, "c-2") == 404     # used once


async def test_the_lease_is_renewed_before_it_ends_with_a_new_callback(
        tmp_path: Path) -> None:
    lease = 8
    async with rig(tmp_path, hub_lease=lease, lease_seconds=lease, min_renewal=0.5) as r, \
            running(r.websub):
        await r.hub.wait_for(lambda: len(r.verified()) >= 2, timeout=60)
        first, second = r.verified()[:2]
        assert second.callback != first.callback
        renewal = [q for q in r.hub.requests if q["hub.mode"] == "subscribe"][1]
        assert renewal["hub.callback"] == second.callback
        # Asked again (and verified) before the first lease ran out.
        assert second.at < first.at + lease
        # The old callback is unsubscribed, so the hub pushes once.
        await r.hub.wait_for(lambda: any(
            v.mode == "unsubscribe" and v.confirmed and v.callback == first.callback
            for v in r.hub.verifications))
        assert [s.callback for s in r.hub.active(r.topic)] == [second.callback]
        r.serve(make_items(3))
        [distribution] = await r.hub.publish(r.topic)
        assert distribution.callback == second.callback and distribution.status == 202
        assert await queued(r.store) == "urn:newsbot-test:item-3"
        # A late push to the old callback: 410.
        async with aiohttp.ClientSession() as http, \
                http.post(first.callback, data=b"late") as resp:
            assert resp.status == 410


async def test_a_restart_keeps_the_subscription_and_its_secret(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        async with running(r.websub):
            await r.hub.wait_for(lambda: r.hub.active(r.topic))
        await r.websub.close()
        # A new process: the same store and listener address, nothing in memory.
        r.websub = make_websub(r.store, r.poller, r.feed, r.http.port)
        await r.http.start(r.websub)
        async with running(r.websub):
            r.serve(make_items(3))
            [distribution] = await r.hub.publish(r.topic)
            assert distribution.status == 202
            assert await queued(r.store) == "urn:newsbot-test:item-3"
        # The stored lease was still long: no new subscription at start.
        assert len(r.hub.requests) == 1


async def test_a_hub_on_a_private_address_is_refused_without_allow_private_networks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.websub")
    async with rig(tmp_path, allow_private_networks=False) as r:
        assert not await r.websub.subscribe(FEED, r.hub.url, r.topic)
        with pytest.raises(BlockedURLError):
            await r.websub.discover(r.topic)
    assert r.hub.requests == []
    assert "loopback address" in caplog.text


async def test_a_push_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    async with rig(tmp_path, max_body_bytes=2000) as r, running(r.websub):
        await r.hub.wait_for(lambda: r.hub.active(r.topic))
        body = r.serve(make_items(8))
        assert len(body) > 2000
        [distribution] = await r.hub.publish(r.topic)
        assert distribution.status == 413
        assert r.websub.pushes["too_large"] == 1
        assert await r.store.pending_count(ROOM) == 0


# -- the bot, end to end ---------------------------------------------------------------

async def test_a_hub_push_brings_the_item_to_members_long_before_the_interval(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner, caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="websub")
    items = make_items(2)
    topic = feed_server.url(feed_path)
    async with WebSubHub() as hub:
        def publish_feed(shown: list[FeedItem]) -> None:
            feed_server.set_raw(feed_path, hub_feed(shown, topic, hub.url),
                                content_type=CONTENT_TYPES["rss"])
        publish_feed(items[1:])
        port = free_port()
        data = bot_config(
            homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
            http={"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
            feeds=[{"name": "actus", "url": topic, "rooms": [room], "interval": "1h",
                    "backfill": 1}])
        caplog.set_level(logging.INFO, logger="bot.websub")
        running = await run_bot(load(write_config(tmp_path / "c.yaml", data), bot))
        await alice.wait_for_messages(room, 1, sender=bot.user_id)     # the backfill
        await hub.wait_for(lambda: hub.active(topic), timeout=60)
        [sub] = hub.active(topic)
        assert sub.callback.startswith(f"http://127.0.0.1:{port}/websub/")

        publish_feed(items)             # the site publishes, then pings its hub
        pushed = time.monotonic()
        [distribution] = await hub.publish(topic)
        assert distribution.status == 202
        seen = await alice.wait_for_messages(room, 2, sender=bot.user_id, timeout=120)
        assert seen[-1]["content"]["body"].splitlines()[0] == items[0].title
        assert time.monotonic() - pushed < 600      # the interval is an hour: the push
        await running.stop()
    assert sub.secret is not None and sub.secret not in caplog.text


def test_public_url_is_checked(tmp_path: Path) -> None:
    base = ('matrix: {homeserver: https://matrix.example.org, user_id: "@b:example.org", '
            'access_token: abcdefgh, device_id: D}\nstorage: {path: state}\n'
            'feeds: [{name: actus, url: "https://example.org/feed", rooms: ["!r:x.org"]}]\n')

    def load_text(extra: str) -> tuple[Any, list[str]]:
        return load_config_text(base + extra, base_dir=tmp_path, environ={})
    loaded, warnings = load_text("http: {listen: 127.0.0.1:9180, "
                                 "public_url: https://bot.example.org/news/}")
    assert (loaded.http.public_url, warnings) == ("https://bot.example.org/news", [])
    _, warnings = load_text("http: {listen: 127.0.0.1:9180, public_url: http://bot.example.org}")
    assert warnings == ["<config>:4: http.public_url: plain http: hubs push in the clear "
                        "(pushes stay signed); use https"]
    _, warnings = load_text("http: {public_url: https://bot.example.org}")
    assert warnings == ["<config>:4: http.public_url: set, but http.listen is not: "
                        "WebSub is off"]
    for bad, problem in [("ftp://bot.example.org", "is not an http(s) URL"),
                         ("https://bot.example.org/?a=b", "must not have a query"),
                         ("https://bot.example.org/#x", "must not have a query")]:
        with pytest.raises(ConfigError) as caught:
            load_text(f"http: {{listen: 127.0.0.1:9180, public_url: '{bad}'}}")
        assert problem in caught.value.problems[0]


# -- pure parts -------------------------------------------------------------------------

BASE = "https://example.org/feed.xml"


def test_link_headers_come_first() -> None:
    body = b'<feed xmlns="http://www.w3.org/2005/Atom"><link rel="hub" href="https://b/"/></feed>'
    found = discover_links([("hub", "https://hub.example/"), ("self", "https://ex.org/f")],
                           body, "application/atom+xml", BASE)
    assert found == Discovered("https://hub.example/", "https://ex.org/f")


def test_the_document_links_before_the_first_entry_count() -> None:
    atom = (b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom">'
            b'<link rel="self" href="/feed.xml"/><link rel="hub" href="https://hub.example/"/>'
            b'<entry><link rel="hub" href="https://evil.example/"/></entry></feed>')
    assert discover_links([], atom, "application/atom+xml", BASE) == \
        Discovered("https://hub.example/", "https://example.org/feed.xml")
    # A hub named only inside an entry (a stranger's words) is no hub.
    injected = (b'<rss><channel><title>t</title><item><title>x</title>'
                b'<atom:link rel="hub" href="https://evil.example/"/></item></channel></rss>')
    assert discover_links([], injected, "application/rss+xml", BASE) is None
    # A CDATA section is text, not a link.
    cdata = (b'<rss><channel><description><![CDATA[<link rel="hub" href="https://e/">]]>'
             b'</description></channel></rss>')
    assert discover_links([], cdata, "application/rss+xml", BASE) is None
    # No self link: the address fetched is the topic.
    rss = (b'<rss xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
           b'<atom:link rel="hub" href="https://hub.example/"/></channel></rss>')
    assert discover_links([], rss, None, BASE) == Discovered("https://hub.example/", BASE)


def test_json_feed_hubs_and_refused_schemes() -> None:
    doc = {"version": "https://jsonfeed.org/version/1.1", "feed_url": "https://ex.org/f.json",
           "hubs": [{"type": "WebSub", "url": "https://hub.example/"}], "items": []}
    assert discover_links([], json.dumps(doc).encode(), "application/feed+json", BASE) == \
        Discovered("https://hub.example/", "https://ex.org/f.json")
    doc["hubs"] = [{"type": "WebSub", "url": "javascript:alert(1)"}]
    assert discover_links([], json.dumps(doc).encode(), "application/feed+json", BASE) is None
    assert discover_links([("hub", "file:///etc/passwd")], None, None, BASE) is None
    assert discover_links([], b"not a feed at all", "text/plain", BASE) is None


def test_signatures() -> None:
    body, secret = b"<rss/>", "s3cret"
    for algorithm in ("sha1", "sha256", "sha384", "sha512"):
        assert signature_valid(sign(secret, body, algorithm), body, secret)
    assert signature_valid(sign(secret, body).upper().replace("SHA256", "sha256"), body, secret)
    assert not signature_valid("md5=" + hmac.new(secret.encode(), body, "md5").hexdigest(),
                               body, secret)
    assert not signature_valid(sign("other", body), body, secret)
    assert not signature_valid(sign(secret, body) + "00", body, secret)
    assert not signature_valid("sha256=é", body, secret)
    assert not signature_valid("", body, secret)
    assert not signature_valid(None, body, secret)
