"""Polite, guarded HTTP fetching of feeds.

One ``aiohttp.ClientSession`` per ``Fetcher``. Every aiohttp error is turned into a
``FetchError`` with one human line here, so no aiohttp type reaches the callers.

The SSRF guard has three parts, all applied on every redirect hop:

* a host must be a canonical IP literal or a valid DNS name, whatever the policy
  (``127.1`` or ``2130706433`` mean 127.0.0.1 to the C library but no address to
  Python, so checking them as names would check something else than is connected to);
* literal IP hosts are checked before the request, because aiohttp never runs its
  resolver for them;
* names are checked by a resolver that wraps aiohttp's own and drops refused
  addresses, so the addresses checked are the very ones aiohttp connects to (no gap
  between check and connect for DNS rebinding to slip through).
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import re
import socket
import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bot import USER_AGENT
from bot.errors import BlockedURLError, FetchError
from bot.feeds.netguard import (
    AddressPolicy,
    default_policy,
    host_problem,
    parse_ip,
    refusal_message,
)

__all__ = ["FetchResult", "Fetcher"]

log = logging.getLogger(__name__)

_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_PERMANENT_STATUSES: Final = frozenset({301, 308})
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_CHUNK: Final = 64 * 1024
# How many feed addresses a fetcher remembers as checked (then it starts afresh).
_CHECKED_MAX: Final = 100_000
_ACCEPT: Final = (
    "application/atom+xml, application/rss+xml, application/feed+json, "
    "application/rdf+xml;q=0.9, application/xml;q=0.9, text/xml;q=0.9, "
    "application/json;q=0.8, */*;q=0.5"
)


# Not frozen: one is made at every poll (a frozen dataclass sets each field through
# object.__setattr__, three times slower), and none is changed once made.
@dataclasses.dataclass(slots=True)
class FetchResult:
    """What one successful fetch returned."""

    status: int                 # 2xx (normally 200), or 304 when not modified
    body: bytes | None          # decoded (gunzipped) bytes; None on 304
    content_type: str | None
    etag: str | None            # to send back next time; on 304 the one we sent if none came
    last_modified: str | None
    final_url: str              # after redirects (the URL given, untouched, if none)
    permanent_url: str | None   # set when every hop to final_url was 301/308
    # The response's Cache-Control, Expires, Date and Age headers, as sent (read by
    # bot.feeds.hints: how long the server asks us not to come back); none of them
    # without Cache-Control or Expires.
    caching: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Redirect:
    status: int
    target: URL


class _GuardedResolver(AbstractResolver):
    """Wraps aiohttp's resolver and drops the addresses the policy refuses."""

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        first_refusal: str | None = None
        for result in results:
            ip = parse_ip(result["host"])
            reason = "an address that cannot be checked" if ip is None else self._policy(host, ip)
            if reason is None:
                kept.append(result)
            elif first_refusal is None:
                first_refusal = (
                    f"{host} resolves to {result['host']}, {reason}"
                    if ip is None
                    else refusal_message(host, ip, reason)
                )
        # A name with both public and refused addresses keeps the public ones: only
        # they are ever connected to, so nothing private is reachable through it.
        if not kept and first_refusal is not None:
            # Not an OSError, so aiohttp lets it through instead of calling it a DNS failure.
            raise BlockedURLError(first_refusal)
        return kept

    async def close(self) -> None:
        await self._inner.close()


