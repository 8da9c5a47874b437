"""The logged-in nio client: login (a token, the saved session, or the password), the
session file, and the one door every request goes through (``Connection.call``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nio

from bot import USER_AGENT
from bot.config import MatrixConfig
from bot.errors import AuthError, RoomUnavailableError, TransportError
from bot.filemodes import tighten, write_private
from bot.logs import add_secret
from bot.transport.matrix.crypto import STORE_NAME, PolicyStore
from bot.transport.matrix.errors import checked

log = logging.getLogger(__name__)

SESSION_FILENAME = "matrix-session.json"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    device_id: str
    access_token: str


def new_client(config: MatrixConfig, *, crypto_dir: Path | None,
               request_timeout: float) -> nio.AsyncClient:
    """The nio client; with a crypto store in ``crypto_dir`` when it encrypts."""
    return nio.AsyncClient(
        config.homeserver,
        config.user_id,
        device_id=config.device_id or "",
        store_path=str(crypto_dir) if crypto_dir is not None else "",
        config=nio.AsyncClientConfig(
            # We decide about rate limits and outages ourselves (delivery waits, the
            # outbox keeps the item); nio's own retry loops would hide them and can
            # stall shutdown.
            max_limit_exceeded=0,
            max_timeouts=0,
            request_timeout=request_timeout,
            custom_headers={"User-Agent": USER_AGENT},
            encryption_enabled=crypto_dir is not None,
            store=PolicyStore,      # never None: nio's load_store needs a class
            store_name=STORE_NAME,
            store_sync_tokens=False,    # the bot keeps its own sync token
        ),
    )


class Connection:
    def __init__(self, config: MatrixConfig, client: nio.AsyncClient,
                 storage_dir: Path) -> None:
        self._config = config
        self.client = client
        self._session_path = storage_dir / SESSION_FILENAME
        self._login_lock = asyncio.Lock()
        self.login_generation = 0     # bumped by each re-login after a refused token

    async def call(self, what: str, request: Callable[[], Awaitable[T]], *,
                   relogin: bool = True) -> T:
        """One request, its failure turned into the bot's own exception. When the token is
        refused and a password is configured, log in again once and repeat the request."""
        token_used = self.client.access_token
        try:
            return await checked(what, request)
        except AuthError as exc:
            if not (relogin and self._config.password and not self._config.access_token):
                raise AuthError(f"{exc}; the homeserver refused newsbot's access token: give "
                                "it a valid one (or configure a password)") from exc
            async with self._login_lock:
                # The sync and the delivery workers may all hit the revoked token: one
                # login serves them all.
                if self.client.access_token == token_used:
                    log.warning("%s; logging in again with the configured password", exc)
                    await self._password_login()
                    add_secret(self.client.access_token)
                    self.login_generation += 1
            return await checked(what, request)

    def tighten_session_file(self) -> None:
        tighten(self._session_path)     # one written by an older newsbot

    async def login(self, max_wait: float) -> None:
        """Authenticate, waiting for an unreachable homeserver instead of crashing."""
        delay = 1.0
        while True:
            try:
                await self._authenticate()
                break
            except AuthError:
                raise
            except TransportError as exc:
                log.warning("%s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_wait)
        add_secret(self.client.access_token)
        log.info("logged in as %s (device %s)", self.client.user_id, self.client.device_id)

    async def _authenticate(self) -> None:
        cfg = self._config
        if cfg.access_token:
            self.client.restore_login(cfg.user_id, cfg.device_id or "", cfg.access_token)
            await self._whoami()
            return
        session = self.load_session()
        if session is not None:
            self.client.restore_login(session.user_id, session.device_id, session.access_token)
            try:
                await self._whoami()
                return
            except AuthError:
                log.warning("stored Matrix session was refused; logging in again with the "
                            "configured password")
        await self._password_login()

    async def _whoami(self) -> None:
        resp = await self.call("checking the access token", self.client.whoami,
                               relogin=False)
        if resp.user_id != self._config.user_id:
            raise AuthError(f"the access token belongs to {resp.user_id}, "
                            f"not to matrix.user_id {self._config.user_id}")

    async def _password_login(self) -> None:
        if not self._config.password:
            raise AuthError("no usable credentials: the access token was refused")
        try:
            password = self._config.password
            resp = await self.call(
                "logging in", lambda: self.client.login(password, device_name="newsbot"),
                relogin=False)
        except RoomUnavailableError as exc:  # M_FORBIDDEN here means a wrong password
            raise AuthError(str(exc)) from exc
        self._save_session(Session(resp.user_id, resp.device_id, resp.access_token))

    def load_session(self) -> Session | None:
        return load_saved_session(self._session_path.parent, self._config)

    def _save_session(self, session: Session) -> None:
        data = {"homeserver": self._config.homeserver, "user_id": session.user_id,
                "device_id": session.device_id, "access_token": session.access_token}
        write_private(self._session_path, json.dumps(data))

    async def set_display_name(self, name: str) -> None:
        try:
            current = await self.call(
                "reading the display name",
                lambda: self.client.get_displayname(self._config.user_id))
            if current.displayname != name:
                await self.call("setting the display name",
                                lambda: self.client.set_displayname(name))
        except TransportError as exc:
            log.warning("could not set the display name: %s", exc)


async def password_login(config: MatrixConfig, password: str, *,
                         request_timeout: float = 30.0) -> Session:
    """One login with ``password`` (``newsbot login``): a token for ``config.device_id``, or
    for a new device without one. Nothing is saved here: the caller writes the token where
    the configuration will read it, and the password is kept nowhere."""
    client = new_client(config, crypto_dir=None, request_timeout=request_timeout)
    try:
        resp = await checked(
            "logging in", lambda: client.login(password, device_name="newsbot"))
    except RoomUnavailableError as exc:  # M_FORBIDDEN here means a wrong password
        raise AuthError(str(exc)) from exc
    finally:
        await client.close()
    if resp.user_id != config.user_id:
        raise AuthError(f"the homeserver logged in {resp.user_id}, not {config.user_id}")
    return Session(resp.user_id, resp.device_id, resp.access_token)


def load_saved_session(storage_dir: Path, config: MatrixConfig) -> Session | None:
    """The session a password login saved, if it is this account's on this homeserver."""
    path = storage_dir / SESSION_FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s); logging in again", path, type(exc).__name__)
        return None
    if data.get("homeserver") != config.homeserver or data.get("user_id") != config.user_id:
        return None
    return Session(data["user_id"], data["device_id"], data["access_token"])
