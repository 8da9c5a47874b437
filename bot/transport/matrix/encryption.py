"""Which rooms are encrypted, and the Olm machine (crypto.py) started, cross-signed and
kept after each sync. Without it, encrypted rooms are refused rather than posted to in
the clear."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import nio
from nio.crypto import ENCRYPTION_ENABLED

from bot.config import EncryptionConfig, MatrixConfig
from bot.errors import AuthError, RoomUnavailableError, TemporaryTransportError, TransportError
from bot.transport.matrix.cross_signing import (
    CrossSigningError,
    CrossSigningStatus,
    KeysApi,
    ensure_device_signed,
)
from bot.transport.matrix.crypto import Crypto, CryptoStoreError
from bot.transport.matrix.session import Connection

log = logging.getLogger(__name__)

CRYPTO_DIRNAME = "crypto"


def can_encrypt(settings: EncryptionConfig) -> bool:
    """Wanted, and possible: without vodozemac nio would post clear text into encrypted
    rooms (we refuse those rooms instead, and say so at start)."""
    return settings.enabled and ENCRYPTION_ENABLED


class Encryption:
    def __init__(self, connection: Connection, config: MatrixConfig,
                 settings: EncryptionConfig, crypto_dir: Path, *, max_connect_wait: float,
                 reset_cross_signing: bool, reset_password: str | None) -> None:
        self._connection = connection
        self._client = connection.client
        self._config = config
        self._settings = settings
        self.crypto_dir = crypto_dir
        self._max_connect_wait = max_connect_wait
        self._reset_cross_signing = reset_cross_signing
        # The account's password for replacing cross-signing keys, when the config has
        # none (asked by `newsbot run --reset-cross-signing`); used once, never stored.
        self._reset_password = reset_password
        self.available = can_encrypt(settings)
        self.crypto: Crypto | None = None           # once started
        self.encrypted: set[str] = set()
        # Private conversations the bot opened, and who it invited (key sharing).
        self._invitees: dict[str, tuple[str, ...]] = {}
        # Whether this device is signed by the account's self-signing key (None: no
        # encryption, or not known yet).
        self.cross_signing: CrossSigningStatus | None = None

    async def start(self) -> None:
        if self._client.olm is None:
            raise CryptoStoreError(f"the crypto store in {self.crypto_dir} could not be "
                                   "loaded")
        crypto = Crypto(self._client, self.crypto_dir, trust=self._settings.trust,
                        call=self._connection.call)
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
        self.crypto = crypto
        log.info("end-to-end encryption ready (trust: %s; keys in %s)",
                 self._settings.trust, self.crypto_dir)
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
                    api, self._client.user_id, self._client.device_id, self.crypto_dir,
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

    async def learn_room(self, room_id: str) -> None:
        """Whether a room just joined is encrypted, before its first message from us."""
        try:
            encryption = await self._connection.call(
                f"reading {room_id}'s encryption",
                lambda: self._client.room_get_state_event(room_id, "m.room.encryption"))
            self.encrypted.add(room_id)
            if self.crypto is not None and isinstance(encryption.content, dict):
                # Its rotation settings, before the first message: the sync may bring the
                # state event only later.
                self.crypto.room_settings[room_id] = dict(encryption.content)
        except RoomUnavailableError as exc:
            if exc.errcode != "M_NOT_FOUND":
                raise
            self.encrypted.discard(room_id)  # no such state event: a clear room

    async def before_send(self, room_id: str) -> None:
        """Room keys shared with the room's devices, or the room refused when it is
        encrypted and we cannot encrypt."""
        if room_id in self.encrypted:
            if self.crypto is None:
                # Sending here would put the news in clear text into an encrypted room.
                raise RoomUnavailableError(
                    f"{room_id} is end-to-end encrypted and encryption is unavailable "
                    "(disabled, or the vodozemac package missing); refusing to post in the "
                    "clear")
            await self.crypto.prepare_send(room_id, self._invitees.get(room_id, ()))
        elif self._client.olm is not None and room_id not in self._client.rooms:
            # nio refuses to send into a room it has not seen in a sync once it encrypts.
            self._client.rooms[room_id] = nio.MatrixRoom(room_id, self._client.user_id)

    def sent(self, room_id: str) -> None:
        self._invitees.pop(room_id, None)       # their key went with this message

    def direct_room_state(self) -> list[dict[str, Any]]:
        """A private conversation is encrypted from the start when the bot can encrypt."""
        return [{"type": "m.room.encryption", "state_key": "",
                 "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if self.crypto else []

    def opened_direct(self, room_id: str, invitee: str) -> None:
        """A private conversation created encrypted: its person gets the first room key
        even before the sync shows them invited."""
        self.encrypted.add(room_id)
        self._invitees[room_id] = (invitee,)

    async def after_sync(self, resp: nio.SyncResponse) -> None:
        if self.crypto is None:
            return
        try:
            await self.crypto.after_sync(resp, self.encrypted)
        except TransportError as exc:
            if isinstance(exc, AuthError):
                raise
            log.warning("encryption housekeeping: %s", exc)

    def note_state(self, room_id: str, events: list[Any]) -> None:
        if any(isinstance(event, nio.RoomEncryptionEvent) for event in events):
            self.encrypted.add(room_id)
