"""Room administration for bot.rooms: creating the rooms the bot manages, reading and
setting their state, and their listing in the room directory."""

from __future__ import annotations

from typing import Any

import nio

from bot.errors import RoomUnavailableError
from bot.render import safe_state_content
from bot.transport.matrix.session import Connection


class RoomAdministration:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._client = connection.client

    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        # Always unlisted at first: homeservers may refuse to publish (Synapse does unless
        # its room_list_publication_rules allow it), and that must not prevent creation.
        resp = await self._connection.call(
            f"creating #{alias_localpart}", lambda: self._client.room_create(
                visibility=nio.api.RoomVisibility.private, alias=alias_localpart, name=name,
                topic=topic, preset=nio.api.RoomPreset(preset), initial_state=initial_state,
                power_level_override=power_levels or None))
        return str(resp.room_id)

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        resp = await self._connection.call(f"reading {room_id}'s state",
                                           lambda: self._client.room_get_state(room_id))
        return [event for event in resp.events if isinstance(event, dict)]

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        try:
            resp = await self._connection.call(
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
        resp = await self._connection.call(
            f"setting {event_type} in {room_id}",
            lambda: self._client.room_put_state(room_id, event_type, content, state_key))
        return str(resp.event_id)

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        resp = await self._connection.call(
            f"reading event {event_id} in {room_id}",
            lambda: self._client.room_get_event(room_id, event_id))
        return dict(resp.event.source)

    async def directory_published(self, room_id: str) -> bool:
        resp = await self._connection.call(f"reading {room_id}'s directory listing",
                                           lambda: self._client.room_get_visibility(room_id))
        return str(resp.visibility) == "public"

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        # nio has no call for this endpoint; its generic request keeps our error handling.
        path = nio.Api._build_path(["directory", "list", "room", room_id])
        body = nio.Api.to_json({"visibility": "public" if published else "private"})
        await self._connection.call(
            f"{'listing' if published else 'unlisting'} {room_id} in the directory",
            lambda: self._client._send(nio.responses.EmptyResponse, "PUT", path, body))
