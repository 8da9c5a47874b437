"""FeedPoller against misbehaving feed servers and the SSRF policy (issue 3).

The real poller, a real Store in tmp_path, a real Fetcher and real aiohttp servers on
127.0.0.1 only. tests/test_fetch.py proves what the fetcher raises; these prove what the
poller makes of it: the delay it returns, the feed state it stores, the one WARNING it
logs, the outbox, and that one failing feed never holds up another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from email.utils import format_datetime
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from aiohttp import web

from bot.config import FeedConfig, FetchConfig
from bot.feeds.fetch import Fetcher
from bot.feeds.netguard import AddressPolicy, IPAddress, default_policy
from bot.poller import FeedPoller
from bot.store import SqliteStore, Store
from bot.store.sqlite import FeedState
from tests.support import FeedServer, free_port, make_items
from tests.support.clock import FakeClock
from tests.support.feedserver import CONTENT_TYPES
from tests.support.pollers import feed_poller

T = TypeVar("T")

POLLER_LOGGER = "bot.poller"
START = 1_750_000_000.0
PRIVATE_HINT = "set fetch.allow_private_networks to allow"


@dataclass
class Rig:
    """One bot's worth of polling parts: a store, a fetcher, a clock, an enqueue log."""

    store: Store
    fetcher: Fetcher
    fetch_config: FetchConfig
    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    enqueued: list[list[str]] = field(default_factory=list)

    async def poller(self, name: str, url: str, *, interval: float = 60.0,
               rooms: tuple[str, ...] | None = None) -> FeedPoller:
        feed = FeedConfig(name=name, url=url, rooms=rooms or (f"!{name}:test",),
                          interval=interval)
        # What a poller does first (Polls starts it); a changed URL replaces the stored one.
        await self.store.ensure_feed(name, url)
        return feed_poller(feed, self.store, self.fetcher, clock=self.clock,
                           fetch_config=self.fetch_config, language="en",
                           on_enqueued=self.enqueued.append, seed=3)

    async def state(self, name: str) -> FeedState:
        state = await self.store.feed_state(name)
        assert state is not None
        return state


def make_fetcher(config: FetchConfig, policy: AddressPolicy | None = None) -> Fetcher:
    # As bot.app builds it from the configuration.
    return Fetcher(allow_private_networks=config.allow_private_networks,
                   max_body_bytes=config.max_body_bytes, total_timeout=config.timeout,
                   connect_timeout=config.connect_timeout, _address_policy=policy)


# Small timeouts keep the file fast; the backoff cap is small enough to reach.
LOCAL = FetchConfig(allow_private_networks=True, timeout=1.5, connect_timeout=0.5,
                    max_backoff=300.0)
GUARDED = replace(LOCAL, allow_private_networks=False)


@asynccontextmanager
async def open_rig(tmp_path: Path, config: FetchConfig,
                   policy: AddressPolicy | None = None) -> AsyncIterator[Rig]:
    store = SqliteStore.open(tmp_path / f"state-{uuid.uuid4().hex[:6]}")
    try:
        async with make_fetcher(config, policy) as fetcher:
            yield Rig(store=store, fetcher=fetcher, fetch_config=config)
    finally:
        store.close()


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Private networks allowed: the feed servers here are all on loopback."""
    async with open_rig(tmp_path, LOCAL) as r:
        yield r


@pytest_asyncio.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Rig]:
    """The default policy: loopback and private networks refused."""
    async with open_rig(tmp_path, GUARDED) as r:
        yield r


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


def warnings_for(caplog: pytest.LogCaptureFixture, feed: str) -> list[str]:
    """The poller's WARNING lines about ``feed``, in order."""
    return [r.getMessage() for r in caplog.records
            if r.name == POLLER_LOGGER and r.levelno == logging.WARNING
            and r.getMessage().startswith((f"feed {feed}:", f"feed {feed} moved "))]


def assert_no_crash_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records
           if r.levelno >= logging.ERROR or (r.exc_info and r.name.startswith("bot"))]
    assert not bad, [r.getMessage() for r in bad]


async def assert_failed(rig: Rig, name: str, delay: float, *, failures: int, error: str) -> None:
    """The stored state after a failed poll; ``error`` is a substring of last_error."""
    state = await rig.state(name)
    assert state.failures == failures
    assert state.last_error is not None and error in state.last_error, state.last_error
    assert state.next_fetch == pytest.approx(rig.clock.now() + delay)
    assert state.last_success is None or state.last_success < rig.clock.now()


