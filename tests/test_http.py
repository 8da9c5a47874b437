"""The bot's HTTP listener (bot.http): health, push, its configuration — on real sockets,
a real SQLite store and, end to end, a real Synapse and feed server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.clock import SystemClock
from bot.config import FeedConfig, load_config, load_config_text
from bot.errors import ConfigError
from bot.feeds.fetch import Fetcher
from bot.http import BODY_TIMEOUT, HttpListener, Loop, PushOutcome
from bot.poller import Polls
from bot.store import SqliteStore
from tests.botkit import BotRunner, bot_config, bot_environ, write_config
from tests.support import (
    FeedServer,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    free_port,
    make_items,
)
from tests.support.pollers import feed_poller

TOKEN = "s3cret-push-token-0123456789"


async def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Wait until ``check()`` (sync or async) is true; generous on a busy machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def listening(listener: HttpListener) -> AsyncIterator[str]:
    """The listener served on a free loopback port; yields its base URL."""
    port = free_port()
    task = asyncio.create_task(listener.serve("127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz"):
                return True
        except aiohttp.ClientConnectionError:
            return False
    try:
        await until(up, "the listener")
        yield base
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def post(url: str, token: str | None = TOKEN, *, scheme: str = "Bearer",
               data: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, \
            http.post(url, headers=headers, data=data) as resp:
        body = await resp.text()
        parsed = json.loads(body) if resp.content_type == "application/json" else {}
        return resp.status, parsed, dict(resp.headers)


# -- health ------------------------------------------------------------------------------


async def test_health_is_503_with_the_reason_when_the_database_is_read_only_or_a_loop_stopped(
        tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    sync = asyncio.create_task(asyncio.Event().wait())
    gone = asyncio.create_task(asyncio.sleep(0))        # a poller of a feed gone for good
    loops = [Loop("sync", sync), Loop("poller of feed old", gone, may_end=True)]
    listener = HttpListener(store, SystemClock(), loops=lambda: loops)
    try:
        async with listening(listener) as base:
            await gone
            assert await get(f"{base}/healthz") == (200, "ok\n")
            assert await store.get("http.health_heartbeat") is not None     # it wrote

            # The database refuses writes (as when its directory turns read-only).
            store._conn.execute("PRAGMA query_only = ON")
            await until(lambda: _status(base, 503), "503 for a read-only database")
            status, text = await get(f"{base}/healthz")
            assert status == 503
            assert text.startswith("database not writable: ")
            assert "readonly database" in text
            store._conn.execute("PRAGMA query_only = OFF")
            await until(lambda: _status(base, 200), "healthy again")

            sync.cancel()
            await until(lambda: _status(base, 503), "503 for a stopped sync loop")
            assert await get(f"{base}/healthz") == (503, "sync: stopped\n")
            loops[0] = Loop("sync", None)
            loops.append(Loop("delivery to !r:x", None))
            await until(lambda: _status(base, 503, "delivery to !r:x: not running"),
                        "a missing worker named")
    finally:
        sync.cancel()
        store.close()


async def _status(base: str, status: int, text: str | None = None) -> bool:
    got, body = await get(f"{base}/healthz")
    return got == status and (text is None or text in body)


# -- push: who may, what it costs --------------------------------------------------------


class Pushes:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.outcome: PushOutcome = "queued"

    def __call__(self, name: str) -> PushOutcome:
        self.names.append(name)
        return "unknown" if name == "nope" else self.outcome


async def test_push_refuses_a_missing_or_wrong_token_and_never_logs_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore.open(tmp_path)
    pushes = Pushes()
    listener = HttpListener(store, SystemClock(), loops=lambda: [], push=pushes,
                            push_token=TOKEN)
    caplog.set_level(logging.INFO)
    async with listening(listener) as base:
        url = f"{base}/feeds/actus/poll"
        status, body, headers = await post(url, None)
        assert (status, body) == (401, {"error": "a valid bearer token is needed"})
        assert headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in (TOKEN[:-1], TOKEN + "x", "", TOKEN.upper()):
            assert (await post(url, wrong))[0] == 401
        assert (await post(url, TOKEN, scheme="Basic"))[0] == 401
        assert (await post(f"{base}/feeds/nope/poll", "wrong"))[0] == 401   # before 404
        assert pushes.names == []
        refusals = [r.getMessage() for r in caplog.records if "refused a push" in r.message]
        # Logged once a minute at most (a flood of guesses is not a flood of lines).
        assert len(refusals) == 1
        assert "feed actus" in refusals[0] and "no bearer token" in refusals[0]

        assert await post(url) == (202, {"feed": "actus", "poll": "queued"}, _any())
        pushes.outcome = "joined"
        assert (await post(url))[:2] == (202, {"feed": "actus", "poll": "joined"})
        pushes.outcome = "stopped"
        assert (await post(url))[0] == 409
        assert (await post(f"{base}/feeds/nope/poll"))[:2] == (
            404, {"error": "no feed of that name"})
        # Not a feed's name: not even asked about, and not logged.
        assert (await post(f"{base}/feeds/%2E%2E%2Fetc/poll"))[0] == 404
        assert (await post(f"{base}/feeds/{'a' * 300}/poll"))[0] == 404
        assert pushes.names == ["actus", "actus", "actus", "nope"]
        assert (await get(url))[0] == 405
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert TOKEN not in text and TOKEN[:-1] not in text and TOKEN.upper() not in text
    assert "a" * 300 not in text
    store.close()


class _any(dict):   # noqa: N801 (a pattern, compared equal to any headers)
    def __eq__(self, other: object) -> bool:
        return True


async def test_push_bodies_are_bounded_in_size_and_time(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    pushes = Pushes()
    listener = HttpListener(store, SystemClock(), loops=lambda: [], push=pushes,
                            push_token=TOKEN, body_timeout=0.5)
    async with listening(listener) as base:
        url = f"{base}/feeds/actus/poll"
        assert (await post(url, data=b"x" * 100))[0] == 202          # small: ignored
        assert (await post(url, data=b"x" * 100_000))[0] == 413      # announced: not read

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 1000
        assert (await post(url, data=chunks()))[0] == 413            # chunked: cut short

        # A body announced and never sent does not hold the handler.
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /feeds/actus/poll HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{TOKEN}\r\nContent-Length: 100\r\n\r\nabc".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), BODY_TIMEOUT + 30)
        writer.close()
        assert status_line.split()[1] == b"408"
        assert pushes.names == ["actus"]
    store.close()


async def test_without_a_push_token_there_is_no_push(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    pushes = Pushes()
    listener = HttpListener(store, SystemClock(), loops=lambda: [], push=pushes)
    async with listening(listener) as base:
        assert (await post(f"{base}/feeds/actus/poll", ""))[0] == 404
        assert (await post(f"{base}/feeds/actus/poll"))[0] == 404
        assert (await get(f"{base}/metrics"))[0] == 404          # no metrics given
    assert pushes.names == []
    store.close()


# -- push: through the poller's own loop -------------------------------------------------


async def test_pushes_close_together_make_one_poll_through_the_feeds_own_loop(
        tmp_path: Path, feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_feed(feed_path, make_items(2))
    store = SqliteStore.open(tmp_path)
    feed = FeedConfig(name="actus", url=feed_server.url(feed_path), rooms=("!r:x",),
                      interval=3600)
    outcomes: list[str] = []
    async with Fetcher(allow_private_networks=True) as fetcher:
        poller = feed_poller(feed, store, fetcher, observe=outcomes.append, push_gap=1.0)
        polls = Polls(asyncio.Semaphore(1))
        polls.add(poller)
        task = asyncio.create_task(polls.run())
        try:
            await until(lambda: len(feed_server.requests(feed_path)) == 1, "the first poll")
            # Right after a scheduled poll, a push still polls at once.
            asked = [poller.poll_soon() for _ in range(5)]
            assert asked == [True, False, False, False, False]
            await until(lambda: len(feed_server.requests(feed_path)) == 2, "the push's poll")
            assert poller.poll_soon() is True
            await until(lambda: len(feed_server.requests(feed_path)) == 3, "a later push")
            first, second = feed_server.requests(feed_path)[1:]
            assert second.at - first.at >= 0.9      # one push's poll per gap, at most
            await asyncio.sleep(2.5)                # nothing more was asked
            assert len(feed_server.requests(feed_path)) == 3
            await until(lambda: len(outcomes) == 3, "the outcomes")
            assert outcomes == ["200", "304", "304"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    store.close()


# -- end to end --------------------------------------------------------------------------


async def test_a_push_brings_the_new_item_to_members_long_before_the_interval(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        run_bot: BotRunner, caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="push")
    items = make_items(2)
    feed_server.set_feed(feed_path, items[1:])
    port = free_port()
    data = bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        http={"listen": f"127.0.0.1:{port}", "push_token": "${PUSH_TOKEN}"},
        feeds=[{"name": "actus", "url": feed_server.url(feed_path), "rooms": [room],
                "interval": "1h", "backfill": 1}])
    config, _ = load_config(write_config(tmp_path / "c.yaml", data),
                            environ={**bot_environ(bot), "PUSH_TOKEN": TOKEN})
    caplog.set_level(logging.INFO)
    running = await run_bot(config)
    base = f"http://127.0.0.1:{port}"
    await alice.wait_for_messages(room, 1, sender=bot.user_id)     # the backfill
    await until(lambda: _status(base, 200), "a healthy bot", timeout=60)

    feed_server.set_feed(feed_path, items)      # the site publishes; its deploy step pushes
    assert (await post(f"{base}/feeds/actus/poll", "not-the-token"))[0] == 401
    assert (await post(f"{base}/feeds/other/poll"))[0] == 404
    pushed = time.monotonic()
    status, body, _ = await post(f"{base}/feeds/actus/poll")
    assert status == 202 and body["feed"] == "actus"
    seen = await alice.wait_for_messages(room, 2, sender=bot.user_id, timeout=120)
    assert seen[-1]["content"]["body"].splitlines()[0] == items[0].title
    assert time.monotonic() - pushed < 600      # the interval is an hour: it was the push
    assert TOKEN not in caplog.text and "not-the-token" not in caplog.text

    status, text = await get(f"{base}/metrics")
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    assert got[("newsbot_fetches_total", (("outcome", "200"),))] >= 2
    assert got[("newsbot_deliveries_total", (("outcome", "sent"),))] == 2
    assert got[("newsbot_delivery_delay_seconds_count", ())] == 2

    # Health follows the bot: its database read-only, then its sync loop stopped.
    app = running.app
    assert isinstance(app.store, SqliteStore)
    app.store._conn.execute("PRAGMA query_only = ON")
    await until(lambda: _status(base, 503, "database not writable"), "503, read-only")
    app.store._conn.execute("PRAGMA query_only = OFF")
    await until(lambda: _status(base, 200), "healthy again")
    assert app._sync_task is not None
    app._sync_task.cancel()
    await until(lambda: _status(base, 503, "sync: stopped"), "503, sync stopped")
    await running.stop()


# -- configuration -----------------------------------------------------------------------

BASE = """matrix: {homeserver: https://matrix.example.org, user_id: "@b:example.org",
         access_token: abcdefgh, device_id: D}
