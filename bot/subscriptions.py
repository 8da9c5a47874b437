"""Personal subscriptions by direct message: ``subscribe``, ``unsubscribe``, ``digest``,
``list``, ``archive``, ``lang``, ``forget me``.

Only feeds marked ``public: true`` are open to it. ``archive`` shows, besides them, the
feeds of rooms anyone may read (``join_rule: public`` with ``shared`` or
``world_readable`` history), and the feeds of any other room only to a person joined to it
when they ask — the homeserver is asked each time. What is stored about a person: their
Matrix id, the direct-message room their items go to, and their choices — nothing else;
``forget me`` deletes all of it in one transaction. Items go through the same outbox as
rooms' items (exactly once); a digest is one outbox message per period, queued together
with the removal of the items it lists.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from bot.clock import Clock
from bot.config import Config
from bot.errors import TransportError
from bot.i18n import LANGUAGES, text
from bot.model import Message
from bot.render import (
    DEFAULT_MAX_MESSAGE_BYTES,
    bounded_title,
    clean_link,
    defang_text,
    entry_line,
    format_date,
    link_markup,
)
from bot.store.base import Store
from bot.store.types import DigestItem, NewDelivery
from bot.transport.base import JoinToPoint, Transport

log = logging.getLogger(__name__)

DIGEST_PERIODS = {"daily": 86400.0, "weekly": 7 * 86400.0}
DIGEST_FEED = "newsbot.digest"          # the outbox's feed column for digests
ARCHIVE_DEFAULT, ARCHIVE_MAX = 5, 20
POINTER_EVERY = 3600.0      # one pointer to a person's conversation per hour, at most


def small_number(word: str) -> int | None:
    """A count a person may type: 1 to 3 ASCII digits ("²" and 5,000 digits are not)."""
    return int(word) if re.fullmatch(r"[0-9]{1,3}", word) else None


def personal_words(body: str, prefix: str) -> list[str]:
    """A direct message's words ("!news subscribe" works there too)."""
    words = body.strip().split()
    if words and words[0].casefold() == prefix.casefold():
        words = words[1:]
    return words


def is_forget_me(body: str, prefix: str) -> bool:
    """The whole message, not a sentence that ends with it ("please never forget me")."""
    return [w.casefold() for w in personal_words(body, prefix)] == ["forget", "me"]


