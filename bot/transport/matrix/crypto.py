"""End-to-end encryption for the Matrix transport, on matrix-nio's Olm machine (vodozemac).

nio encrypts and decrypts, but leaves to its user what a long-running sender needs:
- the key housekeeping its own ``sync_forever`` does (upload, query, claim, to-device),
  including new one-time keys once the server says none are left;
- a new room key when members join without the sync having shown the join;
- checking that the room key really reached every device before sending (nio marks a
  session shared even when a to-device request failed);
- the room's ``m.room.encryption`` rotation settings;
- answering other users' room key requests (nio drops them silently);
- refusing to start on a crypto store that belongs to another user or device, or whose
  identity keys differ from the ones the homeserver knows for this device.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import nio
from nio.store import DefaultStore

from bot.errors import NewsbotError, TemporaryTransportError
from bot.filemodes import sync_dir, tighten, write_private
from bot.transport.matrix.cross_signing import device_cross_signed

log = logging.getLogger(__name__)

STORE_NAME = "crypto.db"
SHARED_WITH_FILE = "shared-sessions.json"
PICKLE_KEY_FILE = "pickle.key"
# nio's ClientConfig.pickle_key: the same in every installation, so it protects nothing.
NIO_DEFAULT_PICKLE_KEY = "DEFAULT_KEY"
Call = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


class CryptoStoreError(NewsbotError):
    """The crypto store cannot be used with this account and device."""


@dataclass
class PolicyStore(DefaultStore):
    """``verified`` trust: unverified devices count as blacklisted, so room keys are not
    shared with them (and nio does not stop on them). ``cross-signed`` trust: the same
    for devices their owners did not sign (``cross_signed`` holds those they did)."""

    verified_only: bool = False
    cross_signed_only: bool = False
    cross_signed: set[tuple[str, str]] = field(default_factory=set)

    def is_device_blacklisted(self, device: nio.crypto.OlmDevice) -> bool:
        if super().is_device_blacklisted(device):
            return True
        if self.cross_signed_only:
            return (device.user_id, device.id) not in self.cross_signed
        return self.verified_only and not self.is_device_verified(device)


def store_owners(store_dir: Path) -> list[tuple[str, str]]:
    """(user id, device id) of every account in the crypto store, read read-only."""
    owners: list[tuple[str, str]] = []
    for db in sorted(store_dir.glob("*.db")):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                owners += [(str(u), str(d)) for u, d in
                           conn.execute("SELECT user_id, device_id FROM accounts")]
            finally:
                conn.close()
        except sqlite3.Error:
            continue
    return owners


def check_store_owner(store_dir: Path, user_id: str, device_id: str | None) -> None:
    for owner_user, owner_device in store_owners(store_dir):
        if owner_user != user_id or (device_id and owner_device != device_id):
            raise CryptoStoreError(
                f"the crypto store in {store_dir} belongs to {owner_user} (device "
                f"{owner_device}), not to {user_id} (device {device_id or '?'}); configure "
                "that device again, or give this account its own storage directory")


def prepare_pickle_key(store_dir: Path) -> str:
    """The key the crypto store's secrets are pickled with, kept in ``pickle.key`` (0600).

    The first time, a random key is made and every pickle in the store (the account, the
    Olm sessions, the Megolm inbound sessions) is re-encrypted from nio's default key to it
    in one SQLite transaction. A crash at any point loses nothing: the new key is written
    and flushed to ``pickle.key.new`` before that transaction, and renamed to ``pickle.key``
    only after its commit; at the next start, a ``pickle.key.new`` that opens the store
    means the commit happened (finish the rename), one that does not means it did not
    (start again from the default key).
    """
    key_path = store_dir / PICKLE_KEY_FILE
    pending = store_dir / (PICKLE_KEY_FILE + ".new")
    db = store_dir / STORE_NAME
    if key_path.exists():
        tighten(key_path)
        return _read_key(key_path)
    if pending.exists():
        key = _read_key(pending)
        if _account_opens_with(db, key):
            _finish_key(pending, key_path)
            return key
        pending.unlink()
    key = secrets.token_urlsafe(32)
    write_private(pending, key)
    try:
        count = _repickle(db, NIO_DEFAULT_PICKLE_KEY, key)
    except BaseException:
        pending.unlink(missing_ok=True)     # the store is unchanged (rolled back)
        raise
    _finish_key(pending, key_path)
    if count:
        log.info("crypto store: %d secrets re-encrypted with a new random pickle key "
                 "(%s); the device keeps its identity", count, key_path)
    return key


def _read_key(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise CryptoStoreError(f"{path} is empty: restore it from a backup (without it the "
                               "crypto store cannot be read)")
    return key


def _finish_key(pending: Path, key_path: Path) -> None:
    os.replace(pending, key_path)
    sync_dir(key_path.parent)


def _blob(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _account_opens_with(db: Path, key: str) -> bool:
    """Do the store's accounts unpickle with ``key``? (True for a store with none.)"""
    from nio.crypto import OlmAccount

    if not db.exists():
        return True
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = _rows(conn, "accounts", "account, shared")
    finally:
        conn.close()
    try:
        for blob, shared in rows:
            OlmAccount.from_pickle(_blob(blob), key, bool(shared))
    except Exception:
        return False
    return True