storage: {path: state}
feeds: [{name: actus, url: "https://example.org/feed", rooms: ["!r:example.org"]}]
"""


def config(extra: str, base_dir: Path, **environ: str) -> Any:
    return load_config_text(BASE + extra, base_dir=base_dir, environ=environ)


def problems(extra: str, base_dir: Path, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(extra, base_dir, **environ)
    return caught.value.problems


def test_the_push_token_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    loaded, warnings = config("http: {listen: 127.0.0.1:9180, push_token: '${PT}'}",
                              tmp_path, PT=TOKEN)
    assert (loaded.http.push_token, loaded.listen, warnings) == (TOKEN, ("127.0.0.1", 9180), [])

    secret = tmp_path / "push-token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    extra = "http: {listen: 127.0.0.1:9180, push_token_file: push-token}"
    assert config(extra, tmp_path)[0].http.push_token == TOKEN
    for mode in (0o640, 0o604):
        secret.chmod(mode)
        found = problems(extra, tmp_path)
        assert found == [f"<config>:5: http.push_token_file: {secret} may be read by other "
                         f"users (mode 0{mode:o}); chmod 600 it"]
        assert TOKEN not in found[0]


def test_a_push_token_must_be_long_one_word_and_given_once(tmp_path: Path) -> None:
    assert problems("http: {listen: 127.0.0.1:9180, push_token: abc123}", tmp_path) == [
        "<config>:5: http.push_token: is too short: use at least 16 characters (e.g. the "
        "output of `openssl rand -hex 32`)"]
    assert "contains whitespace" in problems(
        "http: {push_token: 'abcdefgh abcdefgh abcd'}", tmp_path)[0]
    (tmp_path / "t").write_text(TOKEN)
    (tmp_path / "t").chmod(0o600)
    assert problems(f"http: {{push_token: {TOKEN}, push_token_file: t}}", tmp_path) == [
        "<config>:5: http.push_token_file: set only one of push_token and push_token_file"]
    assert "cannot read" in problems("http: {push_token_file: missing}", tmp_path)[0]
    _, warnings = config(f"http: {{push_token: {TOKEN}}}", tmp_path)
    assert warnings == ["<config>:5: http.push_token: set, but http.listen is not: push is off"]


def test_metrics_listen_is_the_former_name_of_http_listen(tmp_path: Path) -> None:
    assert config("metrics: {listen: 127.0.0.1:9181}", tmp_path)[0].listen == (
        "127.0.0.1", 9181)
    assert config("http: {listen: 127.0.0.1:9181}\nmetrics: {listen: 127.0.0.1:9181}",
                  tmp_path)[0].listen == ("127.0.0.1", 9181)
    assert problems("http: {listen: 127.0.0.1:9180}\nmetrics: {listen: 127.0.0.1:9181}",
                    tmp_path) == ["<config>:6: metrics.listen: differs from http.listen: "
                                  "there is one listener; keep http.listen only"]
    assert config("", tmp_path)[0].listen is None

