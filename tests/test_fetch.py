"""bot.feeds.fetch and bot.feeds.netguard, against real aiohttp servers on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from bot import USER_AGENT
from bot.errors import BlockedURLError, FetchError
from bot.feeds.fetch import Fetcher, _GuardedResolver, parse_retry_after
from bot.feeds.netguard import IPAddress, blocked_reason, default_policy, host_problem

FEED = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
MiB = 1024 * 1024


def _gzip_bomb(decoded_mib: int) -> bytes:
    """A gzip stream of ``decoded_mib`` MiB of zeros, about 1 KiB per MiB."""
    zeros = bytes(MiB)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the compressor starts afresh, so every later MiB compresses
    # to the same bytes: repeat them instead of deflating a GiB for each test run.
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    return first + block * (decoded_mib - 1)  # no trailer: the client never gets there


class FeedServer:
    """Routes for every scenario; records the requests it received."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, dict[str, str], int | None]] = []
        self.app = web.Application()
        self.app.middlewares.append(self._record)
        r = self.app.router
        r.add_get("/feed", self.feed)
        r.add_get("/etag", self.etag)
        r.add_get("/lastmod", self.lastmod)
        r.add_get("/gzip", self.gzipped)
        r.add_get("/bomb", self.bomb)
        r.add_get("/big", self.big)
        r.add_get("/big-chunked", self.big_chunked)
        r.add_get("/trickle", self.trickle)
        r.add_get("/status/{code}", self.status)
        r.add_get("/retry-after", self.retry_after)
        r.add_get("/redirect/{code}", self.redirect)
        r.add_get("/chain/{n}", self.chain)
        r.add_get("/slow-chain/{n}", self.slow_chain)
        r.add_get("/slow-redirect", self.slow_redirect)
        r.add_get("/loop/{side}", self.loop)
        self.server = TestServer(self.app, host="127.0.0.1", port=0)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.hits]

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.hits.append((request.path_qs, dict(request.headers), peer[1] if peer else None))
        return await handler(request)

    async def feed(self, request: web.Request) -> web.Response:
        return web.Response(body=FEED, content_type="application/rss+xml")

    async def etag(self, request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=FEED, headers={"ETag": '"v1"'},
                            content_type="application/rss+xml")

    async def lastmod(self, request: web.Request) -> web.Response:
        stamp = "Tue, 05 Mar 2024 08:30:00 GMT"
        if request.headers.get("If-Modified-Since") == stamp:
            return web.Response(status=304)  # no validator repeated: the client keeps its own
        return web.Response(body=FEED, headers={"Last-Modified": stamp})

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(FEED * 100),
                            headers={"Content-Encoding": "gzip",
                                     "Content-Type": "application/rss+xml"})

    async def bomb(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Encoding": "gzip",
                                           "Content-Type": "application/rss+xml"})
        await resp.prepare(request)
        payload = _gzip_bomb(1024)  # 1 GiB once inflated, ~1 MiB on the wire
        try:
            for start in range(0, len(payload), 16 * 1024):
                await resp.write(payload[start:start + 16 * 1024])
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return resp

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (6 * MiB))

    async def big_chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(12):
                await resp.write(b"y" * (MiB // 2))
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(100):  # ends by itself even if nobody hangs up
                await resp.write(b"<")
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def retry_after(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.query["status"]),
                            headers={"Retry-After": request.query["value"]})

    async def redirect(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"Location": request.query["to"]})

    async def chain(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return await self.feed(request)
        return web.Response(status=302, headers={"Location": f"/chain/{n - 1}"})

    async def slow_chain(self, request: web.Request) -> web.Response:
        # Each hop well within a deadline of 1.5 s, all of them together beyond it.
        await asyncio.sleep(0.6)
        n = int(request.match_info["n"])
        if n == 0:
            return await self.feed(request)
        return web.Response(status=302, headers={"Location": f"/slow-chain/{n - 1}"})

    async def slow_redirect(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["wait"]))
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def loop(self, request: web.Request) -> web.Response:
        other = "b" if request.match_info["side"] == "a" else "a"
        return web.Response(status=301, headers={"Location": f"/loop/{other}"})


@pytest_asyncio.fixture(scope="module")
async def srv() -> AsyncIterator[FeedServer]:
    server = FeedServer()
    await server.server.start_server()
    yield server
    await server.server.close()


@pytest_asyncio.fixture
async def local() -> AsyncIterator[Fetcher]:
    """A fetcher allowed to reach the loopback test server."""
    async with Fetcher(allow_private_networks=True) as fetcher:
        yield fetcher


