"""Room commands: ``!news help | list | latest | status`` for everyone, and ``add | remove |
pause | resume | interval | filter | lang`` for moderators.

Parsing and answering are here; what a command changes goes through the store and the
``FeedBook`` (the running feeds). Every answer exists in French and English (bot.i18n).
"""

from __future__ import annotations

import asyncio
import collections
import html
import logging
import re
import shlex
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from bot.clock import Clock
from bot.config import Config, FeedConfig, parse_duration
from bot.delivery import Outbox
from bot.errors import FeedError, TransportError
from bot.feeds.fetch import Fetcher, FetchResult
from bot.feeds.hints import FeedHints, describe, effective_interval
from bot.feeds.parse import parse_feed_async
from bot.i18n import LANGUAGES, format_duration, format_time, text
from bot.metrics import count_readers
from bot.model import Message, network_of
from bot.render import entry_line
from bot.store.base import Store
from bot.store.types import FeedState, NewDelivery, RoomFeed, RoomFeedSettings
from bot.subscriptions import PersonalSubscriptions, is_forget_me, small_number
from bot.transport.base import IncomingMessage, Transport
from bot.urls import text_for_members, text_for_moderators, url_for_members, url_for_moderators

log = logging.getLogger(__name__)

USAGES = {
    "help": "{p} help",
    "list": "{p} list",
    "latest": "{p} latest [n]",
    "status": "{p} status",
    "add": "{p} add URL [name]",
    "remove": "{p} remove NAME",
    "pause": "{p} pause NAME",
    "resume": "{p} resume NAME",
    "interval": "{p} interval NAME 30m",
    "filter": "{p} filter NAME include|exclude WORDS  —  {p} filter NAME clear",
    "lang": "{p} lang fr|en",
    "archive": "{p} archive [n]",
    "stats": "{p} stats",
}
MODERATOR_COMMANDS = frozenset({"add", "remove", "pause", "resume", "interval", "filter",
                                "lang"})
FEED_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MIN_COMMAND_INTERVAL = 60.0
MAX_COMMAND_INTERVAL = 30 * 86400.0
LATEST_DEFAULT, LATEST_MAX = 5, 20
# Each room has its own small queue and worker, so a slow command (an "add" waiting for a
# slow server) only delays its own room, and one room's flood never crowds out another's.
ROOM_QUEUE = 20           # commands waiting in one room
# The outbox's name for the answers to commands (its rows' "feed").
REPLIES = "newsbot:replies"
MAX_BUSY_ROOMS = 200      # rooms with commands being answered at once


class UsageError(Exception):
    """The command's arguments do not fit its usage line."""


@dataclass(frozen=True, slots=True)
class FeedView:
    """A feed as one room sees it."""

    config: FeedConfig
    room_ref: str            # how the feed names this room (settings are keyed by it)
    from_config: bool


