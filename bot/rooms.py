"""Announcement rooms the bot owns: the ``rooms:`` section of the configuration.

At start each declared room is looked up by its alias. A missing one is created with the
declared settings; an existing one is compared with its declaration, and every difference
newsbot has the power to correct is corrected and logged ("... (restored)"). What it cannot
correct (too little power, encryption that can never be turned off) is reported, and the
other rooms go on: a room never stops the bot.

Announcement semantics live in the power levels: members may react (``m.reaction`` and
taking their own reaction back stay at 0) but only moderators (50) and the bot post
messages. Only those rules are enforced: people promoted by hand keep their level.

After each feed item posted into such a room, the room pins it (replacing newsbot's own
earlier pin, keeping the ones people added) and, when asked, its topic ends with the item.

Deciding is pure (``RoomState``, ``plan``, the topic helpers); ``RoomManager`` does the I/O.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.config import Config, RoomConfig
from bot.errors import AuthError, RateLimitedError, RoomUnavailableError, TransportError
from bot.i18n import MESSAGES, text
from bot.model import Delivery, network_of
from bot.render import bounded_title
from bot.store.base import Store
from bot.store.types import RECENT_PER_FEED
from bot.transport.base import GroupChats, GroupChatSpec, RoomAdmin

log = logging.getLogger(__name__)

T = TypeVar("T")

MODERATOR = 50
MEGOLM = "m.megolm.v1.aes-sha2"
TOPIC_SEPARATOR = " — "
MAX_TITLE_CHARS = 200
RATE_LIMIT_WAITS = 5            # per request, then the room's problem is reported
_CACHE_LIMIT = 1000

# Reactions are their own event type. Taking one's reaction back is an m.room.redaction
# of one's own event: allowed at 0, while redacting other people's events still needs
# the "redact" level (50).
ANNOUNCEMENT_EVENTS: dict[str, int] = {"m.reaction": 0, "m.room.redaction": 0}
# An explicit lower level for one of these would let members post. In an encrypted room
# every message, reactions included, travels as m.room.encrypted: the server cannot tell
# them apart, so members of an encrypted announcement room cannot react.
MESSAGE_TYPES = ("m.room.message", "m.room.encrypted", "m.sticker", "m.poll.start",
                 "org.matrix.msc3381.poll.start")
# The levels the spec assumes when a power-levels event leaves a key out.
_SPEC_DEFAULTS = {"events_default": 0, "users_default": 0, "state_default": 50, "redact": 50,
                  "invite": 0, "kick": 50, "ban": 50}


def announcement_levels(room: RoomConfig) -> dict[str, int]:
    """The power levels enforced in every announcement room.

    Inviting is open to everyone in a public room (anyone may join anyway, so an invite
    is only a friendly pointer); in knock and invite-only rooms it is the moderators'.
    """
    return {"events_default": MODERATOR, "users_default": 0, "state_default": MODERATOR,
            "redact": MODERATOR, "invite": 0 if room.join_rule == "public" else MODERATOR}


# --- the room as it is ----------------------------------------------------------------


def _level(value: object, default: int = 0) -> int:
    # Old room versions allow levels as strings ("50").
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


@dataclass(frozen=True, slots=True)
class RoomState:
    """A room's current state events, and who outranks whom in it."""

    contents: Mapping[tuple[str, str], Mapping[str, Any]]   # (type, state_key) -> content
    creators: frozenset[str]
    creators_outrank: bool          # room version 12 on: creators above every level

    @classmethod
    def parse(cls, events: Iterable[Mapping[str, Any]]) -> RoomState:
        contents: dict[tuple[str, str], Mapping[str, Any]] = {}
        create_sender: object = None
        for event in events:
            kind, key, content = event.get("type"), event.get("state_key"), event.get("content")
            if isinstance(kind, str) and isinstance(key, str) and isinstance(content, Mapping):
                contents[(kind, key)] = content
                if kind == "m.room.create" and key == "":
                    create_sender = event.get("sender")
        create = contents.get(("m.room.create", ""), {})
        version = str(create.get("room_version", "1"))
        additional = create.get("additional_creators")
        creators = {c for c in (create_sender, create.get("creator"),
                                *(additional if isinstance(additional, list) else ()))
                    if isinstance(c, str)}
        return cls(contents, frozenset(creators),
                   creators_outrank=version.isdigit() and int(version) >= 12)

    def content(self, event_type: str, state_key: str = "") -> Mapping[str, Any]:
        return self.contents.get((event_type, state_key), {})

    def has(self, event_type: str, state_key: str = "") -> bool:
        return (event_type, state_key) in self.contents

    @property
    def levels(self) -> Mapping[str, Any]:
        return self.content("m.room.power_levels")

    def level_of(self, user_id: str) -> float:
        if self.creators_outrank and user_id in self.creators:
            return math.inf
        if not self.has("m.room.power_levels"):
            return 100 if user_id in self.creators else 0
        users = self.levels.get("users")
        if isinstance(users, Mapping) and user_id in users:
            return _level(users[user_id])
        return _level(self.levels.get("users_default"))

    def needed_for(self, event_type: str) -> int:
        """The level needed to send a state event of this type."""
        if not self.has("m.room.power_levels"):
            return 0
        events = self.levels.get("events")
        if isinstance(events, Mapping) and event_type in events:
            return _level(events[event_type])
        return _level(self.levels.get("state_default"), 50)


