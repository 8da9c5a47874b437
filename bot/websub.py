"""WebSub (W3C Recommendation): a feed's hub pushes its new content, and the bot hands the
body to the feed's poller exactly as if it had fetched it (same decisions, same
exactly-once outbox). Polling goes on at its normal interval: a push only makes an item
arrive earlier, and a lost push costs nothing but that.

The protocol, as this module keeps it:

1. **Discover** (on start, then at every renewal): GET the feed behind the SSRF guard;
   its HTTP ``Link`` headers first (``rel=hub``, ``rel=self``), else the links of the
   document itself before its first entry (an entry's content is the stranger's, not the
   publisher's), else a JSON Feed's ``hubs``. The topic is the ``self`` link (else the
   address fetched).
2. **Subscribe**: a fresh random callback id and secret make a *pending* subscription,
   registered before the POST to the hub (a hub may verify before it answers), then
   ``hub.mode=subscribe`` with ``hub.lease_seconds`` and ``hub.secret``.
3. **Verify intent**: the hub GETs ``{public_url}/websub/{id}``; only the pending
   subscription of that id, with that mode and topic, has its ``hub.challenge`` echoed;
   anything else gets 404. A verified subscription is stored (kv ``websub:<feed>``: hub,
   topic, id, secret, expiry, renewal time: what answering a push after a restart needs,
   nothing more).
4. **Push**: a POST to the feed's *current* callback (others get 410, which lets the hub
   drop them); the body is capped like a fetch's; ``X-Hub-Signature`` must be the HMAC
   of the raw body with the secret (sha1, sha256, sha384 or sha512, the spec's names;
   compared in constant time). The answer is 202 at once, for a bad signature too (the
   spec: ignore it locally, do not help whoever tries signatures); bad ones are logged
   and dropped, good ones handed to the poller by a worker (the latest body per feed).
5. **Renew** at 80 % of the lease with a new callback and secret (the spec: change the
   callback on renewal); once the new one is verified the old one is unsubscribed.

Nothing here logs a secret, a callback id or a signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from html.parser import HTMLParser
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bot import USER_AGENT
from bot.clock import Clock
from bot.config import FeedConfig
from bot.errors import BlockedURLError, FetchError, StorageError
from bot.feeds.fetch import FetchResult, _GuardedResolver
from bot.feeds.netguard import (
    AddressPolicy,
    default_policy,
    host_problem,
    parse_ip,
    refusal_message,
)
from bot.store.base import Store

__all__ = ["Discovered", "WebSub", "discover_links", "signature_valid"]

log = logging.getLogger(__name__)

PATH: Final = "/websub"
KEY_PREFIX: Final = "websub:"
DEFAULT_LEASE: Final = 10 * 24 * 3600       # the spec's suggested default
MAX_LEASE: Final = 365 * 24 * 3600          # a hub's promise beyond this is not believed
RENEW_AT: Final = 0.8                       # of the lease
VERIFY_WINDOW: Final = 600.0                # a pending subscription the hub never verified
RETRY_BASE: Final = 300.0
RETRY_MAX: Final = 24 * 3600.0
REDISCOVER: Final = 24 * 3600.0             # a feed with no hub: looked at again daily
IDLE: Final = 3600.0                        # feeds added by command are seen within this
MAX_REASON: Final = 200
_SIGNATURES: Final = {"sha1": hashlib.sha1, "sha256": hashlib.sha256,
                      "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS: Final = 5
_CHUNK: Final = 64 * 1024
# Where a feed's own links end and its entries (a stranger's words) begin.
_ENTRY_TAGS: Final = frozenset({"entry", "item", "body"})

Deliver = Callable[[str, FetchResult], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Discovered:
    hub: str
    topic: str


@dataclass(frozen=True, slots=True)
class Subscription:
    feed: str
    hub: str
    topic: str
    id: str                 # the callback's last path segment: unguessable
    secret: str
    expires: float = 0.0    # set once verified
    renew: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Subscription | None:
        try:
            data = json.loads(raw)
            return cls(**{k: data[k] for k in ("feed", "hub", "topic", "id", "secret",
                                               "expires", "renew")})
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(slots=True)
class _Pending:
    mode: str               # "subscribe" or "unsubscribe"
    sub: Subscription
    since: float


def signature_valid(header: str | None, body: bytes, secret: str) -> bool:
    """Whether ``X-Hub-Signature`` (``method=hex``) is the HMAC of ``body`` with
    ``secret`` under one of the spec's algorithm names."""
    if not header:
        return False
    method, sep, value = header.strip().partition("=")
    algorithm = _SIGNATURES.get(method.strip().lower())
    if algorithm is None or not sep:
        return False
    expected = hmac.new(secret.encode(), body, algorithm).hexdigest().encode()
    return hmac.compare_digest(expected, value.strip().lower().encode("utf-8", "replace"))


