"""Welcoming newcomers of an announcement room (``welcome: dm``): the latest issue is sent
to them privately — never a message to the whole room.

A person who is already a personal subscriber, or has a conversation with the bot, is
welcomed there; anyone else gets a new private conversation — only while the bot has fewer
than ``commands.max_conversations`` (a stranger joining with many accounts must not open
conversation after conversation, nor take the places of people who write to the bot). The
conversations opened for a welcome are remembered until their person joins: one nobody
joined within a week is left, so it does not hold a place forever
(one whose invitation was declined is left at once, by the transport).
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import logging
from collections.abc import Callable

from bot.clock import Clock, SystemClock
from bot.config import Config, RoomConfig
from bot.delivery import Outbox
from bot.errors import TransportError
from bot.i18n import text
from bot.model import Message
from bot.render import entry_line
from bot.store.base import Store
from bot.store.types import NewDelivery
from bot.transport.base import Transport

log = logging.getLogger(__name__)

# Conversations opened for a welcome, not joined yet: room id -> [person, opened at].
UNANSWERED_KEY = "welcome.unanswered"
UNANSWERED_FOR = 7 * 24 * 3600.0    # then left, their place under the cap freed
SWEEP_EVERY = 3600.0                # how often unanswered conversations are looked at
CAP_LOG_EVERY = 3600.0              # one line about welcomes skipped at the cap, at most
WELCOMES = "newsbot:welcomes"       # the outbox's name for welcomes (their rows' "feed")


class Welcomer:
    def __init__(self, config: Config, store: Store, transport: Transport, outbox: Outbox,
                 managed_room: Callable[[str], RoomConfig | None],
                 room_feeds: Callable[[str], list[str]], personal: bool,
                 clock: Clock | None = None) -> None:
        self._config = config
        self._store = store
        self._transport = transport
        self._outbox = outbox
        self._clock: Clock = clock or SystemClock()
        self._skipped = 0                   # welcomes skipped at the cap since the last line
        self._cap_logged_at: float | None = None
        self._managed_room = managed_room      # room id -> its declaration, if managed
        self._room_feeds = room_feeds          # room id -> names of its feeds
        self._personal = personal              # are personal subscriptions offered?
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=500)
        # Who was welcomed lately, per room (bounded, never stored): leaving and joining
        # again must not open conversation after conversation.
        self._welcomed: collections.OrderedDict[tuple[str, str], None] = \
            collections.OrderedDict()

    def submit(self, room_id: str, user_id: str, event_id: str) -> None:
        """From the sync loop: never blocks it."""
        room = self._managed_room(room_id)
        if room is None or room.welcome != "dm" or (room_id, user_id) in self._welcomed:
            return
        self._welcomed[(room_id, user_id)] = None
        if len(self._welcomed) > 10_000:
            self._welcomed.popitem(last=False)
        try:
            self._queue.put_nowait((room_id, user_id, event_id))
        except asyncio.QueueFull:
            log.warning("room %s: too many newcomers at once; one was not welcomed", room.alias)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            if loop.time() >= next_sweep:
                await self.sweep()
                next_sweep = loop.time() + SWEEP_EVERY
            try:
                room_id, user_id, event_id = await asyncio.wait_for(
                    self._queue.get(), timeout=max(0.0, next_sweep - loop.time()))
            except TimeoutError:
                continue
            try:
                await self.welcome(room_id, user_id, event_id)
            except TransportError as exc:
                log.warning("could not welcome a newcomer of %s: %s", room_id, exc)

    async def welcome(self, room_id: str, user_id: str, event_id: str) -> None:
        room = self._managed_room(room_id)
        if room is None:
            return
        subscriber = await self._store.subscriber(user_id)
        lang = (subscriber.language if subscriber and subscriber.language
                else await self._store.room_language(room_id) or self._config.language)
        latest = await self._store.latest(self._room_feeds(room_id), 1)
        if latest:
            entry = latest[0]
            shown = entry_line(entry.title, entry.published, entry.link, lang, bullet="")
        else:
            shown = text("welcome_nothing", lang)
        body = text("welcome", lang, room=room.name or room.alias, latest=shown)
        if self._personal:
            body += text("welcome_dm_hint", lang)
        # One conversation per person: theirs if they already have one.
        dm = subscriber.dm_room if subscriber else next(
            (room for room, person in self._transport.direct_rooms().items()
             if person == user_id), None) or await self._open_conversation(user_id, room.alias)
        if dm is None:
            return
        # Through the outbox, named by the join event: sent once, retried like any message.
        await self._outbox.queue(WELCOMES, [NewDelivery(
            f"welcome:{event_id}", dm,
            Message(body, html.escape(body, quote=False).replace("\n", "<br>")),
            kind="welcome")])
        log.info("room %s: a newcomer is welcomed privately", room.alias)

    async def _open_conversation(self, user_id: str, alias: str) -> str | None:
        """A new conversation for a welcome, only under the cap (None: skipped)."""
        cap = self._config.commands.max_conversations
        if len(self._transport.direct_rooms()) >= cap:
            await self.sweep()      # a week-old unanswered welcome may free a place
        held = len(self._transport.direct_rooms())
        if held >= cap:
            self._skipped += 1
            now = self._clock.now()
            if self._cap_logged_at is None or now - self._cap_logged_at >= CAP_LOG_EVERY:
                # One line per period, not per person: many accounts joining must not
                # flood the log either.
                log.warning("room %s: %d newcomer(s) not welcomed: %d private conversations "
                            "already, the cap (commands.max_conversations: %d); said once "
                            "an hour", alias, self._skipped, held, cap)
                self._cap_logged_at, self._skipped = now, 0
            return None
        dm = await self._transport.create_direct_room(user_id)
        unanswered = await self._unanswered()
        unanswered[dm] = (user_id, self._clock.now())
        await self._save_unanswered(unanswered)
        return dm

    async def sweep(self) -> None:
        """Let go of the conversations opened for a welcome that nobody joined in a week,
        and forget those already left or joined. (Their invitation cannot be withdrawn:
        in a trusted private chat the invitee's power level equals the bot's.)"""
        unanswered = await self._unanswered()
        if not unanswered:
            return
        direct = self._transport.direct_rooms()
        now = self._clock.now()
        changed = False
        for dm, (user_id, opened_at) in list(unanswered.items()):
            if dm in direct and now - opened_at < UNANSWERED_FOR:
                continue
            try:
                if dm in direct and user_id not in await self._transport.joined_members(dm):
                    await self._transport.leave_direct(dm)
                    log.info("left a welcome conversation nobody joined in %d days",
                             UNANSWERED_FOR // 86400)
            except TransportError as exc:
                log.warning("could not leave an unanswered welcome conversation: %s", exc)
                continue
            del unanswered[dm]
            changed = True
        if changed:
            await self._save_unanswered(unanswered)

    async def _unanswered(self) -> dict[str, tuple[str, float]]:
        raw = await self._store.get(UNANSWERED_KEY)
        loaded = json.loads(raw) if raw else {}
        return {str(dm): (str(user), float(at)) for dm, (user, at) in loaded.items()}

    async def _save_unanswered(self, unanswered: dict[str, tuple[str, float]]) -> None:
        await self._store.put(UNANSWERED_KEY, json.dumps(
            {dm: [user, at] for dm, (user, at) in unanswered.items()}, sort_keys=True))