class FeedBook(Protocol):
    """The running feeds, as the commands may see and change them."""

    def feeds_in_room(self, room_id: str) -> list[FeedView]: ...

    async def name_taken(self, name: str) -> bool: ...

    async def may_add_feeds(self, room_id: str) -> bool: ...

    async def add_room_feed(self, feed: RoomFeed,
                            first: FetchResult | None = None) -> None: ...

    async def remove_room_feed(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    body: str
    then_leave: bool = False       # leave the (private) room after answering


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: list[str]


def parse_command(body: str, prefix: str) -> Command | None:
    """``None`` when the message is not addressed to the bot."""
    stripped = body.strip()
    head, _, rest = stripped.partition(" ")
    if head.casefold() != prefix.casefold():
        return None
    try:
        words = shlex.split(rest)
    except ValueError:                      # an unbalanced quote
        words = rest.split()
    if not words:
        return Command("help", [])
    return Command(words[0].casefold(), words[1:])


def slug(title: str) -> str:
    """A feed name from a title: "Actualités d'InterHop" -> "actualites-d-interhop"."""
    plain = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", plain.lower())
    return "-".join(words)[:40].strip("-") or "feed"


class RateLimiter:
    """At most ``count`` commands per user in any ``window`` seconds."""

    def __init__(self, count: int, window: float, clock: Clock) -> None:
        self._count = count
        self._window = window
        self._clock = clock
        self._seen: dict[str, collections.deque[float]] = {}
        self._told: dict[str, float] = {}

    def allow(self, user: str) -> tuple[bool, bool]:
        """(allowed, tell): ``tell`` is True once per window for a refused user, so the
        answer to flooding is not itself a flood."""
        now = self._clock.now()
        times = self._seen.setdefault(user, collections.deque())
        while times and now - times[0] >= self._window:
            times.popleft()
        if len(times) < self._count:
            times.append(now)
            return True, False
        told = self._told.get(user)
        tell = told is None or now - told >= self._window
        if tell:
            self._told[user] = now
        return False, tell

    def forget_idle(self) -> None:
        now = self._clock.now()
        for user in [u for u, t in self._seen.items() if not t or now - t[-1] > self._window]:
            self._seen.pop(user, None)
            self._told.pop(user, None)


class CommandRunner:
    def __init__(self, config: Config, store: Store, transport: Transport, fetcher: Fetcher,
                 book: FeedBook, clock: Clock, outbox: Outbox,
                 subscriptions: PersonalSubscriptions | None = None,
                 first: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._config = config
        # Several instances: whether this one is the first to take a message (by its
        # event id); only that one answers it.
        self._first = first
        self._commands = config.commands
        self._store = store
        self._transport = transport
        self._outbox = outbox
        self._fetcher = fetcher
        self._book = book
        self._clock = clock
        self._limiter = RateLimiter(config.commands.rate_limit, config.commands.rate_window,
                                    clock)
        self._subscriptions = subscriptions
        # Per room: (message, allowed) waiting; a room is here while its worker runs.
        self._rooms: dict[str, asyncio.Queue[tuple[IncomingMessage, bool]]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()      # rooms needing a worker
        # Subscribers' conversations recorded before the transport knew them as private
        # ones (read once at start: the sync loop must not wait for the store).
        self._subscriber_rooms: set[str] = set()

    # -- intake ------------------------------------------------------------------------

    def submit(self, message: IncomingMessage) -> None:
        """Called from the sync loop: never blocks it. The rate limit applies here, before
        queuing: one person's flood never takes the place of anyone else's command."""
        if parse_command(message.body, self._commands.prefix) is None and (
                self._subscriptions is None or not self._transport.is_direct(message.room_id)
                and message.room_id not in self._subscriber_rooms):
            return      # chat, not a command (direct messages need no prefix)
        allowed, tell = self._limiter.allow(message.sender)
        if not allowed and not tell:
            log.info("rate limit: ignoring a command from %s in %s", message.sender,
                     message.room_id)
            return
        queue = self._rooms.get(message.room_id)
        if queue is None:
            if len(self._rooms) >= MAX_BUSY_ROOMS:
                log.warning("commands waiting in too many rooms; ignoring one from %s in %s",
                            message.sender, message.room_id)
                return
            queue = self._rooms[message.room_id] = asyncio.Queue(maxsize=ROOM_QUEUE)
            self._ready.put_nowait(message.room_id)
        try:
            queue.put_nowait((message, allowed))
        except asyncio.QueueFull:
            log.warning("too many commands waiting in %s; ignoring one from %s",
                        message.room_id, message.sender)

    async def run(self) -> None:
        """One worker per room with commands waiting; it ends when its queue is empty."""
        self._subscriber_rooms = set(await self._store.dm_rooms())
        async with asyncio.TaskGroup() as workers:
            while True:
                room_id = await self._ready.get()
                workers.create_task(self._serve(room_id), name=f"commands {room_id}")

    async def _serve(self, room_id: str) -> None:
        queue = self._rooms[room_id]
        try:
            # No await between finding the queue empty and dropping it: a command
            # submitted meanwhile starts a new worker.
            while not queue.empty():
                message, allowed = queue.get_nowait()
                await self._answer(message, allowed)
        finally:
            if self._rooms.get(room_id) is queue:
                del self._rooms[room_id]
            self._limiter.forget_idle()

    async def _answer(self, message: IncomingMessage, allowed: bool) -> None:
        if self._first is not None and not await self._first(message.event_id):
            log.info("a message in %s was answered by another instance", message.room_id)
            return
        try:
            reply = await self.handle(message, allowed=allowed)
        except Exception:
            # Whatever a message contains, it must never stop the bot.
            log.exception("a command in %s could not be handled", message.room_id)
            reply = Reply(text("failed", await self.language(message.room_id),
                               reason="internal error"))
        if reply is None:
            return
        await self._queue_reply(message, reply)

    # -- answering ---------------------------------------------------------------------

    async def language(self, room_id: str) -> str:
        return await self._store.room_language(room_id) or self._config.language

    async def _private(self, room_id: str) -> bool:
        """Is this the bot's direct conversation with one person (no feed posts there)?"""
        if self._subscriptions is None or not self._subscriptions.accepts_conversations or \
                self._book.feeds_in_room(room_id):
            return False
        # Known from how the bot joined (a direct invitation, or a conversation it opened),
        # never guessed from a member count: a fresh two-person room is not a DM.
        return self._transport.is_direct(room_id) or \
            await self._store.subscriber_by_room(room_id) is not None

    async def handle(self, message: IncomingMessage, *, allowed: bool = True) -> Reply | None:
        """The answer to one message; ``allowed`` False: the sender is over the rate limit
        (told once per window)."""
        command = parse_command(message.body, self._commands.prefix)
        try:
            private = await self._private(message.room_id)
        except TransportError as exc:
            log.warning("reading %s's members: %s", message.room_id, exc)
            private = False
        if private and self._subscriptions is not None:
            lang = await self._subscriptions.language(message.sender)
            if not allowed:
                return Reply(text("rate_limited", lang, count=self._commands.rate_limit,
                                  seconds=int(self._commands.rate_window)))
            return await self._personal(message, self._subscriptions, lang)
        if command is None:
            return None
        lang = await self.language(message.room_id)
        p = self._commands.prefix
        if not allowed:
            return Reply(text("rate_limited", lang, count=self._commands.rate_limit,
                              seconds=int(self._commands.rate_window)))
        log.info("command %r from %s in %s", command.name, message.sender, message.room_id)
        if command.name not in USAGES:
            return Reply(text("unknown_command", lang, command=command.name[:40], p=p))
        try:
            if command.name in MODERATOR_COMMANDS and \
                    not await self._may_moderate(message.room_id, message.sender):
                # XMPP has roles, not power levels (bot.transport.xmpp maps them).
                if network_of(message.room_id) == "xmpp":
                    return Reply(text("need_moderator", lang))
                return Reply(text("need_power", lang, level=self._commands.min_power_level))
            return await getattr(self, f"_cmd_{command.name}")(message, command.args, lang)
        except _UnknownFeed as exc:
            return Reply(text("unknown_feed", lang, name=exc.name[:64], p=p))
        except UsageError:
            return Reply(text("usage", lang, usage=USAGES[command.name].format(p=p)))
        except TransportError as exc:
            log.warning("command %r in %s: %s", command.name, message.room_id, exc)
            return Reply(text("failed", lang, reason=str(exc)))

    async def _personal(self, message: IncomingMessage, subscriptions: PersonalSubscriptions,
                        lang: str) -> Reply:
        """A message in a private conversation. Personal commands only where the sender
        is alone with the bot; ``forget me`` anywhere, for the sender's rows only, and
        the bot leaves only the sender's own conversation."""
        forget = is_forget_me(message.body, self._commands.prefix)
        try:
            members = await self._transport.joined_members(message.room_id)
        except TransportError as exc:
            log.warning("reading %s's members: %s", message.room_id, exc)
            return Reply(text("failed", lang, reason=str(exc)))
        if len(members) > 2 and not forget:
            return Reply(text("dm_group", lang))
        answer = await subscriptions.handle(message.room_id, message.sender, message.body)
        person = self._transport.direct_rooms().get(message.room_id, "")
        own = len(members) <= 2 and person in (message.sender, "")
        return Reply(answer, then_leave=forget and own)

    async def _may_moderate(self, room_id: str, user: str) -> bool:
        if user in self._config.admins:
            return True
        level = await self._transport.power_level(room_id, user)
        return level >= self._commands.min_power_level

    def _room_feed(self, room_id: str, name: str) -> FeedView | None:
        for view in self._book.feeds_in_room(room_id):
            if view.config.name == name:
                return view
        return None

    # -- everyone ----------------------------------------------------------------------

    async def _cmd_help(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        return Reply(text("help", lang, p=self._commands.prefix,
                          level=self._commands.min_power_level))

    async def _cmd_list(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if args:
            raise UsageError
        views = self._book.feeds_in_room(message.room_id)
        if not views:
            return Reply(text("no_feeds", lang))
        try:
            moderator = await self._may_moderate(message.room_id, message.sender)
        except TransportError as exc:
            log.warning("reading %s's power levels: %s", message.room_id, exc)
            moderator = False       # unsure: show what every member may see
        # A feed URL may carry credentials: members never see userinfo or the query
        # (tokens live there), moderators see all but the userinfo.
        show_url = url_for_moderators if moderator else url_for_members
        show_text = text_for_moderators if moderator else text_for_members
        lines = [text("list_header", lang)]
        for view in views:
            feed = view.config
            state = await self._store.feed_state(feed.name)
            settings = (await self._store.feed_room_settings(feed.name)).get(view.room_ref,
                                                                     RoomFeedSettings())
            interval = await self._store.feed_interval(feed.name) or feed.interval
            line = text("list_line", lang, name=feed.name,
                        url=show_url(state.url if state else feed.url),
                        interval=format_duration(interval, lang),
                        success=format_time(state.last_success if state else None, lang),
                        error=(show_text(state.last_error) if state and state.last_error
                               else text("none", lang)),
                        paused=text("paused_mark", lang) if settings.paused else "",
                        origin=text("from_config", lang) if view.from_config else "")
            filters = _describe_filters(settings, lang)
            if filters:
                line += text("filters_mark", lang, filters=filters)
            lines.append(line)
        return Reply("\n".join(lines))

    async def _cmd_latest(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if len(args) > 1 or (args and small_number(args[0]) is None):
            raise UsageError
        count = min(small_number(args[0]) or 1, LATEST_MAX) if args else LATEST_DEFAULT
        feeds = [v.config.name for v in self._book.feeds_in_room(message.room_id)]
        entries = await self._store.latest(feeds, max(count, 1))
        if not entries:
            return Reply(text("latest_empty", lang))
        lines = [text("latest_header", lang)]
        lines += [entry_line(e.title, e.published, e.link, lang) for e in entries]
        return Reply("\n".join(lines))

    async def _cmd_status(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if args:
            raise UsageError
        views = self._book.feeds_in_room(message.room_id)
        if not views:
            return Reply(text("no_feeds", lang))
        lines = [text("status_header", lang)]
        for view in views:
            state = await self._store.feed_state(view.config.name)
            # The reason names the URL ("HTTP 410 Gone at ..."): as members may see it.
            gone = text("status_gone", lang, reason=text_for_members(state.disabled)) \
                if state and state.disabled else ""
            lines.append(text(
                "status_line", lang, name=view.config.name,
                last=format_time(state.last_fetch if state else None, lang),
                next=format_time(state.next_fetch if state and not state.disabled else None,
                                 lang),
                failures=state.failures if state else 0, state=gone)
                + ("" if gone else await self._schedule(view, state, lang)))
        return Reply("\n".join(lines))

    async def _schedule(self, view: FeedView, state: FeedState | None, lang: str) -> str:
        """"; every 2 h (the feed asks for ttl 120 min; configured 15 min)": the effective
        interval from the hints the feed last gave (bot.feeds.hints)."""
        set_by_command = await self._store.feed_interval(view.config.name)
        hints = FeedHints.from_json(state.hints if state else None)
        interval = effective_interval(set_by_command or view.config.interval, hints,
                                      self._config.fetch.max_interval)
        return text("status_schedule", lang, schedule=describe(
            interval, hints, by_command=set_by_command is not None or not view.from_config,
            language=lang))

    async def _cmd_archive(self, message: IncomingMessage, args: list[str],
                           lang: str) -> Reply:
        reply = await self._cmd_latest(message, args, lang)
        return Reply(reply.body.replace(text("latest_header", lang),
                                        text("archive_header", lang), 1))

    async def _cmd_stats(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        """Readers per feed, counted, never listed: joined members of the feed's rooms
        (the bot aside) plus personal subscribers."""
        if args:
            raise UsageError
        views = self._book.feeds_in_room(message.room_id)
        if not views:
            return Reply(text("no_feeds", lang))
        lines = [text("stats_header", lang)]
        for view in views:
            readers = await count_readers(self._transport, self._store, view.config,
                                          self._config.bot_ids)
            lines.append(text("stats_line", lang, name=view.config.name,
                              members=readers.members, subscribers=readers.subscribers))
        return Reply("\n".join(lines))

    # -- moderators --------------------------------------------------------------------

    async def _cmd_add(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if not 1 <= len(args) <= 2:
            raise UsageError
        url = args[0].strip("<>")
        p = self._commands.prefix
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            return Reply(text("bad_url", lang, url=url_for_moderators(url)[:200]))
        if len(args) == 2 and not FEED_NAME.match(args[1]):
            return Reply(text("bad_name", lang, name=args[1][:64]))
        if message.sender not in self._config.admins and \
                not await self._book.may_add_feeds(message.room_id):
            return Reply(text("add_needs_admin", lang))
        in_room = self._book.feeds_in_room(message.room_id)
        cap = self._commands.max_feeds_per_room
        if len(in_room) >= cap:
            return Reply(text("feed_cap", lang, count=len(in_room)))
        try:
            result = await self._fetcher.fetch(url)
            if result.body is None:
                raise FeedError("the server sent no content")
            parsed = await parse_feed_async(result.body, content_type=result.content_type,
                                            url=result.final_url)
        except FeedError as exc:
            return Reply(text("add_failed", lang, url=url_for_moderators(url)[:200],
                              reason=text_for_moderators(str(exc))))
        if len(args) == 2:
            name = args[1]
            if await self._book.name_taken(name):
                return Reply(text("name_taken", lang, name=name, p=p))
        else:
            base = slug(parsed.title or urlsplit(url).hostname or "")
            name, n = base, 1
            while await self._book.name_taken(name):
                n += 1
                name = f"{base}-{n}"
        await self._book.add_room_feed(RoomFeed(
            name=name, url=result.permanent_url or url, room=message.room_id,
            interval=self._commands.default_interval, added_by=message.sender,
            added_at=self._clock.now()), first=result)
        title = parsed.title or urlsplit(url).hostname or ""
        return Reply(text("added", lang, name=name, title=title[:200],
                          count=len(parsed.entries)))

    def _named(self, message: IncomingMessage, args: list[str], arity: int) -> FeedView:
        if len(args) != arity:
            raise UsageError
        view = self._room_feed(message.room_id, args[0])
        if view is None:
            raise _UnknownFeed(args[0])
        return view

    async def _cmd_remove(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        view = self._named(message, args, 1)
        if view.from_config:
            return Reply(text("config_feed", lang, name=view.config.name))
        await self._book.remove_room_feed(view.config.name)
        return Reply(text("removed", lang, name=view.config.name))

    async def _set_paused(self, message: IncomingMessage, args: list[str], lang: str,
                          paused: bool) -> Reply:
        view = self._named(message, args, 1)
        settings = (await self._store.feed_room_settings(view.config.name)).get(view.room_ref,
                                                                        RoomFeedSettings())
        await self._store.set_feed_room_settings(
            view.config.name, view.room_ref,
            RoomFeedSettings(paused, settings.include, settings.exclude))
        return Reply(text("paused" if paused else "resumed", lang, name=view.config.name))

    async def _cmd_pause(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        return await self._set_paused(message, args, lang, True)

    async def _cmd_resume(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        return await self._set_paused(message, args, lang, False)

    async def _cmd_interval(self, message: IncomingMessage, args: list[str],
                            lang: str) -> Reply:
        view = self._named(message, args, 2)
        try:
            seconds = parse_duration(args[1])
        except ValueError:
            seconds = -1.0
        if not MIN_COMMAND_INTERVAL <= seconds <= MAX_COMMAND_INTERVAL:
            return Reply(text("bad_interval", lang, value=args[1][:40],
                              minimum=format_duration(MIN_COMMAND_INTERVAL, lang),
                              maximum=format_duration(MAX_COMMAND_INTERVAL, lang)))
        await self._store.set_feed_interval(view.config.name, seconds)
        return Reply(text("interval_set", lang, name=view.config.name,
                          interval=format_duration(seconds, lang)))

    async def _cmd_filter(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if len(args) < 2:
            raise UsageError
        view = self._named(message, args[:1], 1)
        mode, words = args[1].casefold(), [w for w in args[2:] if w.strip()]
        name = view.config.name
        settings = await self._store.feed_room_settings(name)
        current = settings.get(view.room_ref, RoomFeedSettings())
        if mode == "clear" and not words:
            updated = RoomFeedSettings(current.paused)
        elif mode == "include" and words:
            updated = RoomFeedSettings(current.paused, tuple(words), current.exclude)
        elif mode == "exclude" and words:
            updated = RoomFeedSettings(current.paused, current.include, tuple(words))
        else:
            raise UsageError
        await self._store.set_feed_room_settings(name, view.room_ref, updated)
        described = _describe_filters(updated, lang)
        if not described:
            return Reply(text("filter_cleared", lang, name=name))
        return Reply(text("filter_set", lang, name=name, filters=described))

    async def _cmd_lang(self, message: IncomingMessage, args: list[str], lang: str) -> Reply:
        if len(args) != 1 or args[0].casefold() not in LANGUAGES:
            raise UsageError
        chosen = args[0].casefold()
        await self._store.set_room_language(message.room_id, chosen)
        return Reply(text("lang_set", chosen))

    # -- sending -----------------------------------------------------------------------

    async def _queue_reply(self, message: IncomingMessage, reply: Reply) -> NewDelivery:
        """The answer, through the outbox: retried like any message, and one answer per
        command (its key derives from the command's id) even across a restart."""
        row = NewDelivery(
            f"reply:{message.event_id}", message.room_id,
            Message(reply.body, html.escape(reply.body, quote=False).replace("\n", "<br>"),
                    # A goodbye names nobody: nothing of the person is kept after it.
                    mentions=() if reply.then_leave else (message.sender,)),
            # A goodbye: once it is sent, the bot leaves and forgets the conversation (the
            # delivery does it, so a restart in between does not keep it).
            kind="goodbye" if reply.then_leave else "reply", subject=message.event_id)
        await self._outbox.queue(REPLIES, [row])
        return row


class _UnknownFeed(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _describe_filters(settings: RoomFeedSettings, lang: str) -> str:
    parts = []
    if settings.include:
        parts.append(text("filter_include", lang, words=_words(settings.include)))
    if settings.exclude:
        parts.append(text("filter_exclude", lang, words=_words(settings.exclude)))
    return ", ".join(parts)


def _words(words: Sequence[str]) -> str:
    return ", ".join(f"“{w}”" for w in words)
