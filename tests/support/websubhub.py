"""A real WebSub hub on 127.0.0.1 (aiohttp.web) for tests: it takes subscription
requests, verifies the subscriber's intent with a GET to the callback (random challenge,
the lease it grants), and distributes a topic's content with ``X-Hub-Signature`` to the
verified, unexpired subscriptions, as the W3C Recommendation asks of a hub. Everything it
does is recorded for the tests to look at."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import web
from yarl import URL

_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256,
               "sha384": hashlib.sha384, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class Verification:
    """One verification of intent the hub made."""

    mode: str
    topic: str
    callback: str
    lease: int | None
    status: int
    confirmed: bool             # 2xx with the challenge echoed
    at: float


@dataclass
class HubSubscription:
    topic: str
    callback: str
    secret: str | None
    expires: float


@dataclass(frozen=True)
class Distribution:
    callback: str
    status: int
    at: float


class WebSubHub:
    """``lease``: the lease the hub grants whatever is asked (None: what is asked, at most
    ``max_lease``). ``algorithm``: the signature's."""

    def __init__(self, *, lease: int | None = None, max_lease: int = 864000,
                 algorithm: str = "sha256") -> None:
        self.lease = lease
        self.max_lease = max_lease
        self.algorithm = algorithm
        self.requests: list[dict[str, str]] = []        # subscription requests, as posted
        self.verifications: list[Verification] = []
        self.distributions: list[Distribution] = []
        self.subscriptions: dict[tuple[str, str], HubSubscription] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Condition()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._subscription_request)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> WebSubHub:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        assert self._port is not None, "hub not started"
        return f"http://127.0.0.1:{self._port}/"

    def active(self, topic: str) -> list[HubSubscription]:
        now = time.time()
        return [s for s in self.subscriptions.values() if s.topic == topic and s.expires > now]

    async def wait_for(self, predicate: object, timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` is true (checked at every change of the hub)."""
        assert callable(predicate)
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def _note(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # -- subscribers' requests ----------------------------------------------------------

    async def _subscription_request(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        mode, topic, callback = (form.get("hub.mode"), form.get("hub.topic"),
                                 form.get("hub.callback"))
        if mode not in ("subscribe", "unsubscribe") or not topic or not callback:
            return web.Response(status=400, text="hub.mode, hub.topic and hub.callback needed")
        secret = form.get("hub.secret")
        if secret is not None and len(secret.encode()) >= 200:
            return web.Response(status=400, text="hub.secret must be under 200 bytes")
        try:
            asked = int(form.get("hub.lease_seconds", self.max_lease))
        except ValueError:
            return web.Response(status=400, text="bad hub.lease_seconds")
        lease = self.lease if self.lease is not None else min(max(asked, 1), self.max_lease)
        # Verified after the answer, as the spec has it (the answer must not depend on it).
        task = asyncio.create_task(self._verify(mode, topic, callback, secret, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202, text="verifying")

    async def _verify(self, mode: str, topic: str, callback: str, secret: str | None,
                      lease: int) -> None:
        assert self._session is not None
        challenge = secrets.token_urlsafe(16)
        params = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
        if mode == "subscribe":
            params["hub.lease_seconds"] = str(lease)
        # Existing query parameters of the callback are kept, ours appended.
        url = URL(callback).update_query(params)
        started = time.time()
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                status, body = resp.status, await resp.text()
        except aiohttp.ClientError:
            status, body = 0, ""
        confirmed = 200 <= status < 300 and body == challenge
        self.verifications.append(Verification(mode, topic, callback,
                                               lease if mode == "subscribe" else None,
                                               status, confirmed, started))
        if confirmed:
            if mode == "subscribe":
                # The lease counts from the verification request.
                self.subscriptions[(topic, callback)] = HubSubscription(
                    topic, callback, secret, started + lease)
            else:
                self.subscriptions.pop((topic, callback), None)
        await self._note()

    # -- content distribution -----------------------------------------------------------

    async def publish(self, topic: str, *, body: bytes | None = None,
                      content_type: str | None = None) -> list[Distribution]:
        """Distribute the topic's content (fetched from it unless ``body`` is given) to
        every active subscription; returns what each callback answered."""
        assert self._session is not None
        if body is None:
            async with self._session.get(topic) as resp:
                body = await resp.read()
                content_type = content_type or resp.headers.get("Content-Type")
        done = []
        for sub in self.active(topic):
            headers = {"Content-Type": content_type or "application/octet-stream",
                       "Link": f'<{self.url}>; rel="hub", <{topic}>; rel="self"'}
            if sub.secret is not None:
                digest = hmac.new(sub.secret.encode(), body, _ALGORITHMS[self.algorithm])
                headers["X-Hub-Signature"] = f"{self.algorithm}={digest.hexdigest()}"
            try:
                async with self._session.post(sub.callback, data=body, headers=headers,
                                              allow_redirects=False) as resp:
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            if status == 410:       # the subscriber says it is gone: the hub may drop it
                self.subscriptions.pop((sub.topic, sub.callback), None)
            record = Distribution(sub.callback, status, time.time())
            self.distributions.append(record)
            done.append(record)
        await self._note()
        return done