class PersonalSubscriptions:
    def __init__(self, config: Config, store: Store, clock: Clock,
                 on_enqueued: Callable[[list[str]], None],
                 transport: Transport | None = None) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._on_enqueued = on_enqueued
        # Asked who may read which room; without it only public feeds are shown.
        self._transport = transport
        self.check_every = 600.0        # how often due digests are looked for
        self._pointed: dict[str, float] = {}    # person -> when last pointed (bounded)

    @property
    def enabled(self) -> bool:
        return bool(self.public_feeds())

    @property
    def accepts_conversations(self) -> bool:
        """Private conversations serve personal subscriptions and the archive for members
        of announcement rooms."""
        return self.enabled or bool(self._config.rooms)

    def public_feeds(self) -> list[str]:
        return [feed.name for feed in self._config.feeds if feed.public]

    async def archive_feeds(self, user_id: str) -> list[str]:
        """The feeds whose items this person may read in private: public ones, those of a
        room anyone can read, and those of a room they are joined to now. Anyone can
        write to the bot: a room that cannot be checked counts as closed."""
        verdicts: dict[str, bool] = {}      # room reference -> readable (asked once)
        readable = []
        for feed in self._config.feeds:
            if feed.public:
                readable.append(feed.name)
                continue
            for ref in feed.rooms:
                if ref not in verdicts:
                    verdicts[ref] = await self._may_read(ref, user_id)
                if verdicts[ref]:
                    readable.append(feed.name)
                    break
        return readable

    async def _may_read(self, room: str, user_id: str) -> bool:
        if self._transport is None:
            return False
        try:
            return await self._transport.may_read(await self._transport.resolve_room(room),
                                                  user_id)
        except TransportError as exc:
            log.warning("archive: cannot tell who may read %s (%s); its feeds are not shown",
                        room, exc)
            return False

    async def language(self, user_id: str) -> str:
        subscriber = await self._store.subscriber(user_id)
        return (subscriber.language if subscriber and subscriber.language
                else self._config.language)

    # -- the conversation ------------------------------------------------------------------

    async def handle(self, room_id: str, user_id: str, body: str) -> str:
        """Answer one direct message (the text of the answer). Each command is the whole
        message: "please never forget me" is not "forget me"."""
        words = personal_words(body, self._config.commands.prefix)
        lang = await self.language(user_id)
        public = self.public_feeds()
        name = words[0].casefold() if words else "help"
        args = words[1:]
        if name == "help" and not args:
            return text("dm_help", lang)
        if is_forget_me(body, self._config.commands.prefix):
            await self._store.forget_user(user_id)
            log.info("forgot everything about a subscriber, as they asked")
            return text("dm_forgotten", lang)
        if name == "lang" and len(args) == 1 and args[0].casefold() in LANGUAGES:
            await self._store.save_subscriber(user_id, room_id, language=args[0].casefold())
            return text("lang_set", args[0].casefold())
        if name == "archive" and (not args or len(args) == 1
                                  and small_number(args[0]) is not None):
            count = small_number(args[0]) if args else None
            return await self._archive(await self.archive_feeds(user_id),
                                 min(max(count or ARCHIVE_DEFAULT, 1), ARCHIVE_MAX), lang)
        if name in ("subscribe", "unsubscribe", "list", "digest") and not public:
            return text("dm_no_public", lang)
        if name == "list" and not args:
            subscriber = await self._store.subscriber(user_id)
            mine = subscriber.feeds if subscriber else ()
            digest = subscriber.digest if subscriber else "off"
            return text("dm_list", lang, feeds=", ".join(public),
                        mine=", ".join(mine) or text("none", lang),
                        digest=text(f"digest_{digest}", lang))
        if name in ("subscribe", "unsubscribe"):
            chosen = public if not args else [a for a in args if a in public]
            unknown = [a for a in args if a not in public]
            if unknown:
                return text("dm_unknown_feed", lang, name=unknown[0][:64],
                            feeds=", ".join(public))
            if name == "subscribe":
                await self._store.save_subscriber(user_id, room_id)
                await self._store.subscribe(user_id, chosen)
                log.info("a personal subscription to %s", ", ".join(chosen))
                return text("dm_subscribed", lang, feeds=", ".join(chosen))
            if await self._store.subscriber(user_id) is None:
                return text("dm_not_subscribed", lang)
            await self._store.unsubscribe(user_id, chosen)
            return text("dm_unsubscribed", lang, feeds=", ".join(chosen))
        if name == "digest" and len(args) == 1 and args[0] in ("daily", "weekly", "off"):
            period = args[0]
            previous = await self._store.subscriber(user_id)
            if previous is not None and previous.digest != "off" and period != previous.digest:
                await self._flush(previous.user_id, previous.dm_room, previous.digest, lang)
            due = self._clock.now() + DIGEST_PERIODS[period] if period != "off" else None
            await self._store.save_subscriber(user_id, room_id, digest=period, digest_due=due)
            return text("dm_digest_set", lang, digest=text(f"digest_{period}", lang))
        return text("dm_unknown", lang, command=" ".join(words)[:40])

    async def answer_invitation(self, room_id: str, inviter: str) -> bool | JoinToPoint:
        """A direct-message invitation: one conversation per person (a second one gets a
        pointer to the first), and at most ``commands.max_conversations`` of them."""
        if not self.accepts_conversations or self._transport is None:
            return False
        conversations = self._transport.direct_rooms()
        first = next((room for room, person in conversations.items()
                      if person == inviter and room != room_id), None)
        subscriber = await self._store.subscriber(inviter)
        if first is None and subscriber is not None and subscriber.dm_room != room_id:
            first = subscriber.dm_room
        if first is not None:
            now = self._clock.now()
            if now - self._pointed.get(inviter, -POINTER_EVERY) < POINTER_EVERY:
                log.info("declined a private conversation: its person already has one "
                         "(told lately)")
                return False
            self._pointed[inviter] = now
            if len(self._pointed) > 10_000:
                self._pointed.pop(next(iter(self._pointed)))
            log.info("a person opened a second private conversation: pointing them to "
                     "the first")
            return JoinToPoint(text("dm_already_open", await self.language(inviter),
                                    link=f"https://matrix.to/#/{first}"))
        cap = self._config.commands.max_conversations
        if len(conversations) >= cap:
            log.warning("declined a direct-message invitation: %d private conversations "
                        "already, the cap (commands.max_conversations: %d)",
                        len(conversations), cap)
            return False
        log.info("accepting a direct-message invitation")
        return True

    async def conversation_closed(self, room_id: str, user_id: str) -> None:
        """The person left their conversation (the bot left it too): nothing can reach
        them there any more, so what was stored for it goes, as with ``forget me``."""
        subscriber = await self._store.subscriber(user_id)
        if subscriber is not None and subscriber.dm_room == room_id:
            await self._store.forget_user(user_id)
            log.info("a subscriber left their private conversation: forgot them")

    async def _flush(self, user_id: str, dm_room: str, period: str, lang: str) -> None:
        """Leaving a digest period: what waited for it goes out now, never lost."""
        items = await self._store.digest_items(user_id)
        if not items:
            return
        deliveries = digest_deliveries(items, period, lang, dm_room,
                                       f"newsbot:digest:{int(self._clock.now())}")
        rooms = await self._store.send_digest(user_id, items, deliveries, DIGEST_FEED, 0.0,
                                        self._clock.now())
        if rooms:
            self._on_enqueued(rooms)

    async def _archive(self, feeds: list[str], count: int, lang: str) -> str:
        entries = await self._store.latest(feeds, count)
        if not entries:
            return text("latest_empty", lang)
        lines = [text("archive_header", lang)]
        lines += [entry_line(e.title, e.published, e.link, lang) for e in entries]
        return "\n".join(lines)

    # -- digests ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.check_every)

    async def tick(self) -> list[str]:
        """Queue every digest that is due. Returns the rooms given something."""
        now = self._clock.now()
        rooms: list[str] = []
        for subscriber in await self._store.due_digests(now):
            period = DIGEST_PERIODS.get(subscriber.digest)
            if period is None or subscriber.digest_due is None:
                continue
            items = await self._store.digest_items(subscriber.user_id)
            next_due = subscriber.digest_due + period
            while next_due <= now:          # the bot was down: one digest, not a backlog
                next_due += period
            lang = subscriber.language or self._config.language
            # Nothing new: no "0 new items" message, only the next due date moves.
            deliveries = digest_deliveries(
                items, subscriber.digest, lang, subscriber.dm_room,
                f"newsbot:digest:{int(subscriber.digest_due)}") if items else []
            rooms += await self._store.send_digest(subscriber.user_id, items, deliveries,
                                             DIGEST_FEED, next_due, now)
        if rooms:
            self._on_enqueued(rooms)
        return rooms