def _rows(conn: sqlite3.Connection, table: str, columns: str) -> list[Any]:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                         (table,)).fetchone()
    if found is None:
        return []
    return conn.execute(f"SELECT {columns} FROM {table}").fetchall()


def _repickle(db: Path, old: str, new: str) -> int:
    """Re-encrypt every pickle in nio's store (tables of nio.store.models) from ``old`` to
    ``new``, all or nothing. Returns how many were re-encrypted."""
    from nio.crypto import InboundGroupSession, OlmAccount
    from nio.crypto import Session as OlmSession

    if not db.exists():
        return 0
    conn = sqlite3.connect(db, isolation_level=None)
    count = 0
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA secure_delete = ON")    # no old-key pickle left in free pages
        conn.execute("BEGIN IMMEDIATE")
        try:
            for rowid, blob, shared in _rows(conn, "accounts", "rowid, account, shared"):
                account = OlmAccount.from_pickle(_blob(blob), old, bool(shared))
                repickled = account.pickle(new)
                # Checked before the commit: the identity must open with the new key.
                if OlmAccount.from_pickle(repickled, new).identity_keys != \
                        account.identity_keys:
                    raise CryptoStoreError("re-encrypting the crypto store changed the "
                                           "account's keys; nothing was changed")
                conn.execute("UPDATE accounts SET account = ? WHERE rowid = ?",
                             (repickled, rowid))
                count += 1
            for rowid, blob in _rows(conn, "olmsessions", "rowid, session"):
                session = OlmSession.from_pickle(_blob(blob), datetime.now(), old)
                conn.execute("UPDATE olmsessions SET session = ? WHERE rowid = ?",
                             (session.pickle(new), rowid))
                count += 1
            for rowid, blob in _rows(conn, "megolminboundsessions", "rowid, session"):
                group = InboundGroupSession.from_pickle(_blob(blob), "", "", "", old)
                conn.execute("UPDATE megolminboundsessions SET session = ? WHERE rowid = ?",
                             (group.pickle(new), rowid))
                count += 1
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except CryptoStoreError:
        raise
    except Exception as exc:
        raise CryptoStoreError(
            f"the crypto store {db} could not be re-encrypted with a new pickle key "
            f"({type(exc).__name__}: {exc}); nothing was changed. If it was made with "
            f"another key, restore {PICKLE_KEY_FILE} next to it from a backup") from exc
    finally:
        conn.close()
    return count


