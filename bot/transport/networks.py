"""One Transport over every network the bot is on: each call goes to the network its room
(or person) is on, so that features never ask which network they talk to.

A room reference says its network (bot.model.network_of): ``xmpp:`` addresses are XMPP,
everything else Matrix. Room state (RoomAdmin) is Matrix's: XMPP's announcement rooms are
group chats, configured through their forms (bot.transport.base.GroupChats).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bot.errors import RoomUnavailableError
from bot.model import Network, Outgoing, Sent, network_of
from bot.transport.base import EventHandlers, Messaging, RoomAdmin, Transport

if TYPE_CHECKING:
    from bot.media import ImageSource


class Networks:
    def __init__(self, transports: Mapping[Network, Messaging],
                 matrix: Transport | None = None) -> None:
        """``transports``: each network's messaging; ``matrix``: Matrix's whole transport,
        when the bot is on Matrix (its room state)."""
        if not transports:
            raise ValueError("at least one network")
        self._transports = dict(transports)
        self._admin = matrix

    @property
    def networks(self) -> tuple[Network, ...]:
        return tuple(self._transports)

    def on(self, ref: str) -> Messaging:
        """The transport of the network ``ref`` (a room, a person) is on."""
        network = network_of(ref)
        transport = self._transports.get(network)
        if transport is None:
            raise RoomUnavailableError(f"{ref} is on {network}, and the bot is not "
                                       f"(no {network}: section in the configuration)")
        return transport

    def _matrix(self, room: str = "") -> RoomAdmin:
        if self._admin is None or network_of(room) != "matrix":
            raise RoomUnavailableError(f"{room or 'this'} is not a Matrix room: it has no "
                                       "Matrix state")
        return self._admin

    # -- Messaging ----------------------------------------------------------------------

    async def connect(self) -> None:
        async with asyncio.TaskGroup() as group:
            for transport in self._transports.values():
                group.create_task(transport.connect())

    async def close(self) -> None:
        for transport in self._transports.values():
            await transport.close()

    async def resolve_room(self, room: str) -> str:
        return await self.on(room).resolve_room(room)

    async def join_room(self, room: str) -> str:
        return await self.on(room).join_room(room)

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        return await self.on(outgoing.room).prepare(outgoing, images)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        return await self.on(room_id).send(room_id, payload, key, attempted_at=attempted_at,
                                           now=now, fence=fence)

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        if self._admin is None:
            raise RoomUnavailableError("media are uploaded to Matrix: no matrix: section")
        return await self._admin.upload_media(data, content_type, filename)

    async def run_sync(self, handlers: EventHandlers) -> None:
        async with asyncio.TaskGroup() as group:
            for network, transport in self._transports.items():
                group.create_task(transport.run_sync(handlers), name=f"sync {network}")

    async def joined_members(self, room_id: str) -> list[str]:
        return await self.on(room_id).joined_members(room_id)

    async def create_direct_room(self, user_id: str) -> str:
        return await self.on(user_id).create_direct_room(user_id)

    def is_direct(self, room_id: str) -> bool:
        transport = self._transports.get(network_of(room_id))
        return transport is not None and transport.is_direct(room_id)

    def direct_rooms(self) -> Mapping[str, str]:
        rooms: dict[str, str] = {}
        for transport in self._transports.values():
            rooms.update(transport.direct_rooms())
        return rooms

    async def leave_direct(self, room_id: str) -> None:
        await self.on(room_id).leave_direct(room_id)

    async def power_level(self, room_id: str, user_id: str) -> float:
        return await self.on(room_id).power_level(room_id, user_id)

    async def may_read(self, room_id: str, user_id: str) -> bool:
        return await self.on(room_id).may_read(room_id, user_id)

    # -- RoomAdmin: Matrix rooms ----------------------------------------------------------

    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        return await self._matrix().create_room(
            alias_localpart=alias_localpart, name=name, topic=topic, preset=preset,
            initial_state=initial_state, power_levels=power_levels)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return await self._matrix(room_id).room_state(room_id)

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        return await self._matrix(room_id).state_event(room_id, event_type, state_key)

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        return await self._matrix(room_id).set_state(room_id, event_type, content, state_key)

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return await self._matrix(room_id).room_event(room_id, event_id)

    async def directory_published(self, room_id: str) -> bool:
        return await self._matrix(room_id).directory_published(room_id)

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        await self._matrix(room_id).set_directory_published(room_id, published)
