"""Private conversations: the bot's memory of them (room -> its person, across restarts),
opening one, and leaving one whose person left. The memory follows the bot's membership:
a conversation it is no longer in is forgotten, and whoever cares is told."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import nio

from bot.errors import AuthError, RoomUnavailableError, TransportError
from bot.store.base import Store
from bot.transport.matrix.encryption import Encryption
from bot.transport.matrix.membership import Membership
from bot.transport.matrix.session import Connection

log = logging.getLogger(__name__)

DIRECT_ROOMS_KEY = "matrix.direct_rooms"


class Directs:
    def __init__(self, connection: Connection, store: Store, user_id: str,
                 membership: Membership, encryption: Encryption) -> None:
        self._connection = connection
        self._client = connection.client
        self._store = store
        self._user_id = user_id
        self._membership = membership
        self._encryption = encryption
        self._direct: dict[str, str] | None = None     # private conversation -> person
        # Told when a private conversation ends, however it ends (set by the sync).
        self.on_closed: Callable[[str, str], None] | None = None

    def is_direct(self, room_id: str) -> bool:
        """Did the bot join this room as a private conversation with one person?"""
        return room_id in self._rooms()

    def direct_rooms(self) -> dict[str, str]:
        return dict(self._rooms())

    async def load(self) -> None:
        """Read the memory of private conversations (at start: the sync loop then asks
        it without waiting for the store)."""
        raw = await self._store.get(DIRECT_ROOMS_KEY)
        loaded = json.loads(raw) if raw else {}
        # Before people were recorded, a list of room ids: their person is unknown.
        self._direct = dict.fromkeys(loaded, "") if isinstance(loaded, list) \
            else {str(k): str(v) for k, v in loaded.items()}

    def _rooms(self) -> dict[str, str]:
        if self._direct is None:
            self._direct = {}       # not loaded (never connected): none known
        return self._direct

    async def create(self, user_id: str) -> str:
        state = self._encryption.direct_room_state()
        resp = await self._connection.call("opening a private conversation",
                                           lambda: self._client.room_create(
                                               is_direct=True, invite=[user_id],
                                               initial_state=state,
                                               preset=nio.api.RoomPreset.trusted_private_chat))
        room_id = str(resp.room_id)
        if state:
            self._encryption.opened_direct(room_id, user_id)
        await self.mark(room_id, user_id)
        return room_id

    async def mark(self, room_id: str, person: str) -> None:
        rooms = self._rooms()
        if rooms.get(room_id) != person:
            rooms[room_id] = person
            await self._store.put(DIRECT_ROOMS_KEY, json.dumps(rooms, sort_keys=True))

    async def leave(self, room_id: str, person: str = "") -> None:
        """Leave a private conversation and forget it was one (``forget me``, its person
        left, a welcome nobody answered)."""
        try:
            await self._connection.call("leaving a private conversation",
                                        lambda: self._client.room_leave(room_id))
        except RoomUnavailableError as exc:
            # Not in it any more (kicked meanwhile, or gone): forgotten all the same.
            log.info("leaving a private conversation: %s", exc)
        await self.forget(room_id, person)

    async def forget(self, room_id: str, person: str = "") -> None:
        """The bot is no longer in this conversation: the memory follows its membership,
        and whoever needs to know is told (subscriptions, the room's delivery worker)."""
        rooms = self._rooms()
        known = rooms.pop(room_id, None)
        if known is None:
            return
        await self._store.put(DIRECT_ROOMS_KEY, json.dumps(rooms, sort_keys=True))
        if self.on_closed is not None:
            self.on_closed(room_id, known or person)

    async def reconcile(self) -> None:
        """At start: forget the conversations the bot is no longer in (lost while it was
        stopped, or before the memory followed its membership)."""
        if not self._rooms():
            return
        try:
            resp = await self._connection.call("listing the joined rooms",
                                               self._client.joined_rooms)
        except AuthError:
            raise
        except TransportError as exc:
            log.warning("could not check the private conversations: %s", exc)
            return
        joined = set(resp.rooms)
        lost = [room_id for room_id in self._rooms() if room_id not in joined]
        for room_id in lost:
            await self.forget(room_id)
        if lost:
            log.info("forgot %d private conversation(s) newsbot is no longer in", len(lost))

    async def close_if_left(self, room_id: str, events: list[Any]) -> bool:
        """The person of a private conversation left it (or declined the bot's
        invitation): the bot leaves too, so no conversation is kept forever. True when
        it left."""
        person = self._rooms().get(room_id)
        if person is None:
            return False
        # The latest membership of each other person, in order (state, then timeline): one
        # who left and came back in the same batch is still there.
        latest = {str(event.state_key): event.membership for event in events
                  if isinstance(event, nio.RoomMemberEvent)
                  and event.state_key != self._user_id
                  and (not person or event.state_key == person)}
        gone = [user for user, membership in latest.items() if membership in ("leave", "ban")]
        if not gone:
            return False
        try:
            if not person and len(await self._membership.joined_members(room_id)) > 1:
                return False    # person unknown: leave only once nobody else is there
            await self.leave(room_id, person=gone[0])   # tells on_closed
        except TransportError as exc:
            log.warning("could not leave the private conversation %s: %s", room_id, exc)
            return False
        log.info("left a private conversation: its person left it")
        return True
