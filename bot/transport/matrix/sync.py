"""The event stream: one sync after another (resumed after any failure but a refused
token), each dispatched in order — invitations, rooms left, encryption housekeeping, then
the joined rooms' messages and newcomers — to the bot's EventHandlers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import nio

from bot.errors import AuthError, TransportError
from bot.store.base import Store
from bot.transport.base import EventHandlers, IncomingMessage
from bot.transport.matrix.directs import Directs
from bot.transport.matrix.encryption import Encryption
from bot.transport.matrix.invites import Invites
from bot.transport.matrix.membership import Membership
from bot.transport.matrix.messaging import SendActivity
from bot.transport.matrix.session import Connection

log = logging.getLogger(__name__)

SYNC_TOKEN_KEY = "matrix.sync_token"
# During a burst of the bot's own sends, the sync waits (see Sync._next), but its answers
# are never further apart than this (a command is answered at most this much later).
MAX_HOLD = 10.0

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


class Sync:
    def __init__(self, connection: Connection, store: Store, user_id: str, *,
                 timeout_ms: int, max_retry_wait: float, encryption: Encryption,
                 membership: Membership, directs: Directs, invites: Invites,
                 activity: SendActivity | None = None) -> None:
        self._connection = connection
        self._client = connection.client
        self._store = store
        self._user_id = user_id
        self._timeout_ms = timeout_ms
        self._max_retry_wait = max_retry_wait
        self._encryption = encryption
        self._membership = membership
        self._directs = directs
        self._invites = invites
        self._activity = activity
        self._answered_at = time.monotonic()
        self._awaiting_answer = False
        # Commands sent while the bot was down are not replayed: only those sent after
        # this bot started count.
        self._started_ms = int(time.time() * 1000)

    def _token_key(self) -> str:
        # A sync token belongs to a device (its to-device messages, its room keys): on a
        # database several instances share, each device keeps its own.
        if not self._store.shared:
            return SYNC_TOKEN_KEY
        return f"{SYNC_TOKEN_KEY}.{self._client.device_id}"

    async def run(self, handlers: EventHandlers) -> None:
        token_key = self._token_key()
        since = await self._store.get(token_key)
        started_ms = self._started_ms
        self._directs.on_closed = handlers.on_direct_closed
        await self._directs.reconcile()
        delay = 1.0
        while True:
            try:
                resp = await self._next(since)
            except AuthError:
                raise
            except TransportError as exc:
                # Whatever a restarting homeserver or its proxy answers, the stream resumes.
                log.warning("%s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_wait)
                continue
            delay = 1.0
            if resp is None:
                continue            # called off for a burst of our sends: asked again
            self._answered_at = time.monotonic()
            for room_id, info in resp.rooms.invite.items():
                if await self._invites.handle(room_id, info, handlers.on_invite) and \
                        handlers.on_joined:
                    handlers.on_joined(room_id)
            for room_id, left in resp.rooms.leave.items():
                await self._membership.note_removal(room_id, left.timeline.events)
                if self._directs.is_direct(room_id):
                    # Kicked, banned, or left some other way: not a conversation any more
                    # (nobody is pointed to it, it no longer counts toward the cap).
                    log.info("lost the private conversation %s: forgot it", room_id)
                    await self._directs.forget(room_id)
            await self._encryption.after_sync(resp)
            for room_id, joined in resp.rooms.join.items():
                self._encryption.note_state(room_id, joined.state)
                if await self._directs.close_if_left(room_id, [*joined.state,
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
            await self._store.put(token_key, since)

    async def _next(self, since: str | None) -> nio.SyncResponse | None:
        """The next sync answer; None when its request was called off, unanswered, because
        a burst of our own sends began.

        Each event the bot sends wakes its own long poll, and the homeserver then builds
        an answer for every room sent to since, queued with the sends themselves (on
        Synapse with SQLite, about nine database transactions a room): for an item to 100
        rooms, that is most of what the homeserver does besides the sends. So the sync
        waits for a burst to end, and one sync after it does that work once. Answers are
        at most ``MAX_HOLD`` seconds apart whatever is sent (commands wait no longer)."""
        request = functools.partial(self._request, since)
        activity = self._activity
        if activity is None:
            return await self._connection.call("syncing", request)
        held_until = self._answered_at + MAX_HOLD
        await activity.settled(held_until)
        activity.began.clear()
        call = asyncio.ensure_future(self._connection.call("syncing", request))
        began = asyncio.ensure_future(activity.began.wait())
        try:
            await asyncio.wait((call, began), return_when=asyncio.FIRST_COMPLETED)
            if not call.done() and self._awaiting_answer and \
                    time.monotonic() < held_until:
                # Nothing of the answer read yet: dropping it loses nothing (the same
                # token is asked again), and the homeserver stops building it.
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                return None
            return await call
        finally:
            for task in (began, call):
                if not task.done():      # on the way out (this task itself cancelled)
                    task.cancel()
                    await asyncio.wait((task,))

    async def _request(self, since: str | None) -> Any:
        """``client.sync``'s request in its two steps, so that it can be called off while
        the answer is awaited, never while nio takes it in (room keys, device lists)."""
        client = self._client
        method, path = nio.Api.sync(client.access_token, since=since,
                                    timeout=self._timeout_ms or None, filter=SYNC_FILTER)
        # As nio's own sync: a chance for the homeserver to answer before we give up.
        timeout = self._timeout_ms / 1000 + 15 if self._timeout_ms else None
        self._awaiting_answer = True
        try:
            answer = await client.send(method, path, timeout=timeout)
        finally:
            self._awaiting_answer = False
        resp = await client.create_matrix_response(nio.SyncResponse, answer)
        await client.receive_response(resp)
        return resp

    def _incoming(self, room_id: str, source: dict[str, Any],
                  started_ms: int) -> IncomingMessage | None:
        content = source.get("content")
        if source.get("type") != "m.room.message" or not isinstance(content, dict):
            return None
        if source.get("sender") == self._user_id:
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
                None, self._user_id):
            return False
        content = source.get("content") or {}
        previous = (source.get("unsigned") or {}).get("prev_content") or {}
        timestamp = source.get("origin_server_ts")
        return (content.get("membership") == "join" and previous.get("membership") != "join"
                and isinstance(timestamp, int) and timestamp >= started_ms)
