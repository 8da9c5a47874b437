"""The XMPP connection: one slixmpp client, authenticated, kept up with stream management
(XEP-0198) and reconnected with backoff when it drops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import slixmpp

from bot.errors import AuthError, TemporaryTransportError

log = logging.getLogger(__name__)

PLUGINS = ("xep_0030", "xep_0004", "xep_0045", "xep_0059", "xep_0066", "xep_0198",
           "xep_0199", "xep_0203", "xep_0249", "xep_0297", "xep_0308", "xep_0313",
           "xep_0359", "xep_0428", "xep_0461")
RECONNECT_FIRST = 1.0
RECONNECT_CAP = 300.0


@dataclass(frozen=True, slots=True)
class XmppAccount:
    """What the transport needs to log in (bot.config.XmppConfig gives it)."""

    jid: str
    password: str
    nick: str
    host: str | None = None
    port: int | None = None
    tls: bool = True
    resource: str = "newsbot"

    def __repr__(self) -> str:     # never the password, whoever logs this
        return f"XmppAccount(jid={self.jid!r}, nick={self.nick!r}, host={self.host!r})"


class Session:
    def __init__(self, account: XmppAccount) -> None:
        self.account = account
        client = slixmpp.ClientXMPP(f"{account.jid}/{account.resource}", account.password)
        for plugin in PLUGINS:
            client.register_plugin(plugin)
        client.enable_direct_tls = False
        if not account.tls:     # loopback only: config refuses it for other hosts
            client.enable_starttls = False
            client.enable_plaintext = True
            client.plugin["feature_mechanisms"].unencrypted_scram = True
        else:
            client.enable_plaintext = False
        # Presence subscriptions are refused: nobody learns when the bot is online.
        client.roster.auto_authorize = False
        client.roster.auto_subscribe = False
        client.whitespace_keepalive = True
        self.client = client
        self.ready = asyncio.Event()
        self._closing = False
        self._auth_failed = False
        self._backoff = RECONNECT_FIRST
        self._reconnect: asyncio.Task[None] | None = None
        client.add_event_handler("session_start", self._started)
        client.add_event_handler("session_resumed", self._started)
        client.add_event_handler("failed_auth", self._failed_auth)
        client.add_event_handler("disconnected", self._disconnected)

    @property
    def bare_jid(self) -> str:
        return str(self.client.boundjid.bare)

    def _started(self, _event: object) -> None:
        self._backoff = RECONNECT_FIRST
        self.client.send_presence()
        self.ready.set()

    def _failed_auth(self, _event: object) -> None:
        self._auth_failed = True
        self.ready.set()    # wakes connect(), which reports it

    def _disconnected(self, _event: object) -> None:
        self.ready.clear()
        if self._closing or self._auth_failed:
            return
        delay, self._backoff = self._backoff, min(self._backoff * 2, RECONNECT_CAP)
        log.warning("XMPP connection lost; reconnecting in %.0f s", delay)
        self._reconnect = asyncio.get_running_loop().create_task(self._connect_later(delay))

    async def _connect_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._closing:
            self._start_connecting()

    def _start_connecting(self) -> None:
        account = self.account
        if account.host:
            self.client.connect(account.host, account.port or 5222)
        else:
            self.client.connect()

    async def connect(self) -> None:
        """Connect and authenticate (slixmpp retries with its own backoff until then)."""
        self._start_connecting()
        await self.ready.wait()
        if self._auth_failed:
            raise AuthError(f"the XMPP server refused the password of {self.account.jid}")
        log.info("connected to XMPP as %s", self.client.boundjid.full)

    def check_ready(self) -> None:
        if not self.ready.is_set():
            raise TemporaryTransportError("not connected to the XMPP server")

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        if self.ready.is_set():
            # A clean end of stream (the server stops routing to us at once), bounded.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.disconnect(wait=2.0), 5)
        self.client.cancel_connection_attempt()
        self.ready.clear()
