"""The seam a chat network plugs into. Matrix implements it now; XMPP can later.

Split by what callers need: ``Messaging`` (joining, sending, finding a delivery, incoming
events, direct conversations) serves delivery, commands and the app; ``RoomAdmin``
(creating rooms, reading and setting their state, the directory) serves only bot.rooms.
Both find and join rooms (``RoomLookup``). ``Transport`` is the whole, for the app that
builds one and hands out its parts.

Implementations turn their library's errors into the bot's own (bot.errors): callers only
ever see TemporaryTransportError (retry later), RateLimitedError (retry after a delay),
RoomUnavailableError (this room refuses us) and AuthError (credentials refused).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.media import ImageSource
    from bot.model import Outgoing, Sent


@dataclass(frozen=True, slots=True)
class JoinToPoint:
    """An invitation answered without staying: join, post ``notice``, leave (a second
    private conversation from one person gets a pointer to the first)."""

    notice: str


# Called for an invitation: (room_id, inviter, is_direct) -> accept, refuse, or point.
# True: join; False: refuse; None: not this instance's to answer (another one leads).
InviteHandler = Callable[[str, str, bool], Awaitable[bool | JoinToPoint | None]]



@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A text message someone sent into a room the bot is in (never the bot's own, never a
    notice from another bot, never an edit, never one from before the bot started)."""

    room_id: str
    sender: str
    event_id: str
    body: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class EventHandlers:
    on_invite: InviteHandler
    on_joined: Callable[[str], None] | None = None      # an accepted invitation was joined
    on_message: Callable[[IncomingMessage], None] | None = None
    # Someone joined a room the bot is in: (room_id, user_id, join event id).
    on_member_joined: Callable[[str, str, str], None] | None = None
    # A private conversation ended — its person left it, the bot left it, or the bot lost
    # it (kicked, banned, gone while it was stopped): (room_id, its person or "").
    on_direct_closed: Callable[[str, str], None] | None = None


@dataclass(frozen=True, slots=True)
class GroupChatSpec:
    """An announcement room on a network whose rooms are configured by forms rather than
    by state events (XMPP's group chats): what bot.rooms declares of it."""

    address: str
    name: str | None
    description: str | None
    public: bool                    # listed and open; else members only
    moderators: tuple[str, ...]     # people given moderator rights (never taken away)


@dataclass(slots=True)
class GroupChatReport:
    created: bool = False
    corrections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class GroupChats(Protocol):
    """Announcement rooms that are group chats: created or corrected as declared."""

    async def ensure_group(self, spec: GroupChatSpec) -> GroupChatReport: ...

    async def group_subject(self, room: str) -> str: ...

    async def set_group_subject(self, room: str, subject: str) -> None: ...


class RoomLookup(Protocol):
    """Finding and joining a room: every caller that names rooms needs it."""

    async def resolve_room(self, room: str) -> str:
        """The room id for a room id or alias."""
        ...

    async def join_room(self, room: str) -> str:
        """Join a room by id or alias; returns the room id."""
        ...


class Messaging(RoomLookup, Protocol):
    async def connect(self) -> None:
        """Wait for the server (retrying with backoff) and authenticate."""
        ...

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        """An outbox row's message in this network's format (its picture resolved), to be
        stored before the first attempt so that a resend is the same; None when there is
        nothing to show."""
        ...

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        """Send a prepared payload exactly once, whatever happened before: a row tried
        before (``attempted_at``) may already be in the room, and is not sent twice.
        ``fence`` (several instances): asked last before the message leaves; False (this
        instance's claim on the row lapsed, another may send it) raises
        TemporaryTransportError and sends nothing."""
        ...

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        """Store bytes in the server's media repository; returns their mxc:// URI."""
        ...

    async def run_sync(self, handlers: EventHandlers) -> None:
        """Follow the server's event stream until cancelled."""
        ...

    async def joined_members(self, room_id: str) -> list[str]:
        """The user ids joined to the room (the bot included)."""
        ...

    async def create_direct_room(self, user_id: str) -> str:
        """Open a private conversation with one person; returns its room id."""
        ...

    def is_direct(self, room_id: str) -> bool:
        """Is this one of the bot's private conversations with one person?"""
        ...

    def direct_rooms(self) -> Mapping[str, str]:
        """The bot's private conversations: room id -> the person it is with ("" when
        not known, for conversations recorded before people were)."""
        ...

    async def leave_direct(self, room_id: str) -> None:
        """Leave a private conversation and forget it was one."""
        ...

    async def power_level(self, room_id: str, user_id: str) -> float:
        """The user's power level in the room (infinity for a room creator that outranks
        every level, as in room version 12)."""
        ...

    async def may_read(self, room_id: str, user_id: str) -> bool:
        """Whether this person may read what is posted in the room: anyone may (an open
        room whose history anyone joining reads), or they are in it now. The privacy rule
        of a private archive: a room that cannot be checked counts as closed."""
        ...

    async def close(self) -> None:
        ...


class RoomAdmin(RoomLookup, Protocol):
    """The rooms the bot manages (bot.rooms): create them, keep their state as configured."""

    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        """Create a room (not published in the directory) with this alias on our server;
        returns its id."""
        ...

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        """Every current state event of a room we are in."""
        ...

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        """The content of one state event, None when the room has none."""
        ...

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        """Send a state event; returns its id."""
        ...

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event of a room, as the homeserver gives it (sender, type, content...)."""
        ...

    async def directory_published(self, room_id: str) -> bool:
        """Whether the room is listed in the homeserver's room directory."""
        ...

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        ...


class Transport(Messaging, RoomAdmin, Protocol):
    """A whole network connection: what the app builds, then hands out as its parts."""