def digest_deliveries(items: Sequence[DigestItem], period: str, lang: str, room: str,
                      digest_id: str) -> list[NewDelivery]:
    """A digest as outbox rows: one message, or several when its items do not fit in
    one message's byte budget — never an item dropped."""
    messages = digest_messages(items, period, lang)
    deliveries = []
    for number, message in enumerate(messages, start=1):
        entry_id = digest_id if number == 1 else f"{digest_id}:{number}"
        deliveries.append(NewDelivery(entry_id, room, message, kind="digest"))
    return deliveries


def _digest_line(item: DigestItem, lang: str) -> tuple[str, str]:
    """An item's line: plain text and HTML."""
    when = format_date(datetime.fromtimestamp(item.published, UTC), lang) \
        if item.published else ""
    title = bounded_title(item.title) or text("untitled", lang)
    link = clean_link(item.link)
    plain = " — ".join(p for p in (title, when, link or "") if p)
    markup = link_markup(title, link)
    # As sent (the transport breaks hostile addresses), so its size counts right.
    return (defang_text(f"• {plain}"),
            defang_text(f"<li>{markup}{' — ' + html.escape(when) if when else ''}</li>"))


def digest_messages(items: Sequence[DigestItem], period: str, lang: str, *,
                    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[Message]:
    """The digest's messages, each under ``max_bytes``; with several, each header says
    which part it is."""
    lines = [_digest_line(item, lang) for item in items]
    period_name = text(f"digest_{period}", lang)
    # Room for the header, counted at its longest (part numbers included).
    header_room = 2 * len(json.dumps(text("digest_header_part", lang, period=period_name,
                                          count=len(items), part=len(items),
                                          parts=len(items))))
    budget = max_bytes - header_room - 64
    groups: list[list[tuple[str, str]]] = [[]]
    size = 0
    for line in lines:
        # Counted as message_size counts: in the event's ASCII-escaped JSON.
        cost = len(json.dumps(line[0])) + len(json.dumps(line[1]))
        if groups[-1] and size + cost > budget:
            groups.append([])
            size = 0
        groups[-1].append(line)
        size += cost
    messages = []
    for number, group in enumerate(groups, start=1):
        if len(groups) == 1:
            header = text("digest_header", lang, period=period_name, count=len(items))
        else:
            header = text("digest_header_part", lang, period=period_name, count=len(items),
                          part=number, parts=len(groups))
        messages.append(Message("\n".join([header, "", *(p for p, _ in group)]),
                                f"<p>{html.escape(header)}</p><ul>"
                                f"{''.join(h for _, h in group)}</ul>"))
    return messages