# --- what should change -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Correction:
    """One state event to send, and what it changes, in words."""

    event_type: str
    content: dict[str, Any]
    changes: tuple[str, ...]
    state_key: str = ""
    min_level: int = 0          # beyond the event's own level (changing power levels)


def _show(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        short = value if len(value) <= 80 else value[:77] + "..."
        return json.dumps(short, ensure_ascii=False)
    return str(value)


def _latest_prefixes() -> tuple[str, ...]:
    return tuple(template.split("{item}")[0] for template in MESSAGES["topic_latest"].values())


def split_topic(topic: str) -> tuple[str, str | None]:
    """("Base", "Latest: X") from "Base — Latest: X"; (topic, None) without such an end."""
    for prefix in _latest_prefixes():
        if topic.startswith(prefix):
            return "", topic
        at = topic.rfind(TOPIC_SEPARATOR + prefix)
        if at >= 0:
            return topic[:at], topic[at + len(TOPIC_SEPARATOR):]
    return topic, None


def join_topic(base: str, latest: str | None) -> str:
    if not latest:
        return base
    return f"{base}{TOPIC_SEPARATOR}{latest}" if base else latest


def expected_topic(room: RoomConfig, current: str) -> str | None:
    """The topic the room should have now; None when the topic is not managed."""
    if room.topic is None:
        return None
    if room.topic_latest:
        return join_topic(room.topic, split_topic(current)[1])
    return room.topic


def plan(room: RoomConfig, state: RoomState, bot: str) -> tuple[list[Correction], list[str]]:
    """The state events that bring the room back to its declaration, and what no state
    event can fix."""
    corrections: list[Correction] = []
    problems: list[str] = []

    def want(event_type: str, key: str, wanted: str, label: str) -> None:
        current = state.content(event_type).get(key)
        if current != wanted:
            corrections.append(Correction(event_type, {key: wanted}, (
                f"{label} changed from {_show(current)} to {_show(wanted)}",)))

    if room.name is not None:
        want("m.room.name", "name", room.name, "name")
    current_topic = state.content("m.room.topic").get("topic")
    topic = expected_topic(room, current_topic if isinstance(current_topic, str) else "")
    if topic is not None:
        want("m.room.topic", "topic", topic, "topic")
    if room.avatar is not None:
        want("m.room.avatar", "url", room.avatar, "avatar")
    want("m.room.join_rules", "join_rule", room.join_rule, "join rule")
    want("m.room.history_visibility", "history_visibility", room.history,
         "history visibility")

    encrypted = state.has("m.room.encryption")
    if room.encrypted and not encrypted:
        corrections.append(Correction("m.room.encryption", {"algorithm": MEGOLM},
                                      ("encryption changed from off to on",)))
    elif encrypted and not room.encrypted:
        problems.append("the room is end-to-end encrypted but declared encrypted: false; "
                        "encryption can never be turned off in a Matrix room: declare "
                        "encrypted: true, or use a new room under another alias")

    canonical = state.content("m.room.canonical_alias")
    if canonical.get("alias") != room.alias:
        alt = canonical.get("alt_aliases")
        kept = [a for a in alt if a != room.alias] if isinstance(alt, list) else []
        former = canonical.get("alias")
        if isinstance(former, str) and former not in kept:
            kept.append(former)     # the address people chose stays one of the room's
        corrections.append(Correction(
            "m.room.canonical_alias", {"alias": room.alias, **({"alt_aliases": kept}
                                                               if kept else {})},
            (f"main address changed from {_show(canonical.get('alias'))} to "
             f"{_show(room.alias)}",)))

    levels = plan_power_levels(room, state, bot)
    if levels is not None:
        corrections.append(levels)   # last: what came before needed the old levels only
    return corrections, problems


def plan_power_levels(room: RoomConfig, state: RoomState, bot: str) -> Correction | None:
    """The announcement rules applied to the room's power levels, everything else kept."""
    current = state.levels
    new: dict[str, Any] = copy.deepcopy(dict(current))
    changes: list[str] = []
    touched: list[int] = []      # every level changed, before and after

    for key, wanted in announcement_levels(room).items():
        old = _level(current.get(key), _SPEC_DEFAULTS[key]) if key in current \
            else _SPEC_DEFAULTS[key]
        if old != wanted or key not in current:
            new[key] = wanted
            if old != wanted:
                changes.append(f"power level {key} changed from {old} to {wanted}")
                touched += [old, wanted]

    events_now = current.get("events")
    events: dict[str, Any] = dict(events_now) if isinstance(events_now, Mapping) else {}
    default = _level(current.get("events_default"), _SPEC_DEFAULTS["events_default"])
    for event_type, wanted in ANNOUNCEMENT_EVENTS.items():
        was = _level(events[event_type], default) if event_type in events else None
        if was != wanted:
            events[event_type] = wanted
            changes.append(f"power level for {event_type} changed from "
                           f"{'(default)' if was is None else was} to {wanted}")
            touched += [default if was is None else was, wanted]
    for event_type in MESSAGE_TYPES:
        if event_type in events and _level(events[event_type]) < MODERATOR:
            was = _level(events[event_type])
            events[event_type] = MODERATOR
            changes.append(f"power level for {event_type} changed from {was} to {MODERATOR}")
            touched += [was, MODERATOR]
    new["events"] = events

    users_now = current.get("users")
    users: dict[str, Any] = dict(users_now) if isinstance(users_now, Mapping) else {}
    if not state.has("m.room.power_levels") and not state.creators_outrank:
        for creator in state.creators:      # without a power-levels event they held 100
            users.setdefault(creator, 100)
    users_default = _level(current.get("users_default"))
    for user in room.moderators:
        if user == bot or (state.creators_outrank and user in state.creators):
            continue        # newsbot cannot promote itself; creators outrank everyone
        old = _level(users[user], users_default) if user in users else users_default
        if old < MODERATOR:
            users[user] = MODERATOR
            changes.append(f"power level of {user} changed from {old} to {MODERATOR}")
            # Changing someone else's level needs more than their old one.
            touched += [old + 1, MODERATOR]
    new["users"] = users

    if not changes and state.has("m.room.power_levels"):
        return None
    if not changes:
        changes.append("power levels set for an announcement room")
    return Correction("m.room.power_levels", new, tuple(changes),
                      min_level=max(touched, default=0))


def blocked(correction: Correction, state: RoomState, bot: str) -> str | None:
    """Why newsbot cannot send this correction, or None when it can."""
    have = state.level_of(bot)
    need = max(state.needed_for(correction.event_type), correction.min_level)
    if have >= need:
        return None
    return (f"cannot correct: {'; '.join(correction.changes)}: newsbot has power level "
            f"{have:g} in the room, {need} is needed")


def _describe(room: RoomConfig) -> str:
    parts = [f"join rule {room.join_rule}", f"history {room.history}",
             "encrypted" if room.encrypted else "not encrypted",
             "listed in the directory" if room.directory else "not listed in the directory"]
    if room.moderators:
        parts.append(f"{len(room.moderators)} moderator(s)")
    return ", ".join(parts)


def _is_feed_item(delivery: Delivery) -> bool:
    """A feed item's own message: not a notice of newsbot's (such as the 410 notice), not
    an edit of an earlier item, not a separate image."""
    return delivery.kind == "item"


# --- doing it ---------------------------------------------------------------------------


@dataclass(slots=True)
class RoomReport:
    """What happened to one declared room at start."""

    alias: str
    room_id: str | None = None
    created: bool = False
    corrections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class RoomManager:
    def __init__(self, config: Config, transport: RoomAdmin, store: Store, *,
                 groups: GroupChats | None = None) -> None:
        self._config = config
        self._transport = transport
        self._groups = groups           # XMPP's group chats, when the bot is on XMPP
        self._store = store
        # Managed rooms are Matrix rooms: without a matrix: section there are none.
        self._bot = config.matrix.user_id if config.matrix is not None else ""
        self._server = self._bot.split(":", 1)[1] if self._bot else ""
        self._by_alias = {room.alias: room for room in config.rooms}
        self._by_id: dict[str, RoomConfig] = {}
        self._ours: dict[str, bool] = {}      # event id -> sent by newsbot (for pins)
        self.reports: list[RoomReport] = []

    def managed(self, room_id: str) -> RoomConfig | None:
        """The declaration of a managed room, by its id."""
        return self._by_id.get(room_id)

    async def _retry(self, request: Callable[[], Awaitable[T]]) -> T:
        """The request, waiting out the homeserver's rate limits a few times."""
        for attempt in range(RATE_LIMIT_WAITS):
            try:
                return await request()
            except RateLimitedError as exc:
                if attempt == RATE_LIMIT_WAITS - 1:
                    raise
                await asyncio.sleep(exc.retry_after or 1.0)
        raise AssertionError("unreachable")

    def _problem(self, report: RoomReport, problem: str) -> None:
        report.problems.append(problem)
        log.error("room %s: %s", report.alias, problem)

    # -- at start

    async def prepare(self) -> list[RoomReport]:
        """Create the missing rooms and correct the others' drift; report both."""
        for room in self._config.rooms:
            report = RoomReport(room.alias)
            try:
                await self._prepare(room, report)
            except AuthError:
                raise
            except TransportError as exc:
                self._problem(report, str(exc))
            except Exception:
                log.exception("room %s: unexpected error while checking it", room.alias)
                report.problems.append("unexpected error (see the log)")
            self.reports.append(report)
        if self.reports:
            corrected = [r for r in self.reports if r.corrections and not r.created]
            log.info("announcement rooms: %d declared, %d created, %d corrected (%d "
                     "change(s)), %d with problems", len(self.reports),
                     sum(r.created for r in self.reports), len(corrected),
                     sum(len(r.corrections) for r in corrected),
                     sum(bool(r.problems) for r in self.reports))
        return self.reports

    async def _prepare(self, room: RoomConfig, report: RoomReport) -> None:
        if network_of(room.alias) == "xmpp":
            await self._prepare_group(room, report)
            return
        room_id = await self._find_or_create(room, report)
        if room_id is None:
            return
        report.room_id = room_id
        self._by_id[room_id] = room
        state = RoomState.parse(await self._retry(lambda: self._transport.room_state(room_id)))
        corrections, problems = plan(room, state, self._bot)
        for problem in problems:
            self._problem(report, problem)
        for correction in corrections:
            await self._apply(report, room_id, state, correction)
        await self._check_directory(room, room_id, report)
        if room.space is not None:
            await self._add_to_space(room.space, room_id, state, report)

    async def _prepare_group(self, room: RoomConfig, report: RoomReport) -> None:
        """An XMPP group chat: configured through its form (bot.transport.xmpp.groups)."""
        if self._groups is None:
            self._problem(report, "an XMPP group chat, and the bot is not on XMPP")
            return
        done = await self._groups.ensure_group(GroupChatSpec(
            room.alias, room.name, room.topic, public=room.join_rule == "public",
            moderators=tuple(m for m in room.moderators if network_of(m) == "xmpp")))
        report.room_id, report.created = room.alias, done.created
        self._by_id[room.alias] = room
        if done.created:
            log.info("room %s: created as declared", room.alias)
        for change in done.corrections:
            report.corrections.append(change)
            log.warning("room %s: %s (restored)", room.alias, change)
        for problem in done.problems:
            self._problem(report, problem)

    async def _find_or_create(self, room: RoomConfig, report: RoomReport) -> str | None:
        try:
            room_id = await self._retry(lambda: self._transport.resolve_room(room.alias))
        except RoomUnavailableError as exc:
            if exc.errcode != "M_NOT_FOUND":
                raise
            return await self._create(room, report)
        try:
            # Already in it, this is a no-op; otherwise it needs a public room or an invite.
            await self._retry(lambda: self._transport.join_room(room.alias))
        except RoomUnavailableError as exc:
            self._problem(report, f"newsbot is not in the room and cannot join it ({exc}); "
                                  "invite it (then give it power level 100) and restart")
            return None
        return room_id

    async def _create(self, room: RoomConfig, report: RoomReport) -> str | None:
        localpart, server = room.alias[1:].split(":", 1)
        if server != self._server:
            self._problem(report, f"the room does not exist, and newsbot can only create "
                                  f"rooms on its own server ({self._server})")
            return None
        initial_state: list[dict[str, Any]] = [
            {"type": "m.room.join_rules", "state_key": "",
             "content": {"join_rule": room.join_rule}},
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": room.history}},
        ]
        if room.encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": MEGOLM}})
        if room.avatar is not None:
            initial_state.append({"type": "m.room.avatar", "state_key": "",
                                  "content": {"url": room.avatar}})
        # The rest of the rules (reactions, moderators) is completed like a drift, right
        # after: the homeserver's own default levels are kept that way.
        room_id = await self._retry(lambda: self._transport.create_room(
            alias_localpart=localpart, name=room.name, topic=room.topic,
            preset="public_chat" if room.join_rule == "public" else "private_chat",
            initial_state=initial_state, power_levels=announcement_levels(room)))
        report.created = True
        log.info("room %s: created (%s): %s", room.alias, room_id, _describe(room))
        return room_id

    async def _apply(self, report: RoomReport, room_id: str, state: RoomState,
                     correction: Correction, *, label: str = "") -> bool:
        why = blocked(correction, state, self._bot)
        if why is not None:
            self._problem(report, f"{label}{why}")
            return False
        try:
            await self._retry(lambda: self._transport.set_state(
                room_id, correction.event_type, correction.content, correction.state_key))
        except AuthError:
            raise
        except TransportError as exc:
            self._problem(report, f"{label}could not correct: "
                                  f"{'; '.join(correction.changes)}: {exc}")
            return False
        for change in correction.changes:
            report.corrections.append(change)
            if report.created:      # completing a room just made, not a drift
                log.debug("room %s: %s", report.alias, change)
            else:
                log.warning("room %s: %s (restored)", report.alias, change)
        return True

    async def _check_directory(self, room: RoomConfig, room_id: str,
                               report: RoomReport) -> None:
        listed = "listed" if room.directory else "unlisted"
        try:
            published = await self._retry(
                lambda: self._transport.directory_published(room_id))
            if published == room.directory:
                return
            await self._retry(
                lambda: self._transport.set_directory_published(room_id, room.directory))
        except AuthError:
            raise
        except TransportError as exc:
            hint = (" (the homeserver must allow it: Synapse's room_list_publication_rules)"
                    if room.directory and isinstance(exc, RoomUnavailableError) else "")
            self._problem(report, f"could not make it {listed} in the room directory: "
                                  f"{exc}{hint}")
            return
        change = f"directory listing changed from {'listed' if published else 'unlisted'} " \
                 f"to {listed}"
        report.corrections.append(change)
        if report.created:
            log.info("room %s: %s in the room directory", report.alias, listed)
        else:
            log.warning("room %s: %s (restored)", report.alias, change)

    async def _add_to_space(self, space: str, room_id: str, state: RoomState,
                            report: RoomReport) -> None:
        """m.space.child in the space, m.space.parent in the room."""
        via = [self._server]
        try:
            space_id = await self._retry(lambda: self._transport.resolve_room(space))
        except RoomUnavailableError as exc:
            self._problem(report, f"its space {space} cannot be found ({exc})")
            return
        try:
            await self._retry(lambda: self._transport.join_room(space))
            space_state = RoomState.parse(
                await self._retry(lambda: self._transport.room_state(space_id)))
        except RoomUnavailableError as exc:
            self._problem(report, f"newsbot cannot enter its space {space} ({exc}); invite "
                                  "newsbot there with power level 50 at least")
            return
        if space_state.content("m.room.create").get("type") != "m.space":
            self._problem(report, f"{space} is not a space (a room whose type is m.space)")
            return
        if not space_state.content("m.space.child", room_id).get("via"):
            await self._apply(report, space_id, space_state, Correction(
                "m.space.child", {"via": via}, (f"space {space} lists it",),
                state_key=room_id), label=f"in the space {space}: ")
        if not state.content("m.space.parent", space_id).get("via"):
            await self._apply(report, room_id, state, Correction(
                "m.space.parent", {"via": via, "canonical": True},
                (f"parent space set to {space}",), state_key=space_id))

    # -- after each delivery (the Deliverer's on_delivered hook)

    async def on_delivered(self, delivery: Delivery, room_id: str, event_id: str) -> None:
        room = self._by_id.get(room_id) or self._by_alias.get(delivery.room)
        if room is None or not (room.pin_latest or room.topic_latest):
            return
        self._by_id.setdefault(room_id, room)
        if not _is_feed_item(delivery):
            return
        following = await self._store.next_pending(delivery.room)
        if following is not None and _is_feed_item(following):
            return      # a newer item is about to be posted: that one will be pinned
        if network_of(room.alias) == "xmpp":
            if room.topic_latest:
                await self._show_in_subject(room, delivery)
            return
        if room.pin_latest:
            try:
                await self._pin(room, room_id, event_id)
            except TransportError as exc:
                log.warning("room %s: could not pin the latest issue: %s", room.alias, exc)
        if room.topic_latest:
            try:
                await self._show_in_topic(room, room_id, delivery)
            except TransportError as exc:
                log.warning("room %s: could not put the latest issue in the topic: %s",
                            room.alias, exc)

    async def _pin(self, room: RoomConfig, room_id: str, event_id: str) -> None:
        current = await self._retry(
            lambda: self._transport.state_event(room_id, "m.room.pinned_events")) or {}
        pins = current.get("pinned")
        pinned = [p for p in pins if isinstance(p, str)] if isinstance(pins, list) else []
        if pinned and pinned[-1] == event_id:
            return
        kept = [p for p in pinned if p != event_id and not await self._posted_by_us(room_id, p)]
        # Last, as clients add a pin: they show the most recent pin first.
        await self._retry(lambda: self._transport.set_state(
            room_id, "m.room.pinned_events", {"pinned": [*kept, event_id]}))
        self._remember(event_id, True)
        log.info("room %s: pinned the latest issue %s%s", room.alias, event_id,
                 f" ({len(kept)} pin(s) of other people kept)" if kept else "")

    async def _posted_by_us(self, room_id: str, event_id: str) -> bool:
        known = self._ours.get(event_id)
        if known is not None:
            return known
        try:
            event = await self._retry(lambda: self._transport.room_event(room_id, event_id))
        except RoomUnavailableError:
            return False    # gone, or hidden from newsbot: not newsbot's pin to remove
        ours = event.get("sender") == self._bot
        self._remember(event_id, ours)
        return ours

    def _remember(self, event_id: str, ours: bool) -> None:
        if len(self._ours) >= _CACHE_LIMIT:
            self._ours.clear()
        self._ours[event_id] = ours

    async def _topic_with_latest(self, room: RoomConfig, room_id: str, delivery: Delivery,
                                 now: str) -> str:
        """The room's topic (or a group chat's subject) ending with the latest issue."""
        language = await self._store.room_language(room_id) or self._config.language
        title, link = await self._title_and_link(delivery, language)
        latest = text("topic_latest", language, item=f"{title} {link or ''}".strip())
        base = room.topic if room.topic is not None else split_topic(now)[0]
        return join_topic(base, latest)

    async def _show_in_topic(self, room: RoomConfig, room_id: str,
                             delivery: Delivery) -> None:
        current = await self._retry(
            lambda: self._transport.state_event(room_id, "m.room.topic")) or {}
        now = current.get("topic") if isinstance(current.get("topic"), str) else ""
        topic = await self._topic_with_latest(room, room_id, delivery, str(now))
        if topic == now:
            return
        await self._retry(lambda: self._transport.set_state(room_id, "m.room.topic",
                                                            {"topic": topic}))
        log.info("room %s: the topic now shows the latest issue", room.alias)

    async def _show_in_subject(self, room: RoomConfig, delivery: Delivery) -> None:
        """A group chat's subject is its topic: the latest issue shows there."""
        if self._groups is None:
            return
        try:
            now = await self._groups.group_subject(room.alias)
            subject = await self._topic_with_latest(room, room.alias, delivery, now)
            if subject != now:
                await self._groups.set_group_subject(room.alias, subject)
                log.info("room %s: the subject now shows the latest issue", room.alias)
        except TransportError as exc:
            log.warning("room %s: could not put the latest issue in the subject: %s",
                        room.alias, exc)

    async def _title_and_link(self, delivery: Delivery, language: str) -> tuple[str, str | None]:
        title, link = "", None
        for recent in await self._store.latest([delivery.feed], RECENT_PER_FEED):
            if recent.entry_id == delivery.entry_id:
                title, link = recent.title, recent.link
                break
        else:
            body = delivery.message.body if delivery.message is not None else ""
            title = body.strip().splitlines()[0] if body.strip() else ""
        return bounded_title(title, MAX_TITLE_CHARS) or text("untitled", language), link