class Crypto:
    """The encryption side of one Matrix client."""

    def __init__(self, client: nio.AsyncClient, store_dir: Path, *, trust: str,
                 call: Call) -> None:
        self.client = client
        self.trust = trust
        self._call = call
        self._shared_path = store_dir / SHARED_WITH_FILE
        self.room_settings: dict[str, dict[str, Any]] = {}   # m.room.encryption content
        self.key_requests: Counter[tuple[str, str, str, str]] = Counter()
        self._shared_with: dict[str, set[tuple[str, str]]] = {}
        self._warned_skipped: dict[str, tuple[tuple[str, str], ...]] = {}
        # trust: cross-signed — each user's devices as last checked against their
        # cross-signing keys; a user whose keys change (the sync says so) is checked again.
        self._signatures_checked: dict[str, frozenset[str]] = {}
        try:
            raw = json.loads(self._shared_path.read_text())
            self._shared_with = {k: {(u, d) for u, d in v} for k, v in raw.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", self._shared_path, type(exc).__name__)

    @property
    def olm(self) -> Any:
        return self.client.olm

    def start(self) -> None:
        if isinstance(self.client.store, PolicyStore):
            self.client.store.verified_only = self.trust == "verified"
            self.client.store.cross_signed_only = self.trust == "cross-signed"
        self._hook_rotation()
        self._hook_relations()

    def _hook_relations(self) -> None:
        """The spec keeps m.relates_to (edits, replies) in the clear part of an encrypted
        event, so servers and clients can relate it before decrypting; nio does not."""
        olm = self.olm
        original = olm.group_encrypt

        def encrypt(room_id: str, plaintext: dict[str, Any]) -> dict[str, Any]:
            encrypted: dict[str, Any] = original(room_id, plaintext)
            relation = plaintext.get("content", {}).get("m.relates_to")
            if isinstance(relation, dict):
                encrypted["m.relates_to"] = relation
            return encrypted

        olm.group_encrypt = encrypt

    # -- identity ------------------------------------------------------------------------

    async def check_identity(self) -> None:
        """A lost or replaced store must not overwrite the device's keys on the server."""
        user, device = self.client.user_id, self.client.device_id
        keys = await self._call("reading this device's keys",
                                lambda: _query_device(self.client, user, device))
        server_ed = keys.get(f"ed25519:{device}")
        local_ed = self.olm.account.identity_keys["ed25519"]
        if server_ed and server_ed != local_ed:
            raise CryptoStoreError(
                f"device {device} has other identity keys on the homeserver than the crypto "
                f"store in {self._shared_path.parent} holds (was the storage directory lost "
                "or replaced?); restore it from a backup, or configure a new device id")

    # -- after every sync ------------------------------------------------------------------

    async def after_sync(self, resp: nio.SyncResponse,
                         encrypted_rooms: set[str]) -> None:
        client = self.client
        for user in resp.device_list.changed:
            self._signatures_checked.pop(user, None)
        if resp.device_key_count.signed_curve25519 == 0:
            self.olm.uploaded_key_count = 0       # nio ignores an explicit "none left"
        for room_id, info in resp.rooms.join.items():
            for event in [*info.state, *info.timeline.events]:
                if isinstance(event, nio.RoomEncryptionEvent):
                    encrypted_rooms.add(room_id)
                    self.room_settings[room_id] = dict(event.source.get("content", {}))
            if room_id in encrypted_rooms and room_id in client.rooms:
                room = client.rooms[room_id]
                joined = [u for u in room.users.values() if not u.invited]
                count = info.summary.joined_member_count if info.summary else None
                if info.timeline.limited or (count is not None and count != len(joined)):
                    await self._refresh_members(room_id)
            for event in info.timeline.events:
                if isinstance(event, nio.MegolmEvent):
                    log.warning("room %s: an encrypted message from %s (device %s) could not "
                                "be decrypted; if it was a command, it was not run",
                                room_id, event.sender, event.device_id)
        await self.housekeeping()
        for event in resp.to_device_events:
            if isinstance(event, nio.RoomKeyRequest) and event.sender != client.user_id:
                await self._on_key_request(event)

    async def housekeeping(self) -> None:
        client = self.client
        if client.should_upload_keys:
            await self._call("uploading keys", client.keys_upload)
        if client.should_query_keys:
            await self._call("querying keys", client.keys_query)
        if client.should_claim_keys:
            users = client.get_users_for_key_claiming()
            await self._call("claiming keys", lambda: client.keys_claim(users))
        if client.outgoing_to_device_messages:
            for resp in await client.send_to_device_messages():
                if isinstance(resp, nio.ErrorResponse):
                    log.warning("to-device message: %s", resp)

    async def _refresh_members(self, room_id: str) -> None:
        client = self.client
        room = client.rooms[room_id]
        before = set(room.users)
        await self._call(f"reading {room_id}'s members",
                         lambda: client.joined_members(room_id))
        added = set(room.users) - before
        if added:
            # Members the sync did not show joining: they need a room key of their own.
            client.invalidate_outbound_session(room_id)
            self.olm.users_for_key_query.update(added)

    # -- sending ---------------------------------------------------------------------------

    async def prepare_send(self, room_id: str, invitees: Sequence[str] = ()) -> None:
        """Make sure every device that should read the next message holds its key —
        ``invitees`` too: a private conversation's first message is sent before the
        person has joined it."""
        client = self.client
        if room_id not in client.rooms:     # after a restart with a stored sync token
            client.rooms[room_id] = nio.MatrixRoom(room_id, client.user_id, encrypted=True)
        room = client.rooms[room_id]
        room.encrypted = True
        if not room.members_synced:
            await self._call(f"reading {room_id}'s members",
                             lambda: client.joined_members(room_id))
        for user in invitees:
            if user not in room.users:
                room.add_member(user, None, None, invited=True)
                self.olm.users_for_key_query.add(user)
        if client.should_query_keys:
            await self._call("querying keys", client.keys_query)
        if self.trust == "cross-signed":
            await self._check_signatures(list(room.users))
        skipped = self._skipped(room_id)
        if skipped and self._warned_skipped.get(room_id) != skipped:
            self._warned_skipped[room_id] = skipped
            which = ("devices not signed by their owners" if self.trust == "cross-signed"
                     else "unverified devices")
            log.warning("room %s: trust is '%s': not sharing the room key with the %s %s",
                        room_id, self.trust, which,
                        ", ".join(f"{u} {d}" for u, d in skipped))
        if not self.olm.should_share_group_session(room_id):
            return
        await self._call(f"sharing {room_id}'s room key", lambda: client.share_group_session(
            room_id, ignore_unverified_devices=True))
        session = self.olm.outbound_group_sessions[room_id]
        missing = self._expected(room_id) - session.users_shared_with - session.users_ignored
        if missing:
            client.invalidate_outbound_session(room_id)
            raise TemporaryTransportError(
                f"room key for {room_id} did not reach "
                + ", ".join(f"{u} {d}" for u, d in sorted(missing)))
        self._shared_with[session.id] = set(session.users_shared_with)
        self._save_shared()

    def _expected(self, room_id: str) -> set[tuple[str, str]]:
        client = self.client
        own = (client.user_id, client.device_id)
        return {(user, device.id) for user in client.rooms[room_id].users
                for device in client.device_store.active_user_devices(user)
                if (user, device.id) != own and not self.olm.is_device_blacklisted(device)}

    def _skipped(self, room_id: str) -> tuple[tuple[str, str], ...]:
        if self.trust not in ("verified", "cross-signed"):
            return ()
        client = self.client
        own = (client.user_id, client.device_id)
        return tuple(sorted(
            (user, device.id) for user in client.rooms[room_id].users
            for device in client.device_store.active_user_devices(user)
            if (user, device.id) != own and self.olm.is_device_blacklisted(device)))

    async def _check_signatures(self, users: Sequence[str]) -> None:
        """Learn which devices of ``users`` their owners signed (for trust: cross-signed),
        asking the homeserver only about users whose devices changed since last time."""
        client = self.client
        store = client.store
        if not isinstance(store, PolicyStore):
            return
        stale = [user for user in users if self._signatures_checked.get(user) != frozenset(
            device.id for device in client.device_store.active_user_devices(user))]
        if not stale:
            return
        answer = await self._call("reading members' cross-signing keys",
                                  lambda: _query_keys(client, stale))
        for user in stale:
            devices = answer.get("device_keys", {}).get(user, {})
            master = answer.get("master_keys", {}).get(user)
            self_signing = answer.get("self_signing_keys", {}).get(user)
            store.cross_signed -= {(u, d) for u, d in store.cross_signed if u == user}
            store.cross_signed |= {
                (user, device_id) for device_id, keys in devices.items()
                if isinstance(keys, dict)
                and device_cross_signed(user, keys, master, self_signing)}
            self._signatures_checked[user] = frozenset(
                device.id for device in client.device_store.active_user_devices(user))

    def _save_shared(self) -> None:
        data = {k: sorted(v) for k, v in self._shared_with.items()}
        write_private(self._shared_path, json.dumps(data))

    def _hook_rotation(self) -> None:
        """nio rotates after 7 days or 100 messages whatever the room says: follow the
        room's rotation_period_ms / rotation_period_msgs."""
        olm = self.olm
        original = olm.create_outbound_group_session

        def create(room_id: str) -> None:
            original(room_id)
            session = olm.outbound_group_sessions[room_id]
            content = self.room_settings.get(room_id, {})
            messages, period = content.get("rotation_period_msgs"), content.get(
                "rotation_period_ms")
            if isinstance(messages, int) and messages > 0:
                session.max_messages = messages
            if isinstance(period, int) and period > 0:
                session.max_age = timedelta(milliseconds=period)

        olm.create_outbound_group_session = create

    # -- other users' room key requests ------------------------------------------------------

    async def _on_key_request(self, request: nio.RoomKeyRequest) -> None:
        key = (request.room_id, request.sender, request.requesting_device_id,
               request.session_id)
        if len(self.key_requests) > 10_000:
            self.key_requests.clear()       # a flood must not grow memory for months
        self.key_requests[key] += 1
        if self.key_requests[key] > 1:
            log.warning("room %s: %s (device %s) asked %d times for a room key: that member "
                        "cannot decrypt some items", request.room_id, request.sender,
                        request.requesting_device_id, self.key_requests[key])
        reason = self._refusal(request)
        if reason is not None:
            log.warning("room %s: refused a room key request from %s (device %s): %s",
                        request.room_id, request.sender, request.requesting_device_id, reason)
            return
        client, olm = self.client, self.olm
        group = olm.inbound_group_store.get(request.room_id, request.sender_key,
                                            request.session_id)
        device = client.device_store[request.sender][request.requesting_device_id]
        session = olm.session_store.get(device.curve25519)
        if session is None:
            await self._call("claiming a key", lambda: client.keys_claim(
                {device.user_id: [device.id]}))
            session = olm.session_store.get(device.curve25519)
            if session is None:
                log.warning("room %s: cannot answer %s (device %s): no secure channel",
                            request.room_id, request.sender, device.id)
                return
        message = olm._encrypt_forwarding_key(request.room_id, group, session, device)
        await self._call("forwarding a room key", lambda: client.to_device(message))
        log.info("room %s: room key forwarded to %s (device %s)", request.room_id,
                 request.sender, device.id)

    def _refusal(self, request: nio.RoomKeyRequest) -> str | None:
        client, olm = self.client, self.olm
        if request.sender_key != olm.account.identity_keys["curve25519"]:
            return "the key is not one this bot created"
        if olm.inbound_group_store.get(request.room_id, request.sender_key,
                                       request.session_id) is None:
            return "unknown session"
        room = client.rooms.get(request.room_id)
        if room is None or request.sender not in room.users or \
                room.users[request.sender].invited:
            return "not a member of the room"
        try:
            device = client.device_store[request.sender][request.requesting_device_id]
        except KeyError:
            olm.users_for_key_query.add(request.sender)
            return "unknown device (its keys are being fetched; the client will ask again)"
        if self.trust == "verified" and not olm.is_device_verified(device):
            return "unverified device (trust is 'verified')"
        if self.trust == "cross-signed" and olm.is_device_blacklisted(device):
            return "a device its owner did not sign (trust is 'cross-signed')"
        shared = (request.sender, request.requesting_device_id) in self._shared_with.get(
            request.session_id, set())
        if shared or room.history_visibility in ("shared", "world_readable"):
            return None
        return (f"the room's history visibility is {room.history_visibility!r} and the key "
                "was not shared with that device when the message was sent")


async def _query_keys(client: nio.AsyncClient, users: Sequence[str],
                      what: str = "reading members' keys") -> dict[str, Any]:
    """A raw keys/query: devices and cross-signing keys, which nio does not keep."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{client.homeserver}/_matrix/client/v3/keys/query",
            headers={"Authorization": f"Bearer {client.access_token}"},
            json={"device_keys": {user: [] for user in users}}) as resp:
        if resp.status != 200:
            raise TemporaryTransportError(f"{what}: HTTP {resp.status}")
        body = await resp.json(content_type=None)
    return body if isinstance(body, dict) else {}


async def _query_device(client: nio.AsyncClient, user: str, device: str) -> dict[str, str]:
    """The identity keys the homeserver holds for one of our devices (a raw keys/query,
    which does not touch nio's device store)."""
    body = await _query_keys(client, [user], "reading this device's keys")
    keys = body.get("device_keys", {}).get(user, {}).get(device, {}).get("keys", {})
    return dict(keys) if isinstance(keys, dict) else {}
