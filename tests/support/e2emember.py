"""A member of an end-to-end encrypted room: a real nio client with its own crypto store.

What it collects is what a person's own client would show: decrypted messages, and the
events it could not decrypt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nio

from tests.support.synapse import RegisteredUser

ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def history_state(visibility: str) -> dict[str, object]:
    return {"type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": visibility}}


def _check(resp: Any, what: str) -> Any:
    if isinstance(resp, nio.ErrorResponse):
        raise RuntimeError(f"{what}: {resp}")
    return resp


class EncryptedMember:
    def __init__(self, base_url: str, user: RegisteredUser, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.client = nio.AsyncClient(
            base_url, user.user_id, device_id=user.device_id, store_path=str(store_dir),
            config=nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False,
                                         max_limit_exceeded=0, max_timeouts=0))
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self.messages: list[tuple[str, dict[str, Any]]] = []     # (room id, event source)
        self.undecryptable: list[nio.MegolmEvent] = []
        self.client.add_event_callback(self._on_message,
                                       (nio.RoomMessageText, nio.RoomMessageNotice))
        self.client.add_event_callback(self._on_undecryptable, nio.MegolmEvent)

    @property
    def user_id(self) -> str:
        return self.user.user_id

    async def _on_message(self, room: nio.MatrixRoom, event: Any) -> None:
        self.messages.append((room.room_id, {**event.source, "decrypted": event.decrypted,
                                             "session_id": getattr(event, "session_id", None)}))

    async def _on_undecryptable(self, room: nio.MatrixRoom, event: nio.MegolmEvent) -> None:
        # nio hands a MegolmEvent to callbacks only when it could not decrypt it.
        self.undecryptable.append(event)

    async def sync(self, timeout_ms: int = 0) -> None:
        client = self.client
        _check(await client.sync(timeout=timeout_ms), "sync")
        if client.should_upload_keys:
            _check(await client.keys_upload(), "keys_upload")
        if client.should_query_keys:
            _check(await client.keys_query(), "keys_query")
        if client.should_claim_keys:
            _check(await client.keys_claim(client.get_users_for_key_claiming()), "keys_claim")
        for resp in await client.send_to_device_messages():
            _check(resp, "to_device")

    def bodies(self, room_id: str, sender: str | None = None) -> list[str]:
        return [str(source["content"].get("body")) for room, source in self.messages
                if room == room_id and (sender is None or source.get("sender") == sender)]

    async def wait_for(self, room_id: str, count: int, *, sender: str | None = None,
                       timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            bodies = self.bodies(room_id, sender)
            if len(bodies) >= count:
                return bodies
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.user_id} expected {count} message(s) in {room_id}, decrypted "
                    f"{len(bodies)}: {bodies!r}; undecryptable: {len(self.undecryptable)}")
            await self.sync(timeout_ms=1000)

    async def send_text(self, room_id: str, body: str) -> str:
        await self.sync()
        resp = _check(await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True), "send")
        return str(resp.event_id)

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> EncryptedMember:
        await self.sync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- room key requests ----------------------------------------------------------------

    def accept_forwards_from_session_creator(self) -> None:
        """nio (like Element's crypto) accepts a forwarded room key only from the member's
        own verified devices; to test the bot's answers to key requests, this member also
        accepts one from the device that created the session."""
        olm = self.client.olm
        original = olm._should_accept_forward

        def should_accept(sender: str, sender_key: str, event: Any) -> bool:
            if original(sender, sender_key, event):
                return True
            request = olm.outgoing_key_requests.get(event.session_id)
            return (request is not None and event.room_id == request.room_id
                    and event.source["content"].get("sender_key") == sender_key)

        olm._should_accept_forward = should_accept

    async def request_key(self, event: nio.MegolmEvent, owner: str) -> None:
        """Ask the session's creator (another user) for the key of an undecryptable event."""
        message = event.as_key_request(owner, self.client.device_id,
                                       device_id=event.device_id)
        self.client.outgoing_to_device_messages.append(message)
        for resp in await self.client.send_to_device_messages():
            _check(resp, "key request")

    def decrypt(self, event: nio.MegolmEvent) -> str | None:
        try:
            decrypted = self.client.decrypt_event(event)
        except nio.EncryptionError:
            return None
        body = getattr(decrypted, "body", None)
        return str(body) if body is not None else None