class Fetcher:
    """Fetches feed URLs with conditional GET, a size cap, timeouts and an SSRF guard.

    ``_address_policy`` is a test seam only: it replaces the address check (given
    the host as written and one of its addresses, return why it is refused or None),
    so a test on loopback can make one host stand in for a public one.
    """

    def __init__(
        self,
        *,
        allow_private_networks: bool = False,
        max_body_bytes: int = 5 * 1024 * 1024,
        total_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        user_agent: str = USER_AGENT,
        max_redirects: int = 5,
        _address_policy: AddressPolicy | None = None,
    ) -> None:
        if max_body_bytes <= 0 or total_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("max_body_bytes and timeouts must be positive")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self._policy: AddressPolicy | None = (
            None if allow_private_networks else (_address_policy or default_policy)
        )
        self._max_body_bytes = max_body_bytes
        self._total_timeout = total_timeout
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._max_redirects = max_redirects
        self._first_timeout = aiohttp.ClientTimeout(total=total_timeout,
                                                    sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None
        self._closed = False
        # URLs given to fetch() whose check (_check_url) passed: it depends on the URL and
        # the policy alone, and an unchanged feed is asked for every few minutes.
        # Redirect targets are checked at every hop; names, by the resolver at connect.
        self._checked: set[str] = set()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the fetcher cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            # The connector does not own a resolver it was given, so close it here.
            await resolver.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("Fetcher is closed")
        if self._session is None:
            # Created here rather than in __init__ because aiohttp binds the session
            # (and the default resolver) to the running loop.
            if self._policy is not None:
                self._resolver = _GuardedResolver(DefaultResolver(), self._policy)
            # No pool limits: the pollers' shared semaphore (fetch.concurrency) bounds how
            # many feeds are fetched at once. A per-host limit here would make a poll
            # wait inside its slot, and inside its deadline, behind slow feeds of the
            # same host (measured in tests/test_load.py).
            connector = aiohttp.TCPConnector(
                resolver=self._resolver, limit=0, limit_per_host=0
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Each request is given its own (fetch): what is left of the deadline.
                timeout=self._first_timeout,
                headers={
                    "User-Agent": self._user_agent,
                    "Accept": _ACCEPT,
                    # Only what aiohttp decodes under our size cap (no br/zstd surprises).
                    "Accept-Encoding": "gzip, deflate",
                },
                # Proxies from the environment would make the address checks moot.
                trust_env=False,
                # Cookies would let feed servers follow the bot across polls.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def fetch(
        self, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """GET ``url``, following redirects; raise FetchError (or BlockedURLError).

        One deadline (``total_timeout``) bounds the whole fetch, every hop included: each
        request carries what is left of it as its aiohttp total timeout (connecting,
        sending, reading the body), rather than an asyncio.timeout around the whole
        fetch: one context and one coroutine less on every poll. aiohttp rounds a deadline
        of 5 s or more up to the next whole second."""
        started = time.monotonic()
        try:
            current = URL(url)
        except (ValueError, TypeError) as exc:
            raise FetchError(f"invalid URL {url!r}") from exc
        headers: dict[str, str] = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        asked = current
        seen: set[URL] | None = None     # made at the first redirect: most fetches have none
        all_permanent = True
        hops = 0
        timeout = self._first_timeout       # the whole deadline
        while True:
            if hops or url not in self._checked:
                self._check_url(current)
                if not hops:
                    if len(self._checked) >= _CHECKED_MAX:
                        self._checked.clear()
                    self._checked.add(url)
            # Keep the caller's spelling: an unchanged URL must compare equal.
            outcome = await self._hop(current, headers, etag, last_modified,
                                      url if hops == 0 else None, timeout)
            if isinstance(outcome, FetchResult):
                if hops == 0:
                    return outcome
                return dataclasses.replace(
                    outcome, permanent_url=outcome.final_url if all_permanent else None
                )
            hops += 1
            if hops > self._max_redirects:
                raise FetchError(f"too many redirects (more than {self._max_redirects})")
            if seen is None:
                seen = {asked}
            if outcome.target in seen:
                raise FetchError(f"redirect loop at {outcome.target}")
            seen.add(outcome.target)
            all_permanent = all_permanent and outcome.status in _PERMANENT_STATUSES
            log.debug("redirect %d from %s to %s", outcome.status, current, outcome.target)
            current = outcome.target
            left = self._total_timeout - (time.monotonic() - started)
            if left <= 0:       # aiohttp reads a total of 0 as no limit at all
                raise self._timed_out()
            timeout = aiohttp.ClientTimeout(total=left, sock_connect=self._connect_timeout)

    def _timed_out(self) -> FetchError:
        return FetchError(f"timed out after {_seconds(self._total_timeout)} s")

    def _check_url(self, url: URL) -> None:
        if url.scheme not in _ALLOWED_SCHEMES:
            scheme = url.scheme or "(none)"
            raise BlockedURLError(
                f"refused {_short(url)}: scheme {scheme} is not allowed, only http and https"
            )
        host = url.raw_host  # IDNA-encoded: the name as it is looked up
        if not host:
            raise FetchError(f"invalid URL {_short(url)}: no host")
        # Whatever the address policy: a spelling parsers disagree on is a way around it.
        spelling = host_problem(host)
        if spelling is not None:
            raise BlockedURLError(f"refused {_short(url)}: {spelling}")
        if self._policy is None:
            return
        ip = parse_ip(host)
        if ip is not None:
            reason = self._policy(host, ip)
            if reason is not None:
                raise BlockedURLError(f"refused {_short(url)}: {refusal_message(host, ip, reason)}")

    async def _hop(
        self, url: URL, headers: dict[str, str], etag: str | None, last_modified: str | None,
        spelled: str | None, left: aiohttp.ClientTimeout,
    ) -> FetchResult | _Redirect:
        """One request; ``spelled``: the URL as the caller wrote it (the final URL if no
        redirect follows); ``left``: what is left of the deadline."""
        session = self._get_session()
        try:
            async with session.get(url, headers=headers, allow_redirects=False,
                                   timeout=left) as resp:
                status = resp.status
                if status in _REDIRECT_STATUSES and "Location" in resp.headers:
                    location = resp.headers["Location"]
                    try:
                        target = url.join(URL(location))
                    except (ValueError, TypeError) as exc:
                        raise FetchError(
                            f"HTTP {status} redirect to an invalid URL {location[:200]!r}"
                        ) from exc
                    return _Redirect(status, target)
                if status == 304:
                    return FetchResult(
                        status=304,
                        body=None,
                        content_type=resp.headers.get("Content-Type"),
                        etag=resp.headers.get("ETag") or etag,
                        last_modified=resp.headers.get("Last-Modified") or last_modified,
                        final_url=str(url) if spelled is None else spelled,
                        permanent_url=None,
                        caching=_caching(resp.headers),
                    )
                if not 200 <= status < 300:
                    retry_after = None
                    if status in _RETRY_AFTER_STATUSES:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    reason = _one_line(resp.reason or "")
                    raise FetchError(
                        f"HTTP {status} {reason}".rstrip(), status=status, retry_after=retry_after
                    )
                body = await self._read_capped(resp)
                return FetchResult(
                    status=status,
                    body=body,
                    content_type=resp.headers.get("Content-Type"),
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                    final_url=str(url) if spelled is None else spelled,
                    permanent_url=None,
                    caching=_caching(resp.headers),
                )
        except BlockedURLError as exc:
            # Raised by our resolver inside aiohttp; a fresh instance per fetch, as
            # aiohttp hands the same one to every request waiting on that lookup.
            raise BlockedURLError(f"refused {_short(url)}: {exc}") from None
        except FetchError:
            raise
        except aiohttp.ClientError as exc:
            raise FetchError(_describe_client_error(exc, url, self._connect_timeout)) from exc
        except TimeoutError as exc:
            # Not a ClientError: aiohttp's total timeout, the fetch's deadline.
            raise self._timed_out() from exc
        except ssl.SSLError as exc:
            raise FetchError(f"TLS error: {_ssl_reason(exc)}") from exc
        except OSError as exc:
            raise FetchError(f"network error: {_one_line(exc.strerror or str(exc))}") from exc
        except ValueError as exc:
            # yarl/aiohttp reject some malformed URLs with plain ValueError.
            raise FetchError(f"invalid URL {_short(url)}: {_one_line(str(exc))}") from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self._max_body_bytes
        too_big = f"body larger than {_size(cap)} cap"
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity" and resp.content_length is not None and resp.content_length > cap:
            resp.close()
            raise FetchError(too_big)
        body = bytearray()
        # aiohttp inflates in bounded steps as we read, so stopping here also stops
        # a gzip bomb before it is expanded further.
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if len(body) + len(chunk) > cap:
                resp.close()
                raise FetchError(too_big)
            body += chunk
        return bytes(body)


_CACHING_HEADERS: Final = ("Cache-Control", "Expires", "Date", "Age")


def _caching(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Date and Age say nothing without Cache-Control or Expires: a 304 with neither (most
    # of them, though nearly all have a Date) has nothing to read.
    if "Cache-Control" not in headers and "Expires" not in headers:
        return ()
    # The first of each, cut short: a header is a stranger's text (aiohttp already
    # bounds a header line to 8 KiB).
    found = []
    for name in _CACHING_HEADERS:
        value = headers.get(name)
        if value is not None:
            found.append((name, value[:1000]))
    return tuple(found)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP-dates are always GMT; a zoneless one is not an HTTP-date
    delay = when.timestamp() - (time.time() if now is None else now)
    return float(max(0, math.ceil(delay)))


def _describe_client_error(exc: aiohttp.ClientError, url: URL, connect_timeout: float) -> str:
    host = url.host or str(url)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed for {host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = _ssl_reason(exc.certificate_error)
        return f"TLS error: certificate of {host} rejected: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
        return f"TLS error: {_ssl_reason(cause)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connection to {host} timed out after {_seconds(connect_timeout)} s"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return f"timed out talking to {host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc.os_error, ssl.SSLError):
            return f"TLS error: {_ssl_reason(exc.os_error)}"
        detail = exc.os_error.strerror or str(exc.os_error)
        return f"cannot connect to {host}: {_one_line(detail)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"body transfer from {host} failed: {_one_line(str(exc))}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response from {host}: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL {_short(url)}"
    if isinstance(exc, aiohttp.ClientOSError):
        if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError):
            return f"TLS error: {_ssl_reason(exc)}"
        return f"network error with {host}: {_one_line(exc.strerror or str(exc))}"
    return f"HTTP client error with {host}: {type(exc).__name__}"


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return _one_line(exc.verify_message)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    # Drop the "(_ssl.c:1006)" source locations OpenSSL errors carry.
    return _one_line(re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc))) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(url: URL) -> str:
    text = str(url)
    return text if len(text) <= 200 else text[:199] + "…"


def _seconds(value: float) -> str:
    return f"{value:g}"


def _size(n: int) -> str:
    mib = 1024 * 1024
    if n % mib == 0:
        return f"{n // mib} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"