def failure_line(feed: str, error: str, failures: int, delay: float) -> str:
    return f"feed {feed}: {error} (failure {failures} in a row; next try in {delay:.0f} s)"


async def timed(coro: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    value = await coro
    return value, time.monotonic() - start


# --- hostile servers ------------------------------------------------------------------


def trickle_handler() -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """A 200 whose body comes one byte a second and never ends in time."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/rss+xml"})
        await resp.prepare(request)
        try:
            for _ in range(8):  # ends by itself even if nobody hangs up
                await resp.write(b"<")
                await asyncio.sleep(1.0)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    return handler


def redirect_handler(status: int, location: str) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: new SYNs are dropped,
    so a connect hangs until the connect timeout (Linux, tcp_abort_on_overflow=0)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        time.sleep(0.05)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 signed by nobody we trust."""
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    try:
        _write_self_signed(cert_file, key_file)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
             "-subj", "/CN=newsbot test feed server",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key_file), "-out", str(cert_file)],
            check=True, capture_output=True, timeout=30)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def _write_self_signed(cert_file: Path, key_file: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newsbot test feed server")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


@dataclass
class TLSServer:
    port: int
    hits: list[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/feed"


@pytest_asyncio.fixture(scope="module")
async def tls_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TLSServer]:
    """A feed behind HTTPS with a self-signed certificate."""
    context = self_signed_context(tmp_path_factory.mktemp("tls"))
    hits: list[str] = []
    body = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'

    async def feed(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=body, content_type="application/rss+xml")

    app = web.Application()
    app.router.add_get("/feed", feed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield TLSServer(port=int(runner.addresses[0][1]), hits=hits)
    finally:
        await runner.cleanup()


# --- timeouts, refused, DNS, TLS: one warning, backoff, nothing enqueued ----------------


async def test_trickle_stopped_by_total_deadline(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    feed_server.set_handler(feed_path, trickle_handler())
    poller = await rig.poller("slow", feed_server.url(feed_path), interval=60)
    delay, elapsed = await timed(poller.poll_once())
    # The 1.5 s total deadline, not the 8 s body (generous for a busy machine: the
    # message below names the deadline that fired).
    assert 1.4 < elapsed < 6, elapsed
    assert delay == 60  # the first failure waits one interval
    assert warnings_for(caplog, "slow") == [
        failure_line("slow", "timed out after 1.5 s", 1, 60)]
    await assert_failed(rig, "slow", delay, failures=1, error="timed out after 1.5 s")
    assert rig.enqueued == [] and await rig.store.pending_count() == 0
    assert_no_crash_logged(caplog)


async def test_connect_timeout(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with unanswered_port() as port:
        poller = await rig.poller("blackhole", f"http://127.0.0.1:{port}/feed", interval=60)
        delay, elapsed = await timed(poller.poll_once())
    # connect_timeout 0.5 s, before the 1.5 s deadline: the message says which fired,
    # so the upper bound is only a generous one for a busy machine.
    assert 0.4 < elapsed < 6, elapsed
    error = "connection to 127.0.0.1 timed out after 0.5 s"
    assert warnings_for(caplog, "blackhole") == [failure_line("blackhole", error, 1, 60)]
    await assert_failed(rig, "blackhole", delay, failures=1, error=error)
    assert_no_crash_logged(caplog)


async def test_connection_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    poller = await rig.poller("closed", f"http://127.0.0.1:{free_port()}/feed", interval=60)
    delay = await poller.poll_once()
    assert delay == 60
    assert warnings_for(caplog, "closed") == [
        failure_line("closed", "connection refused", 1, 60)]
    await assert_failed(rig, "closed", delay, failures=1, error="connection refused")
    assert_no_crash_logged(caplog)


async def test_dns_failure(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    host = f"newsbot-{uuid.uuid4().hex[:8]}.invalid"
    poller = await rig.poller("nxdomain", f"http://{host}/feed", interval=60)
    delay = await poller.poll_once()
    error = f"DNS lookup failed for {host}"
    assert warnings_for(caplog, "nxdomain") == [failure_line("nxdomain", error, 1, 60)]
    await assert_failed(rig, "nxdomain", delay, failures=1, error=error)
    assert_no_crash_logged(caplog)


async def test_self_signed_certificate(
    rig: Rig, tls_server: TLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    poller = await rig.poller("selfsigned", tls_server.url, interval=60)
    delay = await poller.poll_once()
    [line] = warnings_for(caplog, "selfsigned")
    assert line.startswith("feed selfsigned: TLS error: certificate of 127.0.0.1 rejected: ")
    assert "self-signed certificate" in line or "self signed certificate" in line, line
    assert line.endswith("(failure 1 in a row; next try in 60 s)")
    await assert_failed(rig, "selfsigned", delay, failures=1, error="TLS error: certificate")
    assert tls_server.hits == []  # the handshake failed: no HTTP request was made
    assert_no_crash_logged(caplog)


async def test_https_to_plain_http_server(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    feed_server.set_feed(feed_path, make_items(2))
    url = feed_server.url(feed_path).replace("http://", "https://")
    delay = await (await rig.poller("plainport", url, interval=60)).poll_once()
    [line] = warnings_for(caplog, "plainport")
    assert line.startswith("feed plainport: TLS error: ")
    await assert_failed(rig, "plainport", delay, failures=1, error="TLS error: ")
    assert feed_server.requests(feed_path) == []
    assert_no_crash_logged(caplog)


# --- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "relative"), [(301, False), (308, True)])
async def test_permanent_redirect_updates_stored_url(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture,
    status: int, relative: bool,
) -> None:
    old, new = feed_path + "/old", feed_path + "/new"
    feed_server.set_handler(old, redirect_handler(
        status, "new" if relative else feed_server.url(new)))
    items = make_items(3)
    feed_server.set_feed(new, items)
    poller = await rig.poller("moved", feed_server.url(old), interval=60)

    delay = await poller.poll_once()
    assert 54 <= delay <= 60  # a success: the jittered interval
    state = await rig.state("moved")
    assert state.url == feed_server.url(new)
    assert state.configured_url == feed_server.url(old)
    assert (state.failures, state.last_error, state.initialized) == (0, None, True)
    assert warnings_for(caplog, "moved") == [
        f"feed moved moved permanently to {feed_server.url(new)}; "
        "fetching from there from now on"]

    # The next polls go straight to the new URL, and say nothing more about the move.
    for n in (4, 5):
        rig.clock.advance(delay)
        feed_server.set_feed(new, make_items(n))
        delay = await poller.poll_once()
    assert [r.status for r in feed_server.requests(old)] == [status]
    assert [r.status for r in feed_server.requests(new)] == [200, 200, 200]
    assert len(warnings_for(caplog, "moved")) == 1
    assert (await rig.state("moved")).url == feed_server.url(new)
    assert await rig.store.pending_count("!moved:test") == 2  # items 4 and 5, fetched from there
    assert_no_crash_logged(caplog)


@pytest.mark.parametrize("revalidates", [True, False])
async def test_permanent_redirect_to_same_content_updates_stored_url(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture,
    revalidates: bool,
) -> None:
    """The usual move (http to https, a new path): the same document at the new URL.

    With validators the new URL answers 304, without them it sends the very same body;
    either way the poll is "not modified", and the move must still be recorded.
    """
    old, new = feed_path + "/old", feed_path + "/new"
    items = make_items(3)
    body = feed_server.set_feed(old, items)
    poller = await rig.poller("samebody", feed_server.url(old), interval=60)
    await poller.poll_once()
    assert (await rig.state("samebody")).url == feed_server.url(old)

    feed_server.set_handler(old, redirect_handler(301, feed_server.url(new)))
    if revalidates:
        # The very same bytes, hence the same ETag: the conditional GET gets a 304.
        feed_server.set_raw(new, body, content_type=CONTENT_TYPES["rss"])
    else:
        async def no_validators(request: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPES["rss"]})
        feed_server.set_handler(new, no_validators)
    rig.clock.advance(60)
    delay = await poller.poll_once()
    assert 54 <= delay <= 60
    assert [r.status for r in feed_server.requests(new)] == [304 if revalidates else 200]
    assert (await rig.state("samebody")).url == feed_server.url(new)
    assert warnings_for(caplog, "samebody") == [
        f"feed samebody moved permanently to {feed_server.url(new)}; "
        "fetching from there from now on"]

    rig.clock.advance(60)
    await poller.poll_once()
    assert len(feed_server.requests(old)) == 2  # the first poll and the redirect, no more
    assert len(feed_server.requests(new)) == 2
    assert len(warnings_for(caplog, "samebody")) == 1
    assert_no_crash_logged(caplog)


@pytest.mark.parametrize("status", [302, 307])
async def test_temporary_redirect_followed_url_kept(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    old, new = feed_path + "/old", feed_path + "/elsewhere"
    feed_server.set_handler(old, redirect_handler(status, feed_server.url(new)))
    feed_server.set_feed(new, make_items(3))
    poller = await rig.poller("visiting", feed_server.url(old), interval=60)
    delay = await poller.poll_once()
    assert 54 <= delay <= 60
    rig.clock.advance(delay)
    feed_server.set_feed(new, make_items(4))
    await poller.poll_once()

    state = await rig.state("visiting")
    assert state.url == feed_server.url(old)
    assert (state.failures, state.last_error) == (0, None)
    assert [r.status for r in feed_server.requests(old)] == [status, status]
    assert [r.status for r in feed_server.requests(new)] == [200, 200]
    assert await rig.store.pending_count("!visiting:test") == 1  # item 4, via the redirect
    assert warnings_for(caplog, "visiting") == []
    assert_no_crash_logged(caplog)


async def test_redirect_loop_stopped(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = feed_path + "/a", feed_path + "/b"
    feed_server.set_handler(a, redirect_handler(301, feed_server.url(b)))
    feed_server.set_handler(b, redirect_handler(308, feed_server.url(a)))
    poller = await rig.poller("loop", feed_server.url(a), interval=60)
    delay = await poller.poll_once()
    error = f"redirect loop at {feed_server.url(a)}"
    assert warnings_for(caplog, "loop") == [failure_line("loop", error, 1, 60)]
    await assert_failed(rig, "loop", delay, failures=1, error=error)
    assert (await rig.state("loop")).url == feed_server.url(a)  # a loop of 301s moves nothing
    assert (len(feed_server.requests(a)), len(feed_server.requests(b))) == (1, 1)
    assert_no_crash_logged(caplog)


# --- HTTP errors: capped exponential backoff, reset by a success -----------------------


HTTP_ERRORS = {404: "HTTP 404 Not Found", 500: "HTTP 500 Internal Server Error",
               503: "HTTP 503 Service Unavailable"}


@pytest.mark.parametrize("status", sorted(HTTP_ERRORS))
async def test_http_errors_back_off_capped_and_reset(
    tmp_path: Path, feed_server: FeedServer, feed_path: str,
    caplog: pytest.LogCaptureFixture, status: int,
) -> None:
    config = replace(LOCAL, max_backoff=60.0)
    async with open_rig(tmp_path, config) as rig:
        poller = await rig.poller("broken", feed_server.url(feed_path), interval=10)
        feed_server.set_raw(feed_path, b"nope", status=status, content_type="text/plain")
        delays = []
        for n in range(1, 7):
            delay = await poller.poll_once()
            delays.append(delay)
            assert (await rig.state("broken")).failures == n
            assert (await rig.state("broken")).next_fetch == pytest.approx(rig.clock.now() + delay)
            rig.clock.advance(delay)
        assert delays == [10, 20, 40, 60, 60, 60]  # doubling, capped at fetch.max_backoff
        lines = warnings_for(caplog, "broken")
        assert len(lines) == 6
        assert lines == [failure_line("broken", HTTP_ERRORS[status], n, d)
                         for n, d in enumerate(delays, start=1)]
        assert (await rig.state("broken")).last_error == HTTP_ERRORS[status]

        feed_server.set_feed(feed_path, make_items(2))
        delay = await poller.poll_once()
        assert 9 <= delay <= 10  # back to the normal (jittered) interval
        state = await rig.state("broken")
        assert (state.failures, state.last_error, state.last_success) == (
            0, None, rig.clock.now())

        rig.clock.advance(delay)
        feed_server.set_raw(feed_path, b"nope", status=status, content_type="text/plain")
        assert await poller.poll_once() == 10  # the count starts again from one
        assert (await rig.state("broken")).failures == 1
        assert len(warnings_for(caplog, "broken")) == 7
        assert_no_crash_logged(caplog)


async def test_backoff_never_below_interval(
    tmp_path: Path, feed_server: FeedServer, feed_path: str
) -> None:
    config = replace(LOCAL, max_backoff=60.0)
    async with open_rig(tmp_path, config) as rig:
        feed_server.set_raw(feed_path, b"nope", status=500, content_type="text/plain")
        poller = await rig.poller("rare", feed_server.url(feed_path), interval=120)
        assert [await poller.poll_once() for _ in range(3)] == [120, 120, 120]


def _http_date(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return format_datetime(when, usegmt=True)


@pytest.mark.parametrize(("status", "retry_after", "low", "high"), [
    (429, lambda: "120", 120, 120),
    (503, lambda: "120", 120, 120),
    (429, lambda: _http_date(200), 198, 201),
    (503, lambda: _http_date(200), 198, 201),
    (429, lambda: "86400", 300, 300),          # capped at fetch.max_backoff
    (503, lambda: _http_date(86400), 300, 300),
    (429, lambda: "0", 10, 10),                # never sooner than the backoff
    (429, lambda: "soon", 10, 10),             # unparseable: ignored
], ids=["429-seconds", "503-seconds", "429-date", "503-date", "429-capped", "503-date-capped",
        "429-zero", "429-garbage"])
async def test_retry_after_honoured(
    rig: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture,
    status: int, retry_after: Callable[[], str], low: float, high: float,
) -> None:
    feed_server.set_raw(feed_path, b"slow down", status=status, content_type="text/plain",
                        headers={"Retry-After": retry_after()})
    poller = await rig.poller("busy", feed_server.url(feed_path), interval=10)
    delay = await poller.poll_once()
    assert low <= delay <= high, delay
    [line] = warnings_for(caplog, "busy")
    assert line.startswith(f"feed busy: HTTP {status} ")
    assert line.endswith(f"(failure 1 in a row; next try in {delay:.0f} s)")
    await assert_failed(rig, "busy", delay, failures=1, error=f"HTTP {status}")
    assert_no_crash_logged(caplog)


# --- SSRF at the poller level -----------------------------------------------------------


@pytest.mark.parametrize(("host", "why"), [
    ("localhost", "localhost resolves to "),  # a name, checked after resolution
    ("127.0.0.1", ": 127.0.0.1 is a loopback address;"),
    ("[::1]", ": ::1 is a loopback address;"),
    ("[::ffff:127.0.0.1]", "an IPv6 address embedding 127.0.0.1, a loopback address;"),
])
async def test_loopback_feed_refused_without_a_request(
    guarded: Rig, feed_server: FeedServer, feed_path: str, caplog: pytest.LogCaptureFixture,
    host: str, why: str,
) -> None:
    feed_server.set_feed(feed_path, make_items(3))
    url = f"http://{host}:{feed_server.port}{feed_path}"
    poller = await guarded.poller("inside", url, interval=60)
    delay = await poller.poll_once()
    [line] = warnings_for(caplog, "inside")
    assert line.startswith("feed inside: refused http://"), line
    assert why in line and "loopback address" in line, line
    assert f"{PRIVATE_HINT} (failure 1 in a row; next try in 60 s)" in line
    await assert_failed(guarded, "inside", delay, failures=1, error=PRIVATE_HINT)
    assert feed_server.requests(feed_path) == []  # the server saw nothing
    assert guarded.enqueued == []
    assert_no_crash_logged(caplog)


@pytest.mark.parametrize("config", [LOCAL, GUARDED], ids=["private-allowed", "default"])
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/feed", "file:///etc/passwd",
                                 "gopher://example.org/feed"])
async def test_other_schemes_always_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, config: FetchConfig, url: str
) -> None:
    scheme = url.split(":")[0]
    async with open_rig(tmp_path, config) as rig:
        delay = await (await rig.poller("scheme", url, interval=60)).poll_once()
        error = f"refused {url}: scheme {scheme} is not allowed, only http and https"
        assert warnings_for(caplog, "scheme") == [failure_line("scheme", error, 1, 60)]
        await assert_failed(rig, "scheme", delay, failures=1, error=error)
    assert_no_crash_logged(caplog)


def only_127_0_0_1_is_public(host: str, ip: IPAddress) -> str | None:
    # Test seam (as in test_fetch): the literal 127.0.0.1 stands in for a public server.
    return None if host == "127.0.0.1" else default_policy(host, ip)


@pytest.mark.parametrize("status", [301, 302])
async def test_redirect_to_private_refused_and_url_kept(
    tmp_path: Path, feed_server: FeedServer, feed_path: str,
    caplog: pytest.LogCaptureFixture, status: int,
) -> None:
    old, target = feed_path + "/public", feed_path + "/private"
    private_url = f"http://localhost:{feed_server.port}{target}"
    feed_server.set_handler(old, redirect_handler(status, private_url))
    feed_server.set_feed(target, make_items(3))
    async with open_rig(tmp_path, GUARDED, only_127_0_0_1_is_public) as rig:
        delay = await (await rig.poller("rebound", feed_server.url(old), interval=60)).poll_once()
        [line] = warnings_for(caplog, "rebound")
        assert line.startswith(f"feed rebound: refused {private_url}: localhost resolves to ")
        assert PRIVATE_HINT in line
        await assert_failed(rig, "rebound", delay, failures=1, error=PRIVATE_HINT)
        assert (await rig.state("rebound")).url == feed_server.url(old)  # a 301 there moves nothing
    assert [r.status for r in feed_server.requests(old)] == [status]
    assert feed_server.requests(target) == []
    assert_no_crash_logged(caplog)


# --- one failing feed never affects another -----------------------------------------------


async def test_failing_feed_never_affects_another(
    tmp_path: Path, feed_server: FeedServer, feed_path: str, tls_server: TLSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    healthy_path, bad = feed_path + "/healthy", feed_path + "/bad"
    feed_server.set_handler(bad + "/trickle", trickle_handler())
    feed_server.set_handler(bad + "/loop-a", redirect_handler(301, bad + "/loop-b"))
    feed_server.set_handler(bad + "/loop-b", redirect_handler(301, bad + "/loop-a"))
    for status in (404, 500, 503):
        feed_server.set_raw(f"{bad}/{status}", b"nope", status=status, content_type="text/plain")
    feed_server.set_raw(bad + "/429", b"later", status=429, content_type="text/plain",
                        headers={"Retry-After": "120"})
    feed_server.set_feed(bad + "/private", make_items(2))

    with unanswered_port() as blackhole:
        failing: list[tuple[str, str]] = [
            (feed_server.url(bad + "/trickle"), "timed out after 1.5 s"),
            (f"http://127.0.0.1:{blackhole}/feed", "timed out after 0.5 s"),
            (f"http://127.0.0.1:{free_port()}/feed", "connection refused"),
            (f"http://newsbot-{uuid.uuid4().hex[:8]}.invalid/feed", "DNS lookup failed"),
            (tls_server.url, "TLS error: certificate of 127.0.0.1 rejected"),
            (feed_server.url(bad + "/loop-a"), "redirect loop at"),
            (feed_server.url(bad + "/404"), "HTTP 404"),
            (feed_server.url(bad + "/500"), "HTTP 500"),
            (feed_server.url(bad + "/503"), "HTTP 503"),
            (feed_server.url(bad + "/429"), "HTTP 429"),
            (f"http://localhost:{feed_server.port}{bad}/private", "a loopback address"),
            (f"http://127.0.0.2:{feed_server.port}{bad}/private", "a loopback address"),
            ("ftp://127.0.0.1/feed", "scheme ftp is not allowed"),
        ]
        # One fetcher and one store for both, the default policy but for the seam that
        # lets the healthy feed's 127.0.0.1 stand in for a public server.
        async with open_rig(tmp_path, GUARDED, only_127_0_0_1_is_public) as rig:
            items = make_items(1, prefix="healthy")
            feed_server.set_feed(healthy_path, items)
            healthy = await rig.poller("healthy", feed_server.url(healthy_path), interval=60)
            await healthy.poll_once()  # first sight: marks item 1 as seen, posts nothing

            for round_no, (url, error) in enumerate(failing, start=1):
                caplog.clear()
                rig.enqueued.clear()
                items = make_items(round_no + 1, prefix="healthy")
                feed_server.set_feed(healthy_path, items)
                broken = await rig.poller("broken", url, interval=60)
                rig.clock.advance(60)
                broken_poll = asyncio.create_task(broken.poll_once())
                good_delay = await healthy.poll_once()
                # Not held up by the other: the healthy poll ends while the trickling
                # one is still waiting for its 1.5 s deadline (an order, not a speed).
                if error == "timed out after 1.5 s":
                    assert not broken_poll.done(), url
                await broken_poll

                assert [line for line in warnings_for(caplog, "broken")
                        if error in line] == warnings_for(caplog, "broken"), url
                assert len(warnings_for(caplog, "broken")) == 1, url
                # Each round is a new URL, and a new URL starts with a clean record.
                assert (await rig.state("broken")).failures == 1, url
                assert warnings_for(caplog, "healthy") == [], url
                assert rig.enqueued == [["!healthy:test"]], url
                assert 54 <= good_delay <= 60, url
                state = await rig.state("healthy")
                assert (state.failures, state.last_error) == (0, None), url
                assert await rig.store.pending_count("!healthy:test") == round_no, url
            assert await rig.store.pending_count("!broken:test") == 0
            assert [r.status for r in feed_server.requests(bad + "/private")] == []
    assert_no_crash_logged(caplog)
