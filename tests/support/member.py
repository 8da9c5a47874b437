"""What a room member's own Matrix client sees, through the raw client-server API.

Deliberately independent of matrix-nio (which the bot uses), so the tests' ground truth
does not share the bot's client library and its bugs.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.support.synapse import MatrixAPIError, RegisteredUser, matrix_request

_PAGE = 100


def _q(value: str) -> str:
    # Room ids, aliases and user ids carry '!', '#', ':' and '@': escape them all.
    return quote(value, safe="")


class MemberClient:
    """A logged-in user (token from ``SynapseServer.register``); one aiohttp session.

    Every call raises ``MatrixAPIError`` (with ``status`` and ``errcode``) on a non-2xx
    answer, except where a method documents otherwise; 429 answers are retried.
    """

    def __init__(self, base_url: str, user: RegisteredUser) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = user
        self._session: aiohttp.ClientSession | None = None

    @property
    def user_id(self) -> str:
        return self.user.user_id

    async def __aenter__(self) -> MemberClient:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, *, body: object | None = None,
                    params: Mapping[str, str] | None = None) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("MemberClient is not open: use 'async with MemberClient(...)'")
        return await matrix_request(
            self._session, method, f"{self.base_url}/_matrix/client/v3{path}",
            access_token=self.user.access_token, json_body=body, params=params,
        )

    # ---- rooms ---------------------------------------------------------------------------

    async def create_room(self, *, name: str | None = None, alias_localpart: str | None = None,
                          invite: Iterable[str] = (), preset: str = "public_chat",
                          power_level_content_override: Mapping[str, object] | None = None,
                          initial_state: Iterable[Mapping[str, object]] = (),
                          room_version: str | None = None) -> str:
        """Create a room and return its id. ``alias_localpart`` "news" gives #news:localhost.

        Synapse 1.163 defaults to room version 12: the creator's power is implicit (not in
        the power-levels ``users`` map) and room ids carry no ":server" suffix.
        """
        body: dict[str, object] = {"preset": preset, "invite": list(invite)}
        if room_version is not None:
            body["room_version"] = room_version
        if name is not None:
            body["name"] = name
        if alias_localpart is not None:
            body["room_alias_name"] = alias_localpart
        if power_level_content_override is not None:
            body["power_level_content_override"] = dict(power_level_content_override)
        states = [dict(s) for s in initial_state]
        if states:
            body["initial_state"] = states
        answer = await self._call("POST", "/createRoom", body=body)
        room_id: str = answer["room_id"]
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        await self._call("POST", f"/rooms/{_q(room_id)}/invite", body={"user_id": user_id})

    async def join(self, room_id_or_alias: str) -> str:
        """Join by id or alias (also accepts a pending invite); returns the room id."""
        answer = await self._call("POST", f"/join/{_q(room_id_or_alias)}", body={})
        room_id: str = answer["room_id"]
        return room_id

    async def leave(self, room_id: str) -> None:
        await self._call("POST", f"/rooms/{_q(room_id)}/leave", body={})

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        body = {"user_id": user_id, **({"reason": reason} if reason else {})}
        await self._call("POST", f"/rooms/{_q(room_id)}/kick", body=body)

    async def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        body = {"user_id": user_id, **({"reason": reason} if reason else {})}
        await self._call("POST", f"/rooms/{_q(room_id)}/ban", body=body)

    async def resolve_alias(self, alias: str) -> str:
        answer = await self._call("GET", f"/directory/room/{_q(alias)}")
        room_id: str = answer["room_id"]
        return room_id

    # ---- events --------------------------------------------------------------------------

    async def send_event(self, room_id: str, event_type: str,
                         content: Mapping[str, object]) -> str:
        """Send any room event with a fresh transaction id; returns its event id."""
        txn = secrets.token_hex(8)
        answer = await self._call(
            "PUT", f"/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn}", body=dict(content))
        event_id: str = answer["event_id"]
        return event_id

    async def send_text(self, room_id: str, body: str, msgtype: str = "m.text", *,
                        html: str | None = None) -> str:
        """Send an m.room.message; with ``html``, as org.matrix.custom.html formatted text."""
        content: dict[str, object] = {"msgtype": msgtype, "body": body}
        if html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = html
        return await self.send_event(room_id, "m.room.message", content)

    async def send_state(self, room_id: str, event_type: str,
                         content: Mapping[str, object], state_key: str = "") -> str:
        answer = await self._call(
            "PUT", f"/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}",
            body=dict(content))
        event_id: str = answer["event_id"]
        return event_id

    async def set_power_level(self, room_id: str, user_id: str, level: int) -> None:
        path = f"/rooms/{_q(room_id)}/state/m.room.power_levels/"
        levels = await self._call("GET", path)
        users = dict(levels.get("users", {}))
        users[user_id] = level
        levels["users"] = users
        await self._call("PUT", path, body=levels)

    # ---- reading ---------------------------------------------------------------------------

    async def display_name(self, user_id: str) -> str | None:
        """The user's global display name; None when unset (the 404 is not an error here)."""
        try:
            answer = await self._call("GET", f"/profile/{_q(user_id)}/displayname")
        except MatrixAPIError as exc:
            if exc.status == 404:
                return None
            raise
        name = answer.get("displayname")
        return name if isinstance(name, str) else None

    async def joined_members(self, room_id: str) -> list[str]:
        """User ids currently joined to the room, sorted."""
        answer = await self._call("GET", f"/rooms/{_q(room_id)}/joined_members")
        return sorted(answer.get("joined", {}))

    async def joined_rooms(self) -> list[str]:
        answer = await self._call("GET", "/joined_rooms")
        return sorted(answer.get("joined_rooms", []))

    async def pending_invites(self) -> list[str]:
        """Ids of the rooms this user is invited to (from a fresh, non-incremental /sync)."""
        # A tiny timeline keeps the initial sync cheap; invites are reported regardless.
        sync_filter = json.dumps({"room": {"timeline": {"limit": 1}},
                                  "presence": {"types": []},
                                  "account_data": {"types": []}})
        answer = await self._call("GET", "/sync", params={"timeout": "0",
                                                          "filter": sync_filter})
        return sorted(answer.get("rooms", {}).get("invite", {}))

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        answer = await self._call("GET", f"/rooms/{_q(room_id)}/state")
        # The endpoint answers a JSON array; matrix_request wraps non-objects in "value".
        state: list[dict[str, Any]] = answer.get("value", [])
        return state

    async def messages(self, room_id: str, *, msgtypes: Iterable[str] | None = None,
                       sender: str | None = None) -> list[dict[str, Any]]:
        """Every m.room.message event of the room visible to this user, oldest first.

        Paginates backwards from the end of the timeline until the server has nothing
        more, so nothing is missed however many messages there are. Redacted messages
        are kept (they were posted), but drop out when ``msgtypes`` is given since a
        redaction removes the msgtype.
        """
        wanted = set(msgtypes) if msgtypes is not None else None
        event_filter: dict[str, object] = {"types": ["m.room.message"], "lazy_load_members": True}
        if sender is not None:
            event_filter["senders"] = [sender]
        params = {"dir": "b", "limit": str(_PAGE), "filter": json.dumps(event_filter)}
        newest_first: list[dict[str, Any]] = []
        while True:
            page = await self._call("GET", f"/rooms/{_q(room_id)}/messages", params=params)
            newest_first.extend(page.get("chunk", []))
            end = page.get("end")
            # No 'end' means the start of the room was reached.
            if not end or end == params.get("from"):
                break
            params["from"] = end
        events = []
        for event in reversed(newest_first):
            if event.get("type") != "m.room.message":
                continue
            if sender is not None and event.get("sender") != sender:
                continue
            if wanted is not None and event.get("content", {}).get("msgtype") not in wanted:
                continue
            events.append(event)
        return events

    async def wait_for_messages(self, room_id: str, count: int, *, sender: str | None = None,
                                msgtypes: Iterable[str] | None = None,
                                timeout: float = 30.0,  # noqa: ASYNC109 (polls, cannot hang)
                                ) -> list[dict[str, Any]]:
        """Poll ``messages()`` until at least ``count`` match; returns all that match.

        Raises AssertionError listing the bodies seen when the timeout expires.
        """
        types = list(msgtypes) if msgtypes is not None else None
        deadline = time.monotonic() + timeout
        while True:
            seen = await self.messages(room_id, msgtypes=types, sender=sender)
            if len(seen) >= count:
                return seen
            if time.monotonic() >= deadline:
                bodies = [e.get("content", {}).get("body") for e in seen]
                raise AssertionError(
                    f"{self.user_id} expected >= {count} message(s) in {room_id}"
                    f"{f' from {sender}' if sender else ''} within {timeout:g} s, "
                    f"saw {len(seen)}: {bodies!r}")
            await asyncio.sleep(0.2)
