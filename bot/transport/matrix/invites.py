"""Invitations: asked of the bot's policy (bot.subscriptions, through EventHandlers), then
joined, refused, or answered with a pointer to the person's existing conversation."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from bot.errors import TransportError
from bot.transport.base import InviteHandler, JoinToPoint
from bot.transport.matrix.directs import Directs
from bot.transport.matrix.encryption import Encryption
from bot.transport.matrix.membership import Membership
from bot.transport.matrix.messaging import Messages
from bot.transport.matrix.session import Connection

log = logging.getLogger(__name__)


class Invites:
    def __init__(self, connection: Connection, user_id: str, membership: Membership,
                 directs: Directs, encryption: Encryption, messages: Messages) -> None:
        self._connection = connection
        self._client = connection.client
        self._user_id = user_id
        self._membership = membership
        self._directs = directs
        self._encryption = encryption
        self._messages = messages

    async def handle(self, room_id: str, info: Any, on_invite: InviteHandler) -> bool:
        """True when the bot joined the room."""
        inviter, is_direct = "", False
        for event in info.invite_state:
            if getattr(event, "state_key", None) == self._user_id and \
                    getattr(event, "membership", None) == "invite":
                inviter = event.sender
                content = getattr(event, "content", None)
                is_direct = isinstance(content, dict) and content.get("is_direct") is True
        try:
            answer = await on_invite(room_id, inviter, is_direct)
            if answer is None:
                return False        # left for the instance that leads
            if isinstance(answer, JoinToPoint):
                await self._point_elsewhere(room_id, answer.notice)
                return False
            if answer:
                await self._membership.invited_again(room_id)
                await self._membership.accept_invite(room_id)
                if is_direct:
                    # "is_direct" is the inviter's word: a conversation with more people
                    # is a group room, which only admins may bring the bot into.
                    if len(await self._membership.joined_members(room_id)) > 2:
                        log.warning("left %s: invited as a private conversation, but it has "
                                    "more members", room_id)
                        await self._connection.call(f"leaving {room_id}",
                                                    lambda: self._client.room_leave(room_id))
                        return False
                    await self._directs.mark(room_id, inviter)
                return True
            await self._connection.call(f"rejecting the invite to {room_id}",
                                        lambda: self._client.room_leave(room_id))
        except TransportError as exc:
            log.warning("invite to %s from %s: %s", room_id, inviter or "?", exc)
        return False

    async def _point_elsewhere(self, room_id: str, notice: str) -> None:
        """Join only to say ``notice``, then leave: the person learns where to write."""
        await self._connection.call(f"joining {room_id}", lambda: self._client.join(room_id))
        try:
            await self._encryption.learn_room(room_id)
            body: dict[str, object] = {"msgtype": "m.notice", "body": notice}
            txn = "newsbot.pointer." + hashlib.sha256(room_id.encode()).hexdigest()[:32]
            await self._messages.send_message(room_id, body, txn)
        except TransportError as exc:
            log.warning("could not point a second private conversation to the first: %s",
                        exc)
        finally:
            await self._connection.call(f"leaving {room_id}",
                                        lambda: self._client.room_leave(room_id))
