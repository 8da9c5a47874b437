"""Sending: a message (sanitised, encrypted where the room is, refused in a room the bot
was removed from), media uploads, and finding a delivery of ours in a room's history
after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from bot.errors import ClaimLapsedError
from bot.transport.matrix.encryption import Encryption
from bot.transport.matrix.events import DELIVERY_KEY_FIELD, safe_event_content
from bot.transport.matrix.fence import fenced
from bot.transport.matrix.membership import Membership
from bot.transport.matrix.session import Connection


class SendActivity:
    """Whether the bot is in the middle of a burst of its own sends (an item fanned out to
    many rooms), so that the sync can keep out of its way (sync.py). A send or two (a
    command's answer) is no burst: the sync goes on as usual."""

    def __init__(self, *, burst: int = 3, linger: float = 1.0) -> None:
        self._burst = burst         # this many sends at once make a burst
        self._linger = linger       # it goes on while sends follow this closely
        self._in_flight = 0
        self._last = 0.0
        self._bursting = False
        self._changed = asyncio.Event()
        self.began = asyncio.Event()    # set when a burst begins

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        self._in_flight += 1
        if self._in_flight >= self._burst and not self._bursting:
            self._bursting = True
            self.began.set()
        try:
            yield
        finally:
            self._in_flight -= 1
            self._last = time.monotonic()
            self._changed.set()

    async def settled(self, deadline: float) -> None:
        """Return once no burst is under way (none in flight, none ended within ``linger``
        seconds), or at ``deadline`` (``time.monotonic()``) whatever happens."""
        while self._bursting:
            now = time.monotonic()
            if now >= deadline:
                return
            if self._in_flight == 0:
                quiet_for = now - self._last
                if quiet_for >= self._linger:
                    self._bursting = False
                    return
                wait = min(self._linger - quiet_for, deadline - now)
            else:
                wait = deadline - now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)


class Messages:
    def __init__(self, connection: Connection, user_id: str, membership: Membership,
                 encryption: Encryption) -> None:
        self._connection = connection
        self._client = connection.client
        self._user_id = user_id
        self._membership = membership
        self._encryption = encryption
        self.activity = SendActivity()

    async def send_message(self, room_id: str, content: dict[str, object],
                           txn_id: str, fence: Callable[[], bool] | None = None) -> str:
        """``fence`` (several instances): asked last, after the room's keys were shared,
        right before the request (each time it is made): False sends nothing."""
        content = safe_event_content(content)  # whoever wrote it: one sanitiser, one cleaner
        self._membership.check_not_removed(room_id)
        await self._encryption.before_send(room_id)

        async def send() -> Any:
            if fence is not None and not fence():
                raise ClaimLapsedError
            # A fence is asked again by the connection itself, right before the write.
            with fenced(self._client, fence) if fence is not None else contextlib.nullcontext():
                try:
                    return await self._client.room_send(
                        room_id, "m.room.message", dict(content), tx_id=txn_id,
                        ignore_unverified_devices=True)
                except (aiohttp.ClientError, OSError) as exc:
                    if fence is not None and not fence():
                        raise ClaimLapsedError from exc
                    raise
        with self.activity.sending():
            resp = await self._connection.call(f"sending to {room_id}", send)
        self._encryption.sent(room_id)
        return str(resp.event_id)

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        """Put bytes into the homeserver's media repository; returns the mxc:// URI."""
        async def upload() -> Any:
            resp, _ = await self._client.upload(lambda _got429, _timeouts: io.BytesIO(data),
                                                content_type=content_type, filename=filename,
                                                filesize=len(data))
            return resp
        resp = await self._connection.call(f"uploading {filename}", upload)
        return str(resp.content_uri)

    async def find_delivery(self, room_id: str, key: str, *, max_events: int = 500) -> str | None:
        token: str | None = None
        scanned = 0
        event_filter = {"types": ["m.room.message", "m.room.encrypted"],
                        "senders": [self._user_id]}
        while scanned < max_events:
            resp = await self._connection.call(
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
