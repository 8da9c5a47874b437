"""Welcoming newcomers of an announcement room (``welcome: dm``): the latest issue is sent
to them privately — never a message to the whole room.

Nothing is stored for it: a person who is already a personal subscriber is welcomed in
their existing conversation; anyone else gets a new private conversation.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import html
import logging
from collections.abc import Callable

from bot.config import Config, RoomConfig
from bot.delivery import event_content
from bot.errors import TransportError
from bot.i18n import text
from bot.model import Message
from bot.render import entry_line
from bot.store import Store
from bot.transport.base import Transport

log = logging.getLogger(__name__)


class Welcomer:
    def __init__(self, config: Config, store: Store, transport: Transport,
                 managed_room: Callable[[str], RoomConfig | None],
                 room_feeds: Callable[[str], list[str]], personal: bool) -> None:
        self._config = config
        self._store = store
        self._transport = transport
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
        while True:
            room_id, user_id, event_id = await self._queue.get()
            try:
                await self.welcome(room_id, user_id, event_id)
            except TransportError as exc:
                log.warning("could not welcome a newcomer of %s: %s", room_id, exc)

    async def welcome(self, room_id: str, user_id: str, event_id: str) -> None:
        room = self._managed_room(room_id)
        if room is None:
            return
        subscriber = self._store.subscriber(user_id)
        lang = (subscriber.language if subscriber and subscriber.language
                else self._store.room_language(room_id) or self._config.language)
        latest = self._store.latest(self._room_feeds(room_id), 1)
        if latest:
            entry = latest[0]
            shown = entry_line(entry.title, entry.published, entry.link, lang).removeprefix("• ")
        else:
            shown = text("welcome_nothing", lang)
        body = text("welcome", lang, room=room.name or room.alias, latest=shown)
        if self._personal:
            body += text("welcome_dm_hint", lang)
        # One conversation per person: theirs if they already have one.
        dm = subscriber.dm_room if subscriber else next(
            (room for room, person in self._transport.direct_rooms().items()
             if person == user_id), None) or await self._transport.create_direct_room(user_id)
        html_body = html.escape(body, quote=False).replace("\n", "<br>")
        key = hashlib.sha256(f"welcome\0{event_id}".encode()).hexdigest()[:32]
        # The join event names the welcome: a retried send is the same message.
        await self._transport.send_message(
            dm, event_content(Message(body, html_body), msgtype="m.notice", key=key),
            f"newsbot.welcome.{key}")
        log.info("room %s: a newcomer was welcomed privately", room.alias)