@pytest_asyncio.fixture
async def guarded() -> AsyncIterator[Fetcher]:
    """A fetcher with the default policy."""
    async with Fetcher() as fetcher:
        yield fetcher


async def fetch_error(fetcher: Fetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(url)
    assert not isinstance(info.value, aiohttp.ClientError)
    assert "\n" not in str(info.value)
    return info.value


# --- conditional GET, encodings, caps, timeouts ---------------------------------------


async def test_etag_then_304_on_one_connection(srv: FeedServer, local: Fetcher) -> None:
    first = await local.fetch(srv.url("/etag"))
    assert (first.status, first.body, first.etag) == (200, FEED, '"v1"')
    assert first.content_type == "application/rss+xml"
    assert first.final_url == srv.url("/etag") and first.permanent_url is None
    second = await local.fetch(srv.url("/etag"), etag=first.etag)
    assert (second.status, second.body, second.etag) == (304, None, '"v1"')
    (_, h1, port1), (_, h2, port2) = srv.hits[-2:]
    assert "If-None-Match" not in h1 and h2["If-None-Match"] == '"v1"'
    assert h1["User-Agent"] == USER_AGENT
    assert h1["Accept-Encoding"] == "gzip, deflate"
    assert port1 == port2  # the same kept-alive connection: one shared session


async def test_last_modified(srv: FeedServer, local: Fetcher) -> None:
    first = await local.fetch(srv.url("/lastmod"))
    assert (first.status, first.last_modified) == (200, "Tue, 05 Mar 2024 08:30:00 GMT")
    second = await local.fetch(srv.url("/lastmod"), last_modified=first.last_modified)
    assert (second.status, second.body) == (304, None)
    assert second.last_modified == first.last_modified  # kept when the 304 omits it


async def test_gzip_body_is_decoded(srv: FeedServer, local: Fetcher) -> None:
    result = await local.fetch(srv.url("/gzip"))
    assert result.body == FEED * 100


async def test_gzip_bomb_stops_at_cap_in_small_memory(srv: FeedServer, local: Fetcher) -> None:
    tracemalloc.start()
    try:
        error = await fetch_error(local, srv.url("/bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(error) == "body larger than 5 MiB cap"
    assert error.status is None
    assert peak < 40 * MiB, f"peak {peak / MiB:.0f} MiB while reading a 1 GiB bomb"


async def test_plain_body_over_cap(srv: FeedServer, local: Fetcher) -> None:
    assert str(await fetch_error(local, srv.url("/big"))) == "body larger than 5 MiB cap"
    # Without Content-Length the cap is enforced while streaming.
    assert str(await fetch_error(local, srv.url("/big-chunked"))) == "body larger than 5 MiB cap"


async def test_small_cap_message(srv: FeedServer) -> None:
    async with Fetcher(allow_private_networks=True, max_body_bytes=50) as fetcher:
        assert str(await fetch_error(fetcher, srv.url("/feed"))) == "body larger than 50 bytes cap"


async def test_trickle_stopped_by_total_deadline(srv: FeedServer) -> None:
    async with Fetcher(allow_private_networks=True, total_timeout=1.5) as fetcher:
        start = time.monotonic()
        error = await fetch_error(fetcher, srv.url("/trickle"))
        elapsed = time.monotonic() - start
    assert str(error) == "timed out after 1.5 s"
    # Not before the deadline; the upper bound only needs to be well below the 20 s
    # body, with room for a busy machine (the message already names the deadline).
    assert 1.4 < elapsed < 10


async def test_one_deadline_across_redirects(srv: FeedServer) -> None:
    """The deadline is the whole fetch's, not each request's: three hops of 0.6 s each
    (then the feed) stop at 1.5 s, and a redirect to a trickle too."""
    async with Fetcher(allow_private_networks=True, total_timeout=1.5) as fetcher:
        for path in ("/slow-chain/3", "/redirect/302?to=/trickle"):
            start = time.monotonic()
            error = await fetch_error(fetcher, srv.url(path))
            elapsed = time.monotonic() - start
            assert str(error) == "timed out after 1.5 s", path
            assert 1.4 < elapsed < 10, (path, elapsed)


async def test_redirect_hop_gets_what_is_left_of_the_deadline(srv: FeedServer) -> None:
    # A first hop of 1.8 s of a 2 s deadline, then a body that trickles for 20 s: the
    # second request has 0.2 s left, not 2 s afresh (which would end at 3.8 s).
    async with Fetcher(allow_private_networks=True, total_timeout=2) as fetcher:
        start = time.monotonic()
        error = await fetch_error(fetcher, srv.url("/slow-redirect?wait=1.8&to=/trickle"))
        elapsed = time.monotonic() - start
    assert str(error) == "timed out after 2 s"
    assert 1.9 < elapsed < 3.3, elapsed


async def test_connection_refused(local: Fetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Closed without listen(): nothing accepts on that port now.
    assert str(await fetch_error(local, f"http://127.0.0.1:{port}/")) == "connection refused"


async def test_dns_failure(local: Fetcher) -> None:
    error = await fetch_error(local, "http://no-such-host.invalid/feed")
    assert str(error) == "DNS lookup failed for no-such-host.invalid"


async def test_tls_error(srv: FeedServer, local: Fetcher) -> None:
    # https to a plain-HTTP server: the handshake fails.
    error = await fetch_error(local, f"https://127.0.0.1:{srv.port}/feed")
    assert str(error).startswith("TLS error: ")


# --- redirects ------------------------------------------------------------------------


async def test_301_sets_permanent_url(srv: FeedServer, local: Fetcher) -> None:
    result = await local.fetch(srv.url("/redirect/301?to=/feed"))
    assert result.body == FEED
    assert result.final_url == result.permanent_url == srv.url("/feed")


async def test_308_chain_is_permanent(srv: FeedServer, local: Fetcher) -> None:
    inner = "/redirect/301?to=/feed"
    result = await local.fetch(srv.url(f"/redirect/308?to={inner.replace('?', '%3F')}"))
    assert result.permanent_url == srv.url("/feed")


async def test_302_followed_not_permanent(srv: FeedServer, local: Fetcher) -> None:
    result = await local.fetch(srv.url("/redirect/302?to=/feed"))
    assert (result.status, result.final_url, result.permanent_url) == (
        200, srv.url("/feed"), None)


async def test_301_then_302_not_permanent(srv: FeedServer, local: Fetcher) -> None:
    result = await local.fetch(srv.url("/redirect/301?to=/redirect/302%3Fto=/feed"))
    assert result.final_url == srv.url("/feed")
    assert result.permanent_url is None


async def test_redirect_loop(srv: FeedServer, local: Fetcher) -> None:
    error = await fetch_error(local, srv.url("/loop/a"))
    assert str(error) == f"redirect loop at {srv.url('/loop/a')}"


async def test_too_many_redirects(srv: FeedServer, local: Fetcher) -> None:
    assert (await local.fetch(srv.url("/chain/5"))).body == FEED  # 5 hops: allowed
    error = await fetch_error(local, srv.url("/chain/6"))
    assert str(error) == "too many redirects (more than 5)"


# --- HTTP errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "message"), [
    (404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error"), (410, "HTTP 410 Gone"),
])
async def test_http_errors(srv: FeedServer, local: Fetcher, code: int, message: str) -> None:
    error = await fetch_error(local, srv.url(f"/status/{code}"))
    assert (str(error), error.status, error.retry_after) == (message, code, None)


async def test_429_retry_after_seconds(srv: FeedServer, local: Fetcher) -> None:
    error = await fetch_error(local, srv.url("/retry-after?status=429&value=120"))
    assert (str(error), error.status, error.retry_after) == ("HTTP 429 Too Many Requests", 429, 120)


async def test_503_retry_after_http_date(srv: FeedServer, local: Fetcher) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    error = await fetch_error(local, srv.url(f"/retry-after?status=503&value={when}"))
    assert error.status == 503
    assert error.retry_after is not None and 590 <= error.retry_after <= 601


def test_parse_retry_after() -> None:
    now = datetime(2024, 3, 5, 8, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 0 ") == 0
    assert parse_retry_after("Tue, 05 Mar 2024 08:02:00 GMT", now=now) == 120
    assert parse_retry_after("Tue, 05 Mar 2024 07:00:00 GMT", now=now) == 0  # past
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None


# --- SSRF -----------------------------------------------------------------------------


async def blocked(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(BlockedURLError) as info:
        await fetcher.fetch(url)
    return str(info.value)


async def test_literal_loopback_refused(srv: FeedServer, guarded: Fetcher) -> None:
    before = len(srv.hits)
    message = await blocked(guarded, srv.url("/feed"))
    assert message == (f"refused {srv.url('/feed')}: 127.0.0.1 is a loopback address; "
                       "set fetch.allow_private_networks to allow")
    assert len(srv.hits) == before  # nothing reached the server


async def test_name_resolving_to_loopback_refused(srv: FeedServer, guarded: Fetcher) -> None:
    before = len(srv.hits)
    message = await blocked(guarded, srv.url("/feed", host="localhost"))
    assert "localhost resolves to " in message and "a loopback address" in message
    assert message.endswith("set fetch.allow_private_networks to allow")
    assert len(srv.hits) == before


@pytest.mark.parametrize("host", ["[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "[::]", "10.1.2.3"])
async def test_other_literals_refused(srv: FeedServer, guarded: Fetcher, host: str) -> None:
    message = await blocked(guarded, f"http://{host}:{srv.port}/feed")
    assert "allow_private_networks" in message


# Every spelling that the C library reads as 127.0.0.1 (or 0.0.0.0, which reaches it).
LOOPBACK_SPELLINGS = ["2130706433", "127.1", "0177.0.0.1", "017700000001", "0", "0x7f.1",
                      "0x7f000001", "0x7f.0.0.1", "127.0.0.1.", "0177.1", "127.0.1"]


@pytest.mark.parametrize("host", [*LOOPBACK_SPELLINGS, "[127.0.0.1]", "a_b.example", "-a.org",
                                  "example..org", "example.123", "a.0x1f", "256.1.1.1",
                                  "127.0.0.01", "x" * 64 + ".org", "gg::1", ""])
def test_guard_refuses_hosts_neither_canonical_ip_nor_dns_name(host: str) -> None:
    # The guard's own judgement, independent of what aiohttp or yarl make of the URL.
    assert host_problem(host) == (f"host {host!r} is neither a canonical IP address "
                                  "nor a DNS name")


@pytest.mark.parametrize("host", ["127.0.0.1", "8.8.8.8", "0.0.0.0", "::1", "[::1]",
                                  "::ffff:7f00:1", "fe80::1%25eth0", "example.org",
                                  "example.org.", "localhost", "xn--bcher-kva.de",
                                  "3com.com", "123.example", "0x.com", "a-b.c-d.org"])
def test_guard_accepts_canonical_ips_and_dns_names(host: str) -> None:
    assert host_problem(host) is None


@pytest.fixture(params=["aiohttp-as-installed", "aiohttp-before-3.14.1"])
def aiohttp_numeric_check(request: pytest.FixtureRequest,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with aiohttp's own refusal of numeric spellings, and without it: aiohttp
    before 3.14.1 handed ``2130706433`` or ``127.1`` to the socket as an IP literal
    without asking the resolver, so the guard must not rely on aiohttp."""
    if request.param == "aiohttp-before-3.14.1":
        if not hasattr(aiohttp.connector, "is_canonical_ipv4_address"):
            pytest.skip("this aiohttp has no numeric-host check to disable")
        monkeypatch.setattr(aiohttp.connector, "is_canonical_ipv4_address", lambda host: True)


@pytest.mark.usefixtures("aiohttp_numeric_check")
@pytest.mark.parametrize("private_allowed", [False, True], ids=["default", "private-allowed"])
@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_odd_spellings_of_loopback_refused_before_any_request(
    srv: FeedServer, host: str, private_allowed: bool
) -> None:
    url = f"http://{host}:{srv.port}/feed"
    before = len(srv.hits)
    async with Fetcher(allow_private_networks=private_allowed) as fetcher:
        message = await blocked(fetcher, url)
    assert message == (f"refused {url}: host {host!r} is neither a canonical IP address "
                       "nor a DNS name")
    assert len(srv.hits) == before  # nothing reached the server


@pytest.mark.usefixtures("aiohttp_numeric_check")
@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_redirect_to_odd_spelling_of_loopback_refused(srv: FeedServer, host: str) -> None:
    target = f"http://{host}:{srv.port}/feed?spelled=1"
    async with Fetcher(_address_policy=_only_127_0_0_1_is_public) as fetcher:
        before = len(srv.hits)
        message = await blocked(fetcher, srv.url(f"/redirect/302?to={target}"))
    assert message.startswith(f"refused {target}: host {host!r} is neither")
    new_paths = srv.paths()[before:]
    assert len(new_paths) == 1 and new_paths[0].startswith("/redirect/302?")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/feed", "file:///etc/passwd",
                                 "gopher://example.org/", "feed://example.org/rss"])
async def test_other_schemes_refused_even_when_private_allowed(local: Fetcher, url: str) -> None:
    message = await blocked(local, url)
    assert "is not allowed, only http and https" in message


async def test_redirect_to_other_scheme_refused(srv: FeedServer, local: Fetcher) -> None:
    message = await blocked(local, srv.url("/redirect/302?to=file:///etc/passwd"))
    assert message == "refused file:///etc/passwd: scheme file is not allowed, only http and https"


def _only_127_0_0_1_is_public(host: str, ip: IPAddress) -> str | None:
    # Test seam: the literal host 127.0.0.1 stands in for a public server.
    return None if host == "127.0.0.1" else default_policy(host, ip)


@pytest.mark.parametrize("target_host", ["localhost", "[::1]", "10.0.0.1"])
async def test_redirect_from_allowed_host_to_private_refused(
    srv: FeedServer, target_host: str
) -> None:
    """Each hop is checked, not just the first.

    What this proves: with a policy that accepts the first host, a redirect to a
    name resolving to loopback (checked by the resolver) or to a private literal
    (checked before the request) is refused and never requested. It does not prove
    anything about real public hosts, which these tests never contact.
    """
    target = f"http://{target_host}:{srv.port}/feed?private=1"
    async with Fetcher(_address_policy=_only_127_0_0_1_is_public) as fetcher:
        assert (await fetcher.fetch(srv.url("/feed"))).body == FEED  # the seam admits hop 1
        before = len(srv.hits)
        message = await blocked(fetcher, srv.url(f"/redirect/302?to={target}"))
    assert message.startswith(f"refused {target}: ")
    assert "set fetch.allow_private_networks to allow" in message
    new_paths = srv.paths()[before:]
    assert len(new_paths) == 1 and new_paths[0].startswith("/redirect/302?")
    assert not any(path.startswith("/feed") for path in new_paths)  # target never requested


class _FakeResolver(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=0) for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_resolver_keeps_only_public_addresses() -> None:
    # A rebinding-style answer mixing public and private addresses: aiohttp is only
    # ever handed the public one to connect to.
    guard = _GuardedResolver(_FakeResolver(["127.0.0.1", "93.184.215.14", "fd00::1"]),
                             default_policy)
    assert [r["host"] for r in await guard.resolve("mixed.example", 80)] == ["93.184.215.14"]
    guard = _GuardedResolver(_FakeResolver(["192.168.1.10", "fe80::1"]), default_policy)
    with pytest.raises(BlockedURLError, match=r"^nas\.example resolves to 192\.168\.1\.10, a "
                                              r"private \(RFC 1918\) address; set"):
        await guard.resolve("nas.example", 80)


@pytest.mark.parametrize(("address", "reason"), [
    ("10.0.0.1", "a private (RFC 1918) address"),
    ("172.16.5.4", "a private (RFC 1918) address"),
    ("172.31.255.255", "a private (RFC 1918) address"),
    ("192.168.1.1", "a private (RFC 1918) address"),
    ("127.0.0.1", "a loopback address"),
    ("127.255.0.9", "a loopback address"),
    ("169.254.169.254", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("0.0.0.0", "the unspecified address"),
    ("100.64.0.1", "a carrier-grade NAT (100.64.0.0/10) address"),
    ("100.127.255.254", "a carrier-grade NAT (100.64.0.0/10) address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.2.1", "a non-public address"),
    ("::", "the unspecified address"),
    ("::1", "a loopback address"),
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("ff02::1", "a multicast address"),
    ("fd00::1", "a unique local (fc00::/7) address"),
    ("fc00::1", "a unique local (fc00::/7) address"),
    ("fec0::1", "a site-local address"),
    ("::ffff:10.0.0.1", "an IPv6 address embedding 10.0.0.1, a private (RFC 1918) address"),
    ("::ffff:127.0.0.1", "an IPv6 address embedding 127.0.0.1, a loopback address"),
    ("64:ff9b::a9fe:a9fe", "an IPv6 address embedding 169.254.169.254, a link-local address"),
    ("2002:c0a8:0101::1", "an IPv6 address embedding 192.168.1.1, a private (RFC 1918) address"),
    ("2001:db8::1", "a non-public address"),
])
def test_blocked_reason(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", [
    "93.184.215.14", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "11.0.0.1",
    "2606:4700::1", "2a00:1450:4007:80e::200e", "::ffff:93.184.215.14", "64:ff9b::5db8:d70e",
])
def test_public_addresses_allowed(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


async def test_closed_fetcher_refuses_use() -> None:
    fetcher = Fetcher()
    await fetcher.close()
    with pytest.raises(RuntimeError):
        await fetcher.fetch("http://example.org/")
