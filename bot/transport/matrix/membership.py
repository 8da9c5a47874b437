"""The bot's place in rooms: finding and joining them, who is in them and with what power,
and the rooms it was kicked or banned from, remembered across restarts so that it never
rejoins against the moderators' decision."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import nio

from bot.errors import RoomUnavailableError
from bot.store.base import Store
from bot.transport.matrix.encryption import Encryption
from bot.transport.matrix.session import Connection

log = logging.getLogger(__name__)

REMOVED_ROOMS_KEY = "matrix.removed_rooms"


class Membership:
    def __init__(self, connection: Connection, store: Store, user_id: str,
                 encryption: Encryption) -> None:
        self._connection = connection
        self._client = connection.client
        self._store = store
        self._user_id = user_id
        self._encryption = encryption
        self._removed: dict[str, str] | None = None     # room -> why, loaded on first use
        # Rooms this process joined: an invitation to one of them is often one its join
        # already answered (the sync was computed before the join).
        self._joined: set[str] = set()

    async def resolve_room(self, room: str) -> str:
        """The room id of an alias (resolved anew each time: aliases move)."""
        if not room.startswith("#"):
            return room
        resolved = await self._connection.call(
            f"resolving {room}", lambda: self._client.room_resolve_alias(room))
        return str(resolved.room_id)

    async def join_room(self, room: str) -> str:
        room_id = await self.resolve_room(room)
        self.check_not_removed(room_id)
        # Joining by the alias lets the homeserver use the servers the alias names.
        await self._connection.call(f"joining {room}", lambda: self._client.join(room))
        self._joined.add(room_id)
        await self._encryption.learn_room(room_id)
        return room_id

    async def accept_invite(self, room_id: str) -> None:
        """Join a room the bot was invited to, unless it is in it already. Each delivery
        worker joins its room at start, and the invitations that brought the bot there
        come in a sync after that: joining again, one room after the other in the sync
        loop, would load the homeserver for minutes while items are being delivered (a
        hundred rooms). Reading its own membership costs far less than a join, and is
        the truth whatever happened meanwhile (kicked and invited again: it joins)."""
        if room_id not in self._joined or await self._own_membership(room_id) != "join":
            await self._connection.call(f"joining {room_id}",
                                        lambda: self._client.join(room_id))
            self._joined.add(room_id)

    async def _own_membership(self, room_id: str) -> str | None:
        try:
            content = await self._state_content(room_id, "m.room.member", self._user_id)
        except RoomUnavailableError:
            return None         # not allowed to read it: not in the room
        return None if content is None else str(content.get("membership"))

    async def joined_members(self, room_id: str) -> list[str]:
        resp = await self._connection.call(f"reading {room_id}'s members",
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

    async def _state_content(self, room_id: str, event_type: str,
                             state_key: str = "") -> dict[str, Any] | None:
        try:
            resp = await self._connection.call(
                f"reading {room_id}'s {event_type}",
                lambda: self._client.room_get_state_event(room_id, event_type, state_key))
        except RoomUnavailableError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return resp.content if isinstance(resp.content, dict) else {}

    async def _create_sender(self, room_id: str) -> str:
        """Who created the room (v12 creators are not listed in power levels). Room
        version 12 room ids are the create event's hash, so the event is fetchable."""
        event_id = "$" + room_id[1:].split(":", 1)[0]
        resp = await self._connection.call(
            f"reading {room_id}'s creation event",
            lambda: self._client.room_get_event(room_id, event_id))
        return str(resp.event.sender)

    # -- kicks and bans ----------------------------------------------------------------

    def check_not_removed(self, room_id: str) -> None:
        """Refuse a room the bot was kicked or banned from: rejoining or posting there
        would override the moderators' decision."""
        removed = self._removed_rooms().get(room_id)
        if removed:
            raise RoomUnavailableError(f"{removed}; invite newsbot again to resume")

    async def note_removal(self, room_id: str, events: list[Any]) -> None:
        """Remember a kick or ban (across restarts): the room's deliveries then wait."""
        for event in events:
            if not isinstance(event, nio.RoomMemberEvent) or event.state_key != self._user_id:
                continue
            if event.membership == "ban":
                reason = f"newsbot was banned from {room_id} by {event.sender}"
            elif event.membership == "leave" and event.sender != self._user_id:
                reason = f"newsbot was removed from {room_id} by {event.sender}"
            else:
                continue
            why = event.content.get("reason") if isinstance(event.content, dict) else None
            if why:
                reason += f" ({str(why)[:200]})"
            await self._set_removed(room_id, reason)
            log.error("%s; its deliveries wait until newsbot is invited again", reason)

    async def invited_again(self, room_id: str) -> None:
        await self._set_removed(room_id, None)

    async def load(self) -> None:
        """Read the rooms the bot was removed from (at start)."""
        raw = await self._store.get(REMOVED_ROOMS_KEY)
        self._removed = json.loads(raw) if raw else {}

    def _removed_rooms(self) -> dict[str, str]:
        if self._removed is None:
            self._removed = {}      # not loaded (never connected): none known
        return self._removed

    async def _set_removed(self, room_id: str, reason: str | None) -> None:
        rooms = self._removed_rooms()
        if reason is None:
            if rooms.pop(room_id, None) is None:
                return
        else:
            rooms[room_id] = reason
        await self._store.put(REMOVED_ROOMS_KEY, json.dumps(rooms))
