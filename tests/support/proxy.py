"""A reverse proxy in front of a homeserver that can misbehave on demand.

Production homeservers sit behind nginx or Caddy, which answer 502/504 with an HTML page
while the homeserver restarts, or hold requests when it is slow. Tests point the bot at
this proxy and switch its ``mode``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
from aiohttp import web

Mode = Literal["pass", "502", "504", "slow"]

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                "content-encoding"}
_ERROR_PAGE = "<html><head><title>{code}</title></head><body><h1>{code}</h1></body></html>"


class FaultyProxy:
    def __init__(self, upstream: str, *, slow_seconds: float = 3.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode: Mode = "pass"
        self.slow_seconds = slow_seconds
        self.faults_served = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A stop does not wait for the requests still proxied (a client's /sync long poll
        # waits up to 30 s for the homeserver's answer): they are cut, as a restarted
        # nginx would cut them.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> FaultyProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode in ("502", "504"):
            self.faults_served += 1
            if mode == "504":
                await asyncio.sleep(0.2)
            return web.Response(status=int(mode), content_type="text/html",
                                text=_ERROR_PAGE.format(code=mode))
        if mode == "slow":
            self.faults_served += 1
            await asyncio.sleep(self.slow_seconds)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        try:
            async with self._session.request(
                    request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                    data=body, allow_redirects=False) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items()
                       if k.lower() not in _HOP_HEADERS}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except aiohttp.ClientConnectionError:
            # What nginx says when the homeserver behind it is down.
            return web.Response(status=502, content_type="text/html",
                                text=_ERROR_PAGE.format(code="502"))
