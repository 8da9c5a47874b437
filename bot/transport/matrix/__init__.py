"""Matrix through matrix-nio. Nothing outside this package imports nio.

``MatrixTransport`` is the Matrix side of the seam (bot.transport.base); it composes one
part per job, all sharing one logged-in client (session.Connection, through which every
request passes and has its errors turned into the bot's own, errors.py):

- session.py      login, the session file, re-login after a refused token
- encryption.py   which rooms are encrypted; the Olm machine (crypto.py) started and
                  cross-signed (cross_signing.py)
- membership.py   finding and joining rooms, members and power levels; kicks and bans
- directs.py      private conversations remembered, opened, left
- invites.py      invitations answered by the bot's policy
- events.py       an outbox row made a Matrix event; sent once (txn id, delivery key)
- messaging.py    sending, uploading, finding a delivery after a crash
- sync.py         the event stream, dispatched to the bot's handlers
- admin.py        the rooms bot.rooms manages: creation, state, directory
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bot.config import EncryptionConfig, MatrixConfig
from bot.filemodes import private_dir, tighten_tree
from bot.media import ImageSource
from bot.model import Outgoing, Sent
from bot.store.base import Store
from bot.transport.base import EventHandlers
from bot.transport.matrix.admin import RoomAdministration
from bot.transport.matrix.cross_signing import CrossSigningStatus
from bot.transport.matrix.crypto import check_store_owner, prepare_pickle_key
from bot.transport.matrix.directs import DIRECT_ROOMS_KEY, Directs
from bot.transport.matrix.encryption import CRYPTO_DIRNAME, Encryption, can_encrypt
from bot.transport.matrix.events import MatrixMessages
from bot.transport.matrix.invites import Invites
from bot.transport.matrix.membership import REMOVED_ROOMS_KEY, Membership
from bot.transport.matrix.messaging import Messages
from bot.transport.matrix.session import (
    SESSION_FILENAME,
    Connection,
    Session,
    load_saved_session,
    new_client,
)
from bot.transport.matrix.sync import SYNC_FILTER, SYNC_TOKEN_KEY, Sync

# Histories a newcomer reads from the start: an open room with one is readable by anyone.
READABLE_HISTORY = ("shared", "world_readable")

__all__ = ["CRYPTO_DIRNAME", "DIRECT_ROOMS_KEY", "REMOVED_ROOMS_KEY", "SESSION_FILENAME",
           "SYNC_FILTER", "SYNC_TOKEN_KEY", "MatrixTransport", "Session", "load_saved_session"]

log = logging.getLogger(__name__)


class MatrixTransport:
    def __init__(self, config: MatrixConfig, store: Store, storage_dir: Path, *,
                 encryption: EncryptionConfig | None = None,
                 max_connect_wait: float = 60.0, sync_timeout_ms: int = 30_000,
                 reset_cross_signing: bool = False,
                 reset_password: str | None = None) -> None:
        self._config = config
        self._max_connect_wait = max_connect_wait
        self._encryption_config = encryption or EncryptionConfig()
        crypto_dir = storage_dir / CRYPTO_DIRNAME
        encrypts = can_encrypt(self._encryption_config)
        if encrypts:
            private_dir(crypto_dir)
        self._client = new_client(config, crypto_dir=crypto_dir if encrypts else None,
                                  request_timeout=sync_timeout_ms / 1000 + 30)
        self._connection = Connection(config, self._client, storage_dir)
        self._encryption = Encryption(
            self._connection, config, self._encryption_config, crypto_dir,
            max_connect_wait=max_connect_wait, reset_cross_signing=reset_cross_signing,
            reset_password=reset_password)
        user_id = config.user_id
        self._membership = Membership(self._connection, store, user_id, self._encryption)
        self._directs = Directs(self._connection, store, user_id, self._membership,
                                self._encryption)
        self._messages = Messages(self._connection, user_id, self._membership,
                                  self._encryption)
        invites = Invites(self._connection, user_id, self._membership, self._directs,
                          self._encryption, self._messages)
        self._sync = Sync(self._connection, store, user_id, timeout_ms=sync_timeout_ms,
                          max_retry_wait=max_connect_wait, encryption=self._encryption,
                          membership=self._membership, directs=self._directs,
                          invites=invites, activity=self._messages.activity)
        self._admin = RoomAdministration(self._connection)
        # Rows of the outbox made Matrix events, sent exactly once.
        self._outgoing = MatrixMessages(self, shared=store.shared)

    @property
    def user_id(self) -> str:
        return self._config.user_id

    @property
    def login_generation(self) -> int:
        """Bumped by each re-login after a refused token."""
        return self._connection.login_generation

    @login_generation.setter
    def login_generation(self, value: int) -> None:
        self._connection.login_generation = value

    @property
    def cross_signing(self) -> CrossSigningStatus | None:
        """Whether this device is signed by the account's self-signing key (None: no
        encryption, or not known yet)."""
        return self._encryption.cross_signing

    async def connect(self) -> None:
        """Authenticate, waiting for an unreachable homeserver instead of crashing; then
        start encryption and set the display name."""
        self._connection.tighten_session_file()
        await self._directs.load()
        await self._membership.load()
        crypto_dir = self._encryption.crypto_dir
        if self._encryption.available:
            session = self._connection.load_session()
            device = self._config.device_id or (session.device_id if session else None)
            check_store_owner(crypto_dir, self._config.user_id, device)
            # Before the login loads the store: nio's default pickle key is the same for
            # every installation; ours is random, made (and the store migrated) once.
            key = await asyncio.to_thread(prepare_pickle_key, crypto_dir)
            self._client.config = dataclasses.replace(self._client.config, pickle_key=key)
        elif self._encryption_config.enabled:
            log.warning("end-to-end encryption is unavailable (the vodozemac package is not "
                        "installed): newsbot will not post into encrypted rooms")
        await self._connection.login(self._max_connect_wait)
        if self._encryption.available:
            # nio made its store files (database, trust lists) with the umask's mode.
            tighten_tree(crypto_dir)
            await self._encryption.start()
        if self._config.display_name:
            await self._connection.set_display_name(self._config.display_name)

    async def close(self) -> None:
        await self._client.close()

    # -- messaging (bot.transport.base.Messaging) ----------------------------------------

    async def resolve_room(self, room: str) -> str:
        return await self._membership.resolve_room(room)

    async def join_room(self, room: str) -> str:
        return await self._membership.join_room(room)

    async def joined_members(self, room_id: str) -> list[str]:
        return await self._membership.joined_members(room_id)

    async def power_level(self, room_id: str, user_id: str) -> float:
        return await self._membership.power_level(room_id, user_id)

    async def may_read(self, room_id: str, user_id: str) -> bool:
        rule = await self.state_event(room_id, "m.room.join_rules") or {}
        history = await self.state_event(room_id, "m.room.history_visibility")
        # No history_visibility event means "shared" (the specification's default).
        seen = (history or {}).get("history_visibility", "shared")
        if rule.get("join_rule") == "public" and seen in READABLE_HISTORY:
            return True
        member = await self.state_event(room_id, "m.room.member", user_id)
        return member is not None and member.get("membership") == "join"

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        return await self._outgoing.prepare(outgoing, images)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        return await self._outgoing.send(room_id, payload, key, attempted_at=attempted_at,
                                         now=now, fence=fence)

    async def send_message(self, room_id: str, content: dict[str, Any], txn_id: str,
                           fence: Callable[[], bool] | None = None) -> str:
        """One event as it is (the outbox's rows go through ``prepare`` and ``send``)."""
        return await self._messages.send_message(room_id, content, txn_id, fence)

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        return await self._messages.upload_media(data, content_type, filename)

    async def find_delivery(self, room_id: str, key: str, *, max_events: int = 500) -> str | None:
        return await self._messages.find_delivery(room_id, key, max_events=max_events)

    async def run_sync(self, handlers: EventHandlers) -> None:
        await self._sync.run(handlers)

    async def create_direct_room(self, user_id: str) -> str:
        return await self._directs.create(user_id)

    def is_direct(self, room_id: str) -> bool:
        return self._directs.is_direct(room_id)

    def direct_rooms(self) -> Mapping[str, str]:
        return self._directs.direct_rooms()

    async def leave_direct(self, room_id: str) -> None:
        await self._directs.leave(room_id)

    # -- room administration (bot.transport.base.RoomAdmin) ------------------------------

    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        return await self._admin.create_room(
            alias_localpart=alias_localpart, name=name, topic=topic, preset=preset,
            initial_state=initial_state, power_levels=power_levels)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return await self._admin.room_state(room_id)

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        return await self._admin.state_event(room_id, event_type, state_key)

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        return await self._admin.set_state(room_id, event_type, content, state_key)

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return await self._admin.room_event(room_id, event_id)

    async def directory_published(self, room_id: str) -> bool:
        return await self._admin.directory_published(room_id)

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        await self._admin.set_directory_published(room_id, published)