class _LinkFinder(HTMLParser):
    """``<link rel=... href=...>`` and ``<atom:link ...>`` before the first entry. An
    HTML parser reads XML well enough for this, expands no entity declarations and skips
    CDATA sections, so a hostile document costs one linear pass."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        local = tag.rpartition(":")[2]
        if local in _ENTRY_TAGS:
            self.done = True
        elif local == "link":
            values = {k: v for k, v in attrs if v is not None}
            if "href" in values and "rel" in values:
                for rel in values["rel"].lower().split():
                    self.links.append((rel, values["href"].strip()))

    handle_startendtag = handle_starttag


def discover_links(header_links: Iterable[tuple[str, str]], body: bytes | None,
                   content_type: str | None, url: str) -> Discovered | None:
    """The hub and topic a feed advertises: HTTP Link headers first, then the document
    (pure; ``url`` is where the document was fetched, for relative links and as the
    topic when no ``self`` is given)."""
    found = _pick(list(header_links), url)
    if found is not None or not body:
        return found
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.endswith("json") or body.lstrip()[:1] == b"{":
        return _from_json_feed(body, url)
    finder = _LinkFinder()
    text = body.decode("utf-8", "replace")
    # Fed in pieces so that parsing stops soon after the first entry.
    for start in range(0, len(text), _CHUNK):
        finder.feed(text[start:start + _CHUNK])
        if finder.done:
            break
    return _pick(finder.links, url)


def _pick(links: list[tuple[str, str]], url: str) -> Discovered | None:
    hubs = [href for rel, href in links if rel == "hub"]
    selves = [href for rel, href in links if rel == "self"]
    if not hubs:
        return None
    hub = _absolute(hubs[0], url)
    topic = _absolute(selves[0], url) if selves else url
    if hub is None or topic is None:
        return None
    return Discovered(hub, topic)


def _from_json_feed(body: bytes, url: str) -> Discovered | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("hubs"), list):
        return None
    links = [("hub", h["url"]) for h in doc["hubs"] if isinstance(h, dict)
             and isinstance(h.get("url"), str)
             and str(h.get("type", "")).lower() in ("websub", "pubsubhubbub")]
    if isinstance(doc.get("feed_url"), str):
        links.append(("self", doc["feed_url"]))
    return _pick(links, url)


def _absolute(href: str, base: str) -> str | None:
    try:
        joined = URL(base).join(URL(href))
    except (ValueError, TypeError):
        return None
    if joined.scheme not in ("http", "https") or not joined.raw_host:
        return None
    return str(joined.with_fragment(None))


def _one_line(text: str, limit: int = MAX_REASON) -> str:
    return " ".join(text.split())[:limit]


class WebSub:
    """The subscriber: its callback routes (``routes()``), subscriptions kept alive
    (``run()``), pushed bodies handed to ``deliver(feed, FetchResult)``.

    ``_address_policy`` is a test seam, as in ``Fetcher``."""

    def __init__(self, *, public_url: str, store: Store, clock: Clock, deliver: Deliver,
                 feeds: Callable[[], Iterable[FeedConfig]], max_body_bytes: int,
                 allow_private_networks: bool = False, timeout: float = 30.0,
                 connect_timeout: float = 10.0, lease_seconds: int = DEFAULT_LEASE,
                 min_renewal: float = 60.0, workers: int = 2,
                 _address_policy: AddressPolicy | None = None) -> None:
        self._base = public_url.rstrip("/")
        self._store = store
        self._clock = clock
        self._deliver = deliver
        self._feeds = feeds
        self._max_body = max_body_bytes
        self._policy = None if allow_private_networks else (_address_policy or default_policy)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._lease = lease_seconds
        self._min_renewal = min_renewal
        self._workers = workers
        self._current: dict[str, Subscription] = {}     # feed -> verified subscription
        self._by_id: dict[str, Subscription] = {}       # callback id -> the same
        self._pending: dict[str, _Pending] = {}         # callback id -> awaiting the hub
        self._due: dict[str, float] = {}                # feed -> next discovery
        self._failures: dict[str, int] = {}
        self._retiring: list[Subscription] = []         # to unsubscribe
        self._bodies: dict[str, FetchResult] = {}       # feed -> latest pushed body
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._resolver: _GuardedResolver | None = None
        self.pushes = {"accepted": 0, "bad_signature": 0, "unknown": 0, "too_large": 0}

    # -- the listener's side ------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH + "/{id}", self._intent, allow_head=False),
                web.post(PATH + "/{id}", self._push)]

    def callback(self, sub_id: str) -> str:
        return f"{self._base}{PATH}/{sub_id}"

    def current(self, feed: str) -> Subscription | None:
        """The verified subscription of ``feed`` (tests, status)."""
        return self._current.get(feed)

    async def _intent(self, request: web.Request) -> web.Response:
        sub_id = request.match_info["id"]
        query = request.query
        mode, topic = query.get("hub.mode", ""), query.get("hub.topic", "")
        now = self._clock.now()
        if mode == "denied":
            return await self._denied(sub_id, topic, query.get("hub.reason", ""), now)
        pending = self._pending.get(sub_id)
        challenge = query.get("hub.challenge")
        if pending is None or pending.mode != mode or pending.sub.topic != topic \
                or not challenge:
            # Not something the bot asked for: the spec's answer is 404.
            log.warning("websub: refused a verification (%s of %s) that matches no pending "
                        "request", _one_line(mode, 20) or "no mode", _one_line(topic))
            return web.Response(status=404, text="no such pending request")
        del self._pending[sub_id]
        if mode == "subscribe":
            await self._activate(pending.sub, query.get("hub.lease_seconds"), now)
        else:
            log.info("websub: feed %s unsubscribed from %s", pending.sub.feed, pending.sub.hub)
        return web.Response(text=challenge, content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def _activate(self, sub: Subscription, lease_text: str | None, now: float) -> None:
        try:
            lease = float(lease_text) if lease_text else float(self._lease)
        except ValueError:
            lease = float(self._lease)
        if not math.isfinite(lease) or lease <= 0:
            lease = float(self._lease)
        lease = min(lease, MAX_LEASE)
        # A hub granting a tiny lease must not make the bot subscribe in a tight loop.
        renew = now + max(lease * RENEW_AT, self._min_renewal)
        sub = replace(sub, expires=now + lease, renew=renew)
        # Stored before the hub hears yes: a push after a restart must find its secret.
        await self._store.put(KEY_PREFIX + sub.feed, sub.to_json())
        old = self._current.get(sub.feed)
        if old is not None and old.id != sub.id:
            self._by_id.pop(old.id, None)
            self._retiring.append(old)
        self._current[sub.feed] = sub
        self._by_id[sub.id] = sub
        self._due[sub.feed] = renew
        self._wake.set()        # the renewals' loop sleeps until the new time
        self._failures.pop(sub.feed, None)
        log.info("websub: feed %s subscribed at %s for %.0f s (renewal in %.0f s)",
                 sub.feed, sub.hub, lease, renew - now)

    async def _denied(self, sub_id: str, topic: str, reason: str, now: float) -> web.Response:
        pending = self._pending.get(sub_id)
        sub = pending.sub if pending is not None else self._by_id.get(sub_id)
        if sub is None or sub.topic != topic:
            return web.Response(status=404, text="no such subscription")
        self._pending.pop(sub_id, None)
        if self._current.get(sub.feed) is sub:
            await self._forget(sub.feed)
        # The spec: consider it not possible any more; looked at again in a day.
        self._due[sub.feed] = now + RETRY_MAX
        self._wake.set()
        log.warning("websub: the hub %s denied the subscription of feed %s: %s; polling "
                    "goes on", sub.hub, sub.feed, _one_line(reason) or "no reason given")
        return web.Response(text="")

    async def _push(self, request: web.Request) -> web.Response:
        sub = self._by_id.get(request.match_info["id"])
        if sub is None:
            self.pushes["unknown"] += 1
            # 410 lets the hub drop a subscription the bot no longer has.
            return web.Response(status=410, text="no such subscription")
        body = await self._read_capped(request)
        if body is None:
            self.pushes["too_large"] += 1
            log.warning("websub: feed %s: pushed body larger than %d bytes; ignored",
                        sub.feed, self._max_body)
            return web.Response(status=413, text="too large")
        if not signature_valid(request.headers.get("X-Hub-Signature"), body, sub.secret):
            self.pushes["bad_signature"] += 1
            # Still 2xx (the spec allows it): the sender learns nothing about the secret.
            log.warning("websub: feed %s: push from %s with %s signature ignored",
                        sub.feed, request.remote or "?",
                        "a wrong" if request.headers.get("X-Hub-Signature") else "no")
            return web.Response(status=202, text="")
        self.pushes["accepted"] += 1
        url = next((f.url for f in self._feeds() if f.name == sub.feed), sub.topic)
        self._bodies[sub.feed] = FetchResult(
            status=200, body=body, content_type=request.headers.get("Content-Type"),
            etag=None, last_modified=None, final_url=url, permanent_url=None)
        if sub.feed not in self._queued:
            self._queued.add(sub.feed)
            self._queue.put_nowait(sub.feed)
        log.debug("websub: feed %s: push of %d bytes accepted", sub.feed, len(body))
        return web.Response(status=202, text="")

    async def _read_capped(self, request: web.Request) -> bytes | None:
        if request.content_length is not None and request.content_length > self._max_body:
            return None
        body = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            if len(body) + len(chunk) > self._max_body:
                return None
            body += chunk
        return bytes(body)

    # -- keeping subscriptions ----------------------------------------------------------

    async def run(self) -> None:
        """Load the stored subscriptions, keep them renewed, hand pushes over; until
        cancelled."""
        try:
            await self._load()
            async with asyncio.TaskGroup() as tg:
                for n in range(self._workers):
                    tg.create_task(self._hand_over(), name=f"websub push {n}")
                tg.create_task(self._maintain(), name="websub renewals")
        finally:
            await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()

    async def _load(self) -> None:
        now = self._clock.now()
        for feed in self._feeds():
            raw = await self._store.get(KEY_PREFIX + feed.name)
            sub = Subscription.from_json(raw) if raw else None
            if sub is None or sub.feed != feed.name or sub.expires <= now:
                continue
            self._current[feed.name] = sub
            self._by_id[sub.id] = sub
            self._due[feed.name] = sub.renew

    async def _hand_over(self) -> None:
        while True:
            feed = await self._queue.get()
            self._queued.discard(feed)
            result = self._bodies.pop(feed, None)
            if result is None:
                continue
            # One push of a feed at a time: the poller's decisions read what the last
            # one committed.
            async with self._locks.setdefault(feed, asyncio.Lock()):
                try:
                    await self._deliver(feed, result)
                except StorageError:
                    raise
                except Exception:
                    log.exception("websub: feed %s: handling a pushed body failed; the next "
                                  "poll reads the feed", feed)

    async def _maintain(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock.now()
            feeds = {feed.name: feed for feed in self._feeds()}
            for name in [n for n in self._current if n not in feeds]:
                self._retiring.append(self._current[name])
                await self._forget(name)
            for stale in [i for i, p in self._pending.items()
                          if now - p.since > VERIFY_WINDOW]:
                del self._pending[stale]
            while self._retiring:
                await self._unsubscribe(self._retiring.pop())
            for feed in feeds.values():
                due = self._due.get(feed.name)
                if due is None or due <= now:
                    await self._refresh(feed)
            now = self._clock.now()
            wait = min([IDLE, *(due - now for name, due in self._due.items() if name in feeds)])
            if any(name not in self._due for name in feeds):
                wait = 0.0
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _forget(self, feed: str) -> None:
        sub = self._current.pop(feed, None)
        if sub is not None:
            self._by_id.pop(sub.id, None)
        # No delete in the kv API: an empty value is no subscription.
        await self._store.put(KEY_PREFIX + feed, "")

    async def _refresh(self, feed: FeedConfig) -> None:
        now = self._clock.now()
        try:
            found = await self.discover(feed.url)
        except FetchError as exc:
            self._due[feed.name] = now + self._backoff(feed.name)
            log.info("websub: feed %s: discovery failed: %s", feed.name, exc)
            return
        except Exception:
            # A document nobody foresaw costs this feed its push, never the bot.
            self._due[feed.name] = now + self._backoff(feed.name)
            log.warning("websub: feed %s: discovery failed", feed.name, exc_info=True)
            return
        if found is None:
            self._due[feed.name] = now + REDISCOVER
            if feed.name in self._current:
                log.info("websub: feed %s no longer names a hub", feed.name)
                self._retiring.append(self._current[feed.name])
                await self._forget(feed.name)
            return
        if await self.subscribe(feed.name, found.hub, found.topic):
            # Verification sets the renewal; this is in case it never comes.
            self._due[feed.name] = now + VERIFY_WINDOW
        else:
            self._due[feed.name] = now + self._backoff(feed.name)

    def _backoff(self, feed: str) -> float:
        failures = self._failures[feed] = self._failures.get(feed, 0) + 1
        return min(RETRY_BASE * 2 ** (failures - 1), RETRY_MAX)

    async def subscribe(self, feed: str, hub: str, topic: str) -> bool:
        """Ask ``hub`` for ``topic``'s pushes; True when the hub accepted the request
        (the subscription is active once the hub has verified it)."""
        for sub_id in [i for i, p in self._pending.items()
                       if p.sub.feed == feed and p.mode == "subscribe"]:
            del self._pending[sub_id]       # one pending subscription per feed
        sub = Subscription(feed, hub, topic, secrets.token_urlsafe(24),
                           secrets.token_urlsafe(32))
        self._pending[sub.id] = _Pending("subscribe", sub, self._clock.now())
        form = {"hub.mode": "subscribe", "hub.topic": topic,
                "hub.callback": self.callback(sub.id),
                "hub.lease_seconds": str(self._lease), "hub.secret": sub.secret}
        if await self._ask_hub(sub, form):
            return True
        self._pending.pop(sub.id, None)
        return False

    async def _unsubscribe(self, sub: Subscription) -> None:
        self._pending[sub.id] = _Pending("unsubscribe", sub, self._clock.now())
        form = {"hub.mode": "unsubscribe", "hub.topic": sub.topic,
                "hub.callback": self.callback(sub.id)}
        if not await self._ask_hub(sub, form):
            self._pending.pop(sub.id, None)   # its pushes get 410; its lease runs out

    async def _ask_hub(self, sub: Subscription, form: dict[str, str]) -> bool:
        mode = form["hub.mode"]
        try:
            url = URL(sub.hub)
            self._check(url)
            async with asyncio.timeout(self._timeout), self._get_session().post(
                    url, data=form, allow_redirects=False) as resp:
                status = resp.status
                reason = "" if status < 300 else _one_line(
                    (await resp.content.read(MAX_REASON * 2)).decode("utf-8", "replace"))
        except (FetchError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("websub: feed %s: %s request to %s failed: %s", sub.feed, mode,
                        sub.hub, _one_line(str(exc)) or type(exc).__name__)
            return False
        if 200 <= status < 300:
            return True
        log.warning("websub: feed %s: the hub %s refused the %s request: HTTP %d %s",
                    sub.feed, sub.hub, mode, status, reason)
        return False

    async def discover(self, url: str) -> Discovered | None:
        """GET ``url`` (redirects followed, each hop checked) and find its hub."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._discover(URL(url))
        except TimeoutError as exc:
            raise FetchError("discovery timed out") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise FetchError(_one_line(str(exc)) or type(exc).__name__) from exc

    async def _discover(self, url: URL) -> Discovered | None:
        for _ in range(_MAX_REDIRECTS + 1):
            self._check(url)
            async with self._get_session().get(url, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS and "Location" in resp.headers:
                    url = url.join(URL(resp.headers["Location"]))
                    continue
                if not 200 <= resp.status < 300:
                    raise FetchError(f"HTTP {resp.status}", status=resp.status)
                links = [(rel.lower(), str(link.get("url", "")))
                         for rels, link in resp.links.items() for rel in str(rels).split()]
                body = await self._read_response(resp)
                return discover_links(links, body, resp.headers.get("Content-Type"), str(url))
        raise FetchError("too many redirects")

    async def _read_response(self, resp: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if len(body) + len(chunk) > self._max_body:
                raise FetchError("body too large")
            body += chunk
        return bytes(body)

    def _check(self, url: URL) -> None:
        """The fetcher's guard, for the hub and discovery requests: a hub's address is a
        stranger's word, and the bot must not POST into a private network for it."""
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise BlockedURLError(f"refused {str(url)[:200]}: not an http(s) URL")
        spelling = host_problem(url.raw_host)
        if spelling is not None:
            raise BlockedURLError(f"refused {str(url)[:200]}: {spelling}")
        ip = parse_ip(url.raw_host)
        if self._policy is not None and ip is not None:
            reason = self._policy(url.raw_host, ip)
            if reason is not None:
                raise BlockedURLError(f"refused {str(url)[:200]}: "
                                      f"{refusal_message(url.raw_host, ip, reason)}")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._policy is not None:
                self._resolver = _GuardedResolver(DefaultResolver(), self._policy)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._resolver),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                headers={"User-Agent": USER_AGENT},
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

