"""Matrix through matrix-nio. The only module that imports nio.

nio returns errors as values; ``_check`` turns every one of them, and every connection
failure, into the bot's own exceptions, so nothing above this module inspects nio types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nio
from nio.crypto import ENCRYPTION_ENABLED

from bot import USER_AGENT
from bot.config import EncryptionConfig, MatrixConfig
from bot.errors import (
    AuthError,
    MessageRejectedError,
    RateLimitedError,
    RoomUnavailableError,
    TemporaryTransportError,
    TransportError,
)
from bot.filemodes import private_dir, tighten, tighten_tree, write_private
from bot.logs import add_secret
from bot.render import safe_event_content, safe_state_content
from bot.store import Store
from bot.transport.base import (
    DELIVERY_KEY_FIELD,
    EventHandlers,
    IncomingMessage,
    InviteHandler,
    JoinToPoint,
)
from bot.transport.cross_signing import (
    CrossSigningError,
    CrossSigningStatus,
    KeysApi,
    ensure_device_signed,
)
from bot.transport.matrix_crypto import (
    STORE_NAME,
    Crypto,
    CryptoStoreError,
    PolicyStore,
    check_store_owner,
    prepare_pickle_key,
)

log = logging.getLogger(__name__)

SESSION_FILENAME = "matrix-session.json"
CRYPTO_DIRNAME = "crypto"
SYNC_TOKEN_KEY = "matrix.sync_token"
REMOVED_ROOMS_KEY = "matrix.removed_rooms"
DIRECT_ROOMS_KEY = "matrix.direct_rooms"

# Keep the sync light: no presence, no account data, no typing/receipts, members lazily.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {
        # Membership changes (a kick, a ban, a member whose devices need room keys),
        # commands (clear or encrypted), and what encryption depends on.
        "timeline": {"limit": 20, "types": [
            "m.room.member", "m.room.message", "m.room.encrypted", "m.room.encryption",
            "m.room.history_visibility"]},
        "ephemeral": {"types": []},
        "account_data": {"types": []},
        "state": {"lazy_load_members": True, "types": [
            "m.room.encryption", "m.room.member", "m.room.history_visibility"]},
    },
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    device_id: str
    access_token: str


class MatrixTransport:
    def __init__(self, config: MatrixConfig, store: Store, storage_dir: Path, *,
                 encryption: EncryptionConfig | None = None,
                 max_connect_wait: float = 60.0, sync_timeout_ms: int = 30_000,
                 reset_cross_signing: bool = False,
                 reset_password: str | None = None) -> None:
        self._config = config
        self._reset_cross_signing = reset_cross_signing
        # The account's password for replacing cross-signing keys, when the config has
        # none (asked by `newsbot run --reset-cross-signing`); used once, never stored.
        self._reset_password = reset_password
        # Whether this device is signed by the account's self-signing key (None: no
        # encryption, or not known yet).
        self.cross_signing: CrossSigningStatus | None = None
        self._store = store
        self._session_path = storage_dir / SESSION_FILENAME
        self._max_connect_wait = max_connect_wait
        self._sync_timeout_ms = sync_timeout_ms
        self._encryption = encryption or EncryptionConfig()
        wanted = self._encryption.enabled
        # Without vodozemac nio would post clear text into encrypted rooms: we refuse
        # those rooms instead (send_message), and say so at start.
        self._can_encrypt = wanted and ENCRYPTION_ENABLED
        self._crypto_dir = storage_dir / CRYPTO_DIRNAME
        if self._can_encrypt:
            private_dir(self._crypto_dir)
        self._client = nio.AsyncClient(
            config.homeserver,
            config.user_id,
            device_id=config.device_id or "",
            store_path=str(self._crypto_dir) if self._can_encrypt else "",
            config=nio.AsyncClientConfig(
                # We decide about rate limits and outages ourselves (delivery waits, the
                # outbox keeps the item); nio's own retry loops would hide them and can
                # stall shutdown.
                max_limit_exceeded=0,
                max_timeouts=0,
                request_timeout=self._sync_timeout_ms / 1000 + 30,
                custom_headers={"User-Agent": USER_AGENT},
                encryption_enabled=self._can_encrypt,
                store=PolicyStore,      # never None: nio's load_store needs a class
                store_name=STORE_NAME,
                store_sync_tokens=False,    # the bot keeps its own sync token
            ),
        )
        self._crypto: Crypto | None = None
        self._encrypted: set[str] = set()
        self._removed: dict[str, str] | None = None
        self._direct: dict[str, str] | None = None     # private conversation -> person
        # Told when a private conversation ends, however it ends (set by run_sync).
        self._on_direct_closed: Callable[[str, str], None] | None = None
        # Private conversations the bot opened, and who it invited (key sharing).
        self._invitees: dict[str, tuple[str, ...]] = {}
        self._login_lock = asyncio.Lock()
        self._started_ms = int(time.time() * 1000)
        self.login_generation = 0     # bumped by each re-login after a refused token

    @property
    def user_id(self) -> str:
        return self._config.user_id

    # -- errors ------------------------------------------------------------------------

    async def _call(self, what: str, request: Callable[[], Awaitable[T]], *,
                    relogin: bool = True) -> T:
        """One request, its failure turned into the bot's own exception. When the token is
        refused and a password is configured, log in again once and repeat the request."""
        token_used = self._client.access_token
        try:
            return await self._request(what, request)
        except AuthError as exc:
            if not (relogin and self._config.password and not self._config.access_token):
                raise AuthError(f"{exc}; the homeserver refused newsbot's access token: give "
                                "it a valid one (or configure a password)") from exc
            async with self._login_lock:
                # The sync and the delivery workers may all hit the revoked token: one
                # login serves them all.
                if self._client.access_token == token_used:
                    log.warning("%s; logging in again with the configured password", exc)
                    await self._password_login()
                    add_secret(self._client.access_token)
                    self.login_generation += 1
            return await self._request(what, request)

    async def _request(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        try:
            response = await request()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryTransportError(f"{what}: homeserver unreachable ({_describe(exc)})") \
                from exc
        except ValueError as exc:   # a body that is not the JSON nio expected (a proxy page)
            raise TemporaryTransportError(f"{what}: unreadable answer ({type(exc).__name__})") \
                from exc
        except (nio.LocalProtocolError, nio.EncryptionError) as exc:
            raise TemporaryTransportError(f"{what}: {exc}") from exc
        if isinstance(response, nio.ErrorResponse):
            raise _error_for(what, response)
        return response

    # -- connecting --------------------------------------------------------------------

    async def connect(self) -> None:
        """Authenticate, waiting for an unreachable homeserver instead of crashing."""
        tighten(self._session_path)     # one written by an older newsbot
        if self._can_encrypt:
            session = self._load_session()
            device = self._config.device_id or (session.device_id if session else None)
            check_store_owner(self._crypto_dir, self._config.user_id, device)
            # Before the login loads the store: nio's default pickle key is the same for
            # every installation; ours is random, made (and the store migrated) once.
            key = await asyncio.to_thread(prepare_pickle_key, self._crypto_dir)
            self._client.config = dataclasses.replace(self._client.config, pickle_key=key)
        elif self._encryption.enabled:
            log.warning("end-to-end encryption is unavailable (the vodozemac package is not "
                        "installed): newsbot will not post into encrypted rooms")
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
                delay = min(delay * 2, self._max_connect_wait)
        add_secret(self._client.access_token)
        log.info("logged in as %s (device %s)", self._client.user_id, self._client.device_id)
        if self._can_encrypt:
            # nio made its store files (database, trust lists) with the umask's mode.
            tighten_tree(self._crypto_dir)
            await self._start_crypto()
        if self._config.display_name:
            await self._set_display_name(self._config.display_name)

    async def _start_crypto(self) -> None:
        if self._client.olm is None:
            raise CryptoStoreError(f"the crypto store in {self._crypto_dir} could not be "
                                   "loaded")
        crypto = Crypto(self._client, self._crypto_dir, trust=self._encryption.trust,
                        call=self._call)
        crypto.start()
        delay = 1.0
        while True:
            try:
                await crypto.check_identity()
                await crypto.housekeeping()      # our keys uploaded before anyone needs them
                break
            except TemporaryTransportError as exc:
                log.warning("%s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_connect_wait)
        self._crypto = crypto
        log.info("end-to-end encryption ready (trust: %s; keys in %s)",
                 self._encryption.trust, self._crypto_dir)
        await self._cross_sign()

    async def _cross_sign(self) -> None:
        """Sign this device with the account's self-signing key (made if the account has
        none), so members' clients trust it; said once in the log either way. Never
        fatal: an unsigned device still posts (with a warning shield in clients)."""
        api = KeysApi(self._config.homeserver, self._client.access_token)
        delay = 1.0
        while True:
            try:
                status = await ensure_device_signed(
                    api, self._client.user_id, self._client.device_id, self._crypto_dir,
                    password=self._config.password or self._reset_password,
                    reset=self._reset_cross_signing)
                break
            except TemporaryTransportError as exc:
                log.warning("cross-signing: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_connect_wait)
            except CrossSigningError as exc:
                status = CrossSigningStatus(False, str(exc))
                break
        self.cross_signing = status
        if status.signed:
            log.info("cross-signing: %s; members' clients show its messages as sent by a "
                     "device its owner verified", status.detail)
        else:
            log.warning("cross-signing: this device is NOT signed: %s. Element marks its "
                        "messages with a warning, and members who exclude insecure devices "
                        "cannot read them", status.detail)

    async def _authenticate(self) -> None:
        cfg = self._config
        if cfg.access_token:
            self._client.restore_login(cfg.user_id, cfg.device_id or "", cfg.access_token)
            await self._whoami()
            return
        session = self._load_session()
        if session is not None:
            self._client.restore_login(session.user_id, session.device_id, session.access_token)
            try:
                await self._whoami()
                return
            except AuthError:
                log.warning("stored Matrix session was refused; logging in again with the "
                            "configured password")
        await self._password_login()

    async def _whoami(self) -> None:
        resp = await self._call("checking the access token", self._client.whoami,
                                relogin=False)
        if resp.user_id != self._config.user_id:
            raise AuthError(f"the access token belongs to {resp.user_id}, "
                            f"not to matrix.user_id {self._config.user_id}")

    async def _password_login(self) -> None:
        if not self._config.password:
            raise AuthError("no usable credentials: the access token was refused")
        try:
            password = self._config.password
            resp = await self._call(
                "logging in", lambda: self._client.login(password, device_name="newsbot"),
                relogin=False)
        except RoomUnavailableError as exc:  # M_FORBIDDEN here means a wrong password
            raise AuthError(str(exc)) from exc
        self._save_session(Session(resp.user_id, resp.device_id, resp.access_token))

    def _load_session(self) -> Session | None:
        return load_saved_session(self._session_path.parent, self._config)

    def _save_session(self, session: Session) -> None:
        data = {"homeserver": self._config.homeserver, "user_id": session.user_id,
                "device_id": session.device_id, "access_token": session.access_token}
        write_private(self._session_path, json.dumps(data))

    async def _set_display_name(self, name: str) -> None:
        try:
            current = await self._call(
                "reading the display name",
                lambda: self._client.get_displayname(self._config.user_id))
            if current.displayname != name:
                await self._call("setting the display name",
                                 lambda: self._client.set_displayname(name))
        except TransportError as exc:
            log.warning("could not set the display name: %s", exc)

    # -- rooms -------------------------------------------------------------------------

    async def resolve_room(self, room: str) -> str:
        """The room id of an alias (resolved anew each time: aliases move)."""
        if not room.startswith("#"):
            return room
        resolved = await self._call(f"resolving {room}",
                                    lambda: self._client.room_resolve_alias(room))
        return str(resolved.room_id)

    async def join_room(self, room: str) -> str:
        room_id = await self.resolve_room(room)
        removed = self._removed_rooms().get(room_id)
        if removed:
            # Rejoining a room we were kicked from would override the moderators' decision.
            raise RoomUnavailableError(f"{removed}; invite newsbot again to resume")
        # Joining by the alias lets the homeserver use the servers the alias names.
        await self._call(f"joining {room}", lambda: self._client.join(room))
        await self._learn_encryption(room_id)
        return room_id

    async def _learn_encryption(self, room_id: str) -> None:
        """Whether a room just joined is encrypted, before its first message from us."""
        try:
            encryption = await self._call(
                f"reading {room_id}'s encryption",
                lambda: self._client.room_get_state_event(room_id, "m.room.encryption"))
            self._encrypted.add(room_id)
            if self._crypto is not None and isinstance(encryption.content, dict):
                # Its rotation settings, before the first message: the sync may bring the
                # state event only later.
                self._crypto.room_settings[room_id] = dict(encryption.content)
        except RoomUnavailableError as exc:
            if exc.errcode != "M_NOT_FOUND":
                raise
            self._encrypted.discard(room_id)  # no such state event: a clear room

    async def send_message(self, room_id: str, content: dict[str, object], txn_id: str) -> str:
        content = safe_event_content(content)  # whoever wrote it: one sanitiser, one cleaner
        removed = self._removed_rooms().get(room_id)
        if removed:
            raise RoomUnavailableError(f"{removed}; invite newsbot again to resume")
        if room_id in self._encrypted:
            if self._crypto is None:
                # Sending here would put the news in clear text into an encrypted room.
                raise RoomUnavailableError(
                    f"{room_id} is end-to-end encrypted and encryption is unavailable "
                    "(disabled, or the vodozemac package missing); refusing to post in the "
                    "clear")
            await self._crypto.prepare_send(room_id, self._invitees.get(room_id, ()))
        elif self._client.olm is not None and room_id not in self._client.rooms:
            # nio refuses to send into a room it has not seen in a sync once it encrypts.
            self._client.rooms[room_id] = nio.MatrixRoom(room_id, self._client.user_id)
        resp = await self._call(f"sending to {room_id}", lambda: self._client.room_send(
            room_id, "m.room.message", dict(content), tx_id=txn_id,
            ignore_unverified_devices=True))
        self._invitees.pop(room_id, None)       # their key went with this message
        return str(resp.event_id)

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        """Put bytes into the homeserver's media repository; returns the mxc:// URI."""
        async def upload() -> Any:
            resp, _ = await self._client.upload(lambda _got429, _timeouts: io.BytesIO(data),
                                                content_type=content_type, filename=filename,
                                                filesize=len(data))
            return resp
        resp = await self._call(f"uploading {filename}", upload)
        return str(resp.content_uri)

    async def find_delivery(self, room_id: str, key: str, *, max_events: int = 500) -> str | None:
        token: str | None = None
        scanned = 0
        event_filter = {"types": ["m.room.message", "m.room.encrypted"],
                        "senders": [self._config.user_id]}
        while scanned < max_events:
            resp = await self._call(
                f"reading {room_id}'s history",
                functools.partial(self._client.room_messages, room_id, start=token, limit=100,
                                  message_filter=event_filter))
            for event in resp.chunk:     # nio decrypted what it could
                content = event.source.get("content", {})
                if isinstance(content, dict) and content.get(DELIVERY_KEY_FIELD) == key:
                    return str(event.event_id)
            scanned += len(resp.chunk)
            if not resp.chunk or not resp.end or resp.end == token:
                return None
            token = resp.end
        return None

    # -- the event stream --------------------------------------------------------------

    async def run_sync(self, handlers: EventHandlers) -> None:
        since = self._store.get(SYNC_TOKEN_KEY)
        # Commands sent while the bot was down are not replayed: only those sent after
        # this bot started count.
        started_ms = self._started_ms
        self._on_direct_closed = handlers.on_direct_closed
        await self._reconcile_direct()
        delay = 1.0
        while True:
            try:
                resp = await self._call("syncing", functools.partial(
                    self._client.sync, timeout=self._sync_timeout_ms, sync_filter=SYNC_FILTER,
                    since=since))
            except AuthError:
                raise
            except TransportError as exc:
                # Whatever a restarting homeserver or its proxy answers, the stream resumes.
                log.warning("%s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_connect_wait)
                continue
            delay = 1.0
            for room_id, info in resp.rooms.invite.items():
                if await self._handle_invite(room_id, info, handlers.on_invite) and \
                        handlers.on_joined:
                    handlers.on_joined(room_id)
            for room_id, left in resp.rooms.leave.items():
                self._note_removal(room_id, left.timeline.events)
                if room_id in self._direct_rooms():
                    # Kicked, banned, or left some other way: not a conversation any more
                    # (nobody is pointed to it, it no longer counts toward the cap).
                    log.info("lost the private conversation %s: forgot it", room_id)
                    self._forget_direct(room_id)
            if self._crypto is not None:
                try:
                    await self._crypto.after_sync(resp, self._encrypted)
                except TransportError as exc:
                    if isinstance(exc, AuthError):
                        raise
                    log.warning("encryption housekeeping: %s", exc)
            for room_id, joined in resp.rooms.join.items():
                for event in joined.state:
                    if isinstance(event, nio.RoomEncryptionEvent):
                        self._encrypted.add(room_id)
                if await self._close_if_left(room_id, [*joined.state,
                                                       *joined.timeline.events]):
                    continue
                if handlers.on_message is not None:
                    for event in joined.timeline.events:
                        message = self._incoming(room_id, event.source, started_ms)
                        if message is not None:
                            handlers.on_message(message)
                if handlers.on_member_joined is not None:
                    for event in joined.timeline.events:
                        if self._is_new_join(event.source, started_ms):
                            handlers.on_member_joined(room_id, str(event.source["state_key"]),
                                                      str(event.source.get("event_id")))
            since = resp.next_batch
            self._store.put(SYNC_TOKEN_KEY, since)

    def _incoming(self, room_id: str, source: dict[str, Any],
                  started_ms: int) -> IncomingMessage | None:
        content = source.get("content")
        if source.get("type") != "m.room.message" or not isinstance(content, dict):
            return None
        if source.get("sender") == self._config.user_id:
            return None
        # m.notice is what bots send: answering another bot could loop forever.
        if content.get("msgtype") != "m.text" or not isinstance(content.get("body"), str):
            return None
        relation = content.get("m.relates_to")
        if "m.new_content" in content or (isinstance(relation, dict)
                                          and relation.get("rel_type") == "m.replace"):
            return None     # an edit: the command it edits was handled (or not) already
        timestamp = source.get("origin_server_ts")
        if not isinstance(timestamp, int) or timestamp < started_ms:
            return None
        return IncomingMessage(room_id, str(source.get("sender")), str(source.get("event_id")),
                               content["body"], timestamp)

    def _is_new_join(self, source: dict[str, Any], started_ms: int) -> bool:
        if source.get("type") != "m.room.member" or source.get("state_key") in (
                None, self._config.user_id):
            return False
        content = source.get("content") or {}
        previous = (source.get("unsigned") or {}).get("prev_content") or {}
        timestamp = source.get("origin_server_ts")
        return (content.get("membership") == "join" and previous.get("membership") != "join"
                and isinstance(timestamp, int) and timestamp >= started_ms)

    async def create_direct_room(self, user_id: str) -> str:
        # Encrypted from the start when the bot can encrypt: a private conversation.
        state = [{"type": "m.room.encryption", "state_key": "",
                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if self._crypto else []
        resp = await self._call("opening a private conversation",
                                lambda: self._client.room_create(
                                    is_direct=True, invite=[user_id], initial_state=state,
                                    preset=nio.api.RoomPreset.trusted_private_chat))
        room_id = str(resp.room_id)
        if state:
            self._encrypted.add(room_id)
            self._invitees[room_id] = (user_id,)
        self._mark_direct(room_id, user_id)
        return room_id

    async def joined_members(self, room_id: str) -> list[str]:
        resp = await self._call(f"reading {room_id}'s members",
                                lambda: self._client.joined_members(room_id))
        return [str(member.user_id) for member in resp.members]

    async def power_level(self, room_id: str, user_id: str) -> float:
        # Two state events, not the room's whole state (megabytes in a large room).
        levels = await self._state_content(room_id, "m.room.power_levels")
        users = levels.get("users", {}) if levels else {}
        if isinstance(users, dict) and user_id in users:
            return float(users[user_id])
        content = await self._state_content(room_id, "m.room.create") or {}
        version = str(content.get("room_version", "1"))
        creators = set(content.get("additional_creators", []))
        if "creator" in content:
            creators.add(content["creator"])
        if version.isdigit() and int(version) >= 12:
            creators.add(await self._create_sender(room_id))
            if user_id in creators:
                return math.inf     # creators outrank every power level from version 12 on
        if levels is None:
            return 100.0 if user_id in creators else 0.0
        return float(levels.get("users_default", 0))

    async def _state_content(self, room_id: str, event_type: str) -> dict[str, Any] | None:
        try:
            resp = await self._call(f"reading {room_id}'s {event_type}",
                                    lambda: self._client.room_get_state_event(room_id,
                                                                               event_type))
        except RoomUnavailableError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return resp.content if isinstance(resp.content, dict) else {}

    async def _create_sender(self, room_id: str) -> str:
        """Who created the room (v12 creators are not listed in power levels). Room
        version 12 room ids are the create event's hash, so the event is fetchable."""
        event_id = "$" + room_id[1:].split(":", 1)[0]
        resp = await self._call(f"reading {room_id}'s creation event",
                                lambda: self._client.room_get_event(room_id, event_id))
        return str(resp.event.sender)

    async def _handle_invite(self, room_id: str, info: Any, on_invite: InviteHandler) -> bool:
        inviter, is_direct = "", False
        for event in info.invite_state:
            if getattr(event, "state_key", None) == self._config.user_id and \
                    getattr(event, "membership", None) == "invite":
                inviter = event.sender
                content = getattr(event, "content", None)
                is_direct = isinstance(content, dict) and content.get("is_direct") is True
        try:
            answer = await on_invite(room_id, inviter, is_direct)
            if isinstance(answer, JoinToPoint):
                await self._point_elsewhere(room_id, answer.notice)
                return False
            if answer:
                self._set_removed(room_id, None)
                await self._call(f"joining {room_id}", lambda: self._client.join(room_id))
                if is_direct:
                    # "is_direct" is the inviter's word: a conversation with more people
                    # is a group room, which only admins may bring the bot into.
                    if len(await self.joined_members(room_id)) > 2:
                        log.warning("left %s: invited as a private conversation, but it has "
                                    "more members", room_id)
                        await self._call(f"leaving {room_id}",
                                         lambda: self._client.room_leave(room_id))
                        return False
                    self._mark_direct(room_id, inviter)
                return True
            await self._call(f"rejecting the invite to {room_id}",
                             lambda: self._client.room_leave(room_id))
        except TransportError as exc:
            log.warning("invite to %s from %s: %s", room_id, inviter or "?", exc)
        return False

    def _note_removal(self, room_id: str, events: list[Any]) -> None:
        """Remember a kick or ban (across restarts): the room's deliveries then wait."""
        for event in events:
            if not isinstance(event, nio.RoomMemberEvent) or \
                    event.state_key != self._config.user_id:
                continue
            if event.membership == "ban":
                reason = f"newsbot was banned from {room_id} by {event.sender}"
            elif event.membership == "leave" and event.sender != self._config.user_id:
                reason = f"newsbot was removed from {room_id} by {event.sender}"
            else:
                continue
            why = event.content.get("reason") if isinstance(event.content, dict) else None
            if why:
                reason += f" ({str(why)[:200]})"
            self._set_removed(room_id, reason)
            log.error("%s; its deliveries wait until newsbot is invited again", reason)

    def is_direct(self, room_id: str) -> bool:
        """Did the bot join this room as a private conversation with one person?"""
        return room_id in self._direct_rooms()

    def direct_rooms(self) -> dict[str, str]:
        return dict(self._direct_rooms())

    def _direct_rooms(self) -> dict[str, str]:
        if self._direct is None:
            raw = self._store.get(DIRECT_ROOMS_KEY)
            loaded = json.loads(raw) if raw else {}
            # Before people were recorded, a list of room ids: their person is unknown.
            self._direct = dict.fromkeys(loaded, "") if isinstance(loaded, list) \
                else {str(k): str(v) for k, v in loaded.items()}
        return self._direct

    async def leave_direct(self, room_id: str) -> None:
        """Leave a private conversation and forget it was one (``forget me``, its person
        left, a welcome nobody answered)."""
        await self._leave_direct(room_id)

    async def _leave_direct(self, room_id: str, person: str = "") -> None:
        try:
            await self._call("leaving a private conversation",
                             lambda: self._client.room_leave(room_id))
        except RoomUnavailableError as exc:
            # Not in it any more (kicked meanwhile, or gone): forgotten all the same.
            log.info("leaving a private conversation: %s", exc)
        self._forget_direct(room_id, person)

    def _forget_direct(self, room_id: str, person: str = "") -> None:
        """The bot is no longer in this conversation: the memory follows its membership,
        and whoever needs to know is told (subscriptions, the room's delivery worker)."""
        rooms = self._direct_rooms()
        known = rooms.pop(room_id, None)
        if known is None:
            return
        self._store.put(DIRECT_ROOMS_KEY, json.dumps(rooms, sort_keys=True))
        if self._on_direct_closed is not None:
            self._on_direct_closed(room_id, known or person)

    async def _reconcile_direct(self) -> None:
        """At start: forget the conversations the bot is no longer in (lost while it was
        stopped, or before the memory followed its membership)."""
        if not self._direct_rooms():
            return
        try:
            resp = await self._call("listing the joined rooms", self._client.joined_rooms)
        except AuthError:
            raise
        except TransportError as exc:
            log.warning("could not check the private conversations: %s", exc)
            return
        joined = set(resp.rooms)
        lost = [room_id for room_id in self._direct_rooms() if room_id not in joined]
        for room_id in lost:
            self._forget_direct(room_id)
        if lost:
            log.info("forgot %d private conversation(s) newsbot is no longer in", len(lost))

    def _mark_direct(self, room_id: str, person: str) -> None:
        rooms = self._direct_rooms()
        if rooms.get(room_id) != person:
            rooms[room_id] = person
            self._store.put(DIRECT_ROOMS_KEY, json.dumps(rooms, sort_keys=True))

    async def _close_if_left(self, room_id: str, events: list[Any]) -> bool:
        """The person of a private conversation left it (or declined the bot's
        invitation): the bot leaves too, so no conversation is kept forever. True when
        it left."""
        person = self._direct_rooms().get(room_id)
        if person is None:
            return False
        # The latest membership of each other person, in order (state, then timeline): one
        # who left and came back in the same batch is still there.
        latest = {str(event.state_key): event.membership for event in events
                  if isinstance(event, nio.RoomMemberEvent)
                  and event.state_key != self._config.user_id
                  and (not person or event.state_key == person)}
        gone = [user for user, membership in latest.items() if membership in ("leave", "ban")]
        if not gone:
            return False
        try:
            if not person and len(await self.joined_members(room_id)) > 1:
                return False    # person unknown: leave only once nobody else is there
            await self._leave_direct(room_id, person=gone[0])   # tells on_direct_closed
        except TransportError as exc:
            log.warning("could not leave the private conversation %s: %s", room_id, exc)
            return False
        log.info("left a private conversation: its person left it")
        return True

    async def _point_elsewhere(self, room_id: str, notice: str) -> None:
        """Join only to say ``notice``, then leave: the person learns where to write."""
        await self._call(f"joining {room_id}", lambda: self._client.join(room_id))
        try:
            await self._learn_encryption(room_id)
            body: dict[str, object] = {"msgtype": "m.notice", "body": notice}
            txn = "newsbot.pointer." + hashlib.sha256(room_id.encode()).hexdigest()[:32]
            await self.send_message(room_id, body, txn)
        except TransportError as exc:
            log.warning("could not point a second private conversation to the first: %s",
                        exc)
        finally:
            await self._call(f"leaving {room_id}", lambda: self._client.room_leave(room_id))

    def _removed_rooms(self) -> dict[str, str]:
        if self._removed is None:
            raw = self._store.get(REMOVED_ROOMS_KEY)
            self._removed = json.loads(raw) if raw else {}
        return self._removed

    def _set_removed(self, room_id: str, reason: str | None) -> None:
        rooms = self._removed_rooms()
        if reason is None:
            if rooms.pop(room_id, None) is None:
                return
        else:
            rooms[room_id] = reason
        self._store.put(REMOVED_ROOMS_KEY, json.dumps(rooms))

    async def close(self) -> None:
        await self._client.close()

    # -- rooms the bot manages (bot.rooms) ---------------------------------------------

    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        # Always unlisted at first: homeservers may refuse to publish (Synapse does unless
        # its room_list_publication_rules allow it), and that must not prevent creation.
        resp = await self._call(f"creating #{alias_localpart}", lambda: self._client.room_create(
            visibility=nio.api.RoomVisibility.private, alias=alias_localpart, name=name,
            topic=topic, preset=nio.api.RoomPreset(preset), initial_state=initial_state,
            power_level_override=power_levels or None))
        return str(resp.room_id)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        resp = await self._call(f"reading {room_id}'s state",
                                lambda: self._client.room_get_state(room_id))
        return [event for event in resp.events if isinstance(event, dict)]

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        try:
            resp = await self._call(
                f"reading {event_type} in {room_id}",
                lambda: self._client.room_get_state_event(room_id, event_type, state_key))
        except RoomUnavailableError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return dict(resp.content)

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        content = safe_state_content(event_type, content)   # a topic may show an item
        resp = await self._call(
            f"setting {event_type} in {room_id}",
            lambda: self._client.room_put_state(room_id, event_type, content, state_key))
        return str(resp.event_id)

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        resp = await self._call(f"reading event {event_id} in {room_id}",
                                lambda: self._client.room_get_event(room_id, event_id))
        return dict(resp.event.source)

    async def directory_published(self, room_id: str) -> bool:
        resp = await self._call(f"reading {room_id}'s directory listing",
                                lambda: self._client.room_get_visibility(room_id))
        return str(resp.visibility) == "public"

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        # nio has no call for this endpoint; its generic request keeps our error handling.
        path = nio.Api._build_path(["directory", "list", "room", room_id])
        body = nio.Api.to_json({"visibility": "public" if published else "private"})
        await self._call(f"{'listing' if published else 'unlisting'} {room_id} in the "
                         "directory", lambda: self._client._send(
                             nio.responses.EmptyResponse, "PUT", path, body))


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return type(exc).__name__


_REJECTED_CODES = {"M_TOO_LARGE", "M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM"}


def _error_for(what: str, resp: nio.ErrorResponse) -> TransportError:
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    code = resp.status_code or ""
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        retry = (resp.retry_after_ms or 5000) / 1000
        return RateLimitedError(f"{what}: rate limited", retry_after=retry)
    if not code.startswith("M_"):
        # No Matrix error code: a proxy or a restarting server answered, not the
        # homeserver's verdict on our request. Worth retrying.
        return TemporaryTransportError(f"{what}: HTTP {status} from the homeserver's address")
    text = f"{what}: {code} {resp.message}".strip()
    if code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        return AuthError(text)
    if code in ("M_FORBIDDEN", "M_NOT_FOUND"):
        return RoomUnavailableError(text, errcode=code)
    if code in _REJECTED_CODES or status == 413:
        return MessageRejectedError(text)
    return TemporaryTransportError(text)
