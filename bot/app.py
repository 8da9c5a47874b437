"""Wiring: one supervisor task tree runs the pollers, the delivery workers and the sync.

Lifecycle: open the store -> connect (waiting for the homeserver) -> run every loop in one
TaskGroup -> on SIGTERM/SIGINT stop polling, let in-flight sends finish (bounded), close.
A failure in any loop that is not handled where it happens (e.g. revoked credentials)
ends the whole tree, and with it the process, with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from bot.clock import Clock, SystemClock
from bot.commands import CommandRunner, FeedView
from bot.config import Config, FeedConfig
from bot.delivery import LOCAL_OWNER, Deliverer, Outbox
from bot.errors import TransportError
from bot.feeds.fetch import Fetcher, FetchResult
from bot.instances import (
    FollowerMemory,
    Leadership,
    PollLeases,
    instance_name,
    taken_once,
)
from bot.media import MediaResolver
from bot.metrics import DELIVERY_OUTCOMES, Metrics
from bot.model import Delivery, Network
from bot.poller import FeedPoller, Polls
from bot.rooms import RoomManager
from bot.store import RoomFeed, SqliteStore, Store
from bot.subscriptions import PersonalSubscriptions
from bot.transport.base import (
    EventHandlers,
    GroupChats,
    IncomingMessage,
    JoinToPoint,
    Messaging,
    Transport,
)
from bot.welcome import Welcomer

if TYPE_CHECKING:   # the listener's modules load aiohttp.web: only when it is on
    from bot.http import Loop, PushOutcome
    from bot.websub import WebSub

log = logging.getLogger(__name__)

T = TypeVar("T")

DRAIN_SECONDS = 10.0
ADMIN_ROOMS_KEY = "app.admin_invited_rooms"
PRUNE_EVERY = 24 * 3600.0
KEEP_SENT_ROWS = 30 * 24 * 3600.0
KEEP_MEDIA_ROWS = 90 * 24 * 3600.0
KEEP_TAKEN_EVENTS = 7 * 24 * 3600.0
# Several instances: the declared rooms are checked and corrected by one at a time.
ROOMS_LEASE = "rooms"
ROOMS_LEASE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Waits:
    """The longest waits between retries: a send to the network, a reconnection. Nothing an
    operator sets; tests of outages shorten them so that recovery is seen in seconds."""

    delivery_retry_cap: float = 300.0
    reconnect_cap: float = 60.0


class App:
    def __init__(self, config: Config, *, transport: Transport | None = None,
                 store: Store | None = None, clock: Clock | None = None,
                 reset_cross_signing: bool = False, reset_password: str | None = None,
                 waits: Waits = Waits()) -> None:
        self.config = config
        self.waits = waits
        self.clock: Clock = clock or SystemClock()
        if store is None and config.storage.url is not None:
            raise ValueError("storage.url: the database is opened first (App.open)")
        self.store: Store = store or SqliteStore.open(config.storage.path)
        # Several instances on one database: this one's name, and whether it leads.
        self.owner = instance_name(config.storage.path) if self.store.shared else LOCAL_OWNER
        self._follower = FollowerMemory(self.clock, config.storage.lease)
        self._poll_leases = PollLeases(
            self.store, self.clock, self.owner,
            duration=config.storage.lease + config.fetch.timeout,
            retry=min(config.storage.lease / 10, 5.0)) if self.store.shared else None
        self.leadership = Leadership(self.store, self.clock, self.owner,
                                     duration=config.storage.lease,
                                     on_lead=self._replay_commands)
        self._group_chats: GroupChats | None = None
        if transport is None:
            transport = self._transports(reset_cross_signing, reset_password)
        self.transport: Transport = transport
        self.rooms = RoomManager(config, self.transport, self.store,   # the rooms: section
                                 groups=self._group_chats)
        # Images have their own size cap; the SSRF policy is the feeds' one.
        self._image_fetcher = Fetcher(allow_private_networks=config.fetch.allow_private_networks,
                                      max_body_bytes=config.fetch.max_image_bytes,
                                      total_timeout=config.fetch.timeout,
                                      connect_timeout=config.fetch.connect_timeout)
        media = MediaResolver(self._image_fetcher, self.transport, self.store, self.clock)
        self.deliverer = Deliverer(self.store, self.transport, self.clock, media=media,
                                   on_delivered=self._on_delivered,
                                   retry_cap=waits.delivery_retry_cap, owner=self.owner,
                                   shared_lease=config.storage.lease if self.store.shared
                                   else None)
        self.metrics = Metrics(
            self.store, self.transport, self.clock,
            lambda: [feed for feed, _ in self._feeds.values()], config.bot_ids,
            lambda: self.deliverer.delivered,
            deliveries=lambda: dict(zip(DELIVERY_OUTCOMES, (
                self.deliverer.delivered, self.deliverer.refused, self.deliverer.parked),
                strict=True)))
        # How commands and welcomes say something: through the same outbox as items.
        self.outbox = Outbox(self.store, self.clock, self._enqueued)
        self.subscriptions = PersonalSubscriptions(config, self.store, self.clock,
                                                   on_enqueued=self._enqueued,
                                                   transport=self.transport)
        self._stop = asyncio.Event()
        # Every feed's schedule, in one task (bot.poller.Polls), fetch.concurrency at once.
        self._polls = Polls(asyncio.Semaphore(config.fetch.concurrency))
        self._polls_task: asyncio.Task[None] | None = None
        # One jitter source for every poller: a Random holds 2.5 KiB of state, 25 MiB
        # at 10,000 feeds if each had its own.
        self._rng = random.Random()
        self._room_ids: dict[str, str] = {}          # configured room name -> room id
        self._feeds: dict[str, tuple[FeedConfig, bool]] = {}   # name -> (feed, from config)
        self._pollers: dict[str, FeedPoller] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self._leadership_task: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._fetcher: Fetcher | None = None

    def _replay_commands(self) -> None:
        """Now leading: commands seen while following, which the last leader may not have
        answered (each is answered once: the first instance to take it)."""
        count = self._follower.replay()
        if count:
            log.info("looking at %d command(s) seen before leading", count)

    @classmethod
    async def open(cls, config: Config, **kwargs: Any) -> App:
        """The bot, its state opened first (PostgreSQL is opened over the network)."""
        from bot.store import open_store
        return cls(config, store=await open_store(config.storage), **kwargs)

    def _transports(self, reset_cross_signing: bool, reset_password: str | None) -> Transport:
        """The network the configuration names, or one transport over both."""
        config = self.config
        transports: dict[Network, Messaging] = {}
        matrix: Transport | None = None
        if config.matrix is not None:
            from bot.transport.matrix import MatrixTransport
            transports["matrix"] = matrix = MatrixTransport(
                config.matrix, self.store, config.storage.path, encryption=config.encryption,
                reset_cross_signing=reset_cross_signing, reset_password=reset_password,
                max_connect_wait=self.waits.reconnect_cap)
        if config.xmpp is not None:
            from bot.transport.xmpp import XmppTransport, account_of
            instance = self.owner if self.store.shared else None
            xmpp = XmppTransport(account_of(config.xmpp, instance), self.store)
            transports["xmpp"] = self._group_chats = xmpp
        if matrix is not None and len(transports) == 1:
            return matrix
        from bot.transport.networks import Networks
        return Networks(transports, matrix)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: no more polling; finishing the sends in flight")
        self._stop.set()

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """Run ``work`` unless a stop is requested first (then cancel it, return None)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise       # the cancellation was aimed at us, not at ``work``
        return None

    async def _on_invite(self, room_id: str, inviter: str,
                         is_direct: bool = False) -> bool | JoinToPoint | None:
        if not self.leadership.leads:
            return None     # the leading instance answers it
        if is_direct and self.subscriptions.accepts_conversations:
            # A person opening a private conversation, for personal subscriptions.
            return await self.subscriptions.answer_invitation(room_id, inviter)
        if inviter in self.config.admins:
            log.info("accepting the invite to %s from admin %s", room_id, inviter)
            rooms = await self._admin_rooms()
            if room_id not in rooms:
                rooms.append(room_id)
                await self.store.put(ADMIN_ROOMS_KEY, json.dumps(rooms))
            return True
        if room_id in self._room_ids.values() or any(
                room_id in feed.rooms for feed, _ in self._feeds.values()):
            # A room the configuration posts to: the operator already chose it.
            log.info("accepting the invite to configured room %s from %s", room_id, inviter)
            return True
        log.warning("rejecting the invite to %s from %s: not in admins", room_id,
                    inviter or "an unknown user")
        return False

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        self._install_signal_handlers()
        try:
            connected = await self._unless_stopped(self._connect())
            if connected is None:
                return
            await self._supervise()
        finally:
            await self._image_fetcher.close()
            await self.transport.close()
            await self.store.aclose()
            log.info("stopped")

    async def _connect(self) -> bool:
        await self.transport.connect()
        # Declared rooms exist, as declared, before any feed resolves or posts into them.
        if not self.store.shared:
            await self.rooms.prepare()
            return True
        # Several instances starting together: one at a time, or two would both create a
        # declared room that does not exist yet.
        while True:
            if await self.store.take_lease(ROOMS_LEASE, self.owner, now=self.clock.now(),
                                           duration=ROOMS_LEASE_SECONDS):
                break
            await asyncio.sleep(1.0)        # another instance is at it: seconds
        try:
            await self.rooms.prepare()
        finally:
            await self.store.release_lease(ROOMS_LEASE, self.owner)
        return True

    async def _same_rooms(self) -> dict[str, str]:
        """Map each configured room to one name per actual room: an alias and the id of
        the same room must not make two deliveries of every item. Also learns the room
        id behind each name, so room commands find their feeds."""
        first_by_id: dict[str, str] = {}
        canonical: dict[str, str] = {}
        for ref in dict.fromkeys(r for feed in self.config.feeds for r in feed.rooms):
            try:
                room_id = await self.transport.resolve_room(ref)
            except TransportError:
                canonical[ref] = ref     # resolved again when its worker joins
                continue
            self._room_ids[ref] = room_id
            first = first_by_id.setdefault(room_id, ref)
            if first != ref:
                log.warning("rooms %s and %s are the same room (%s): posting there once",
                            first, ref, room_id)
            canonical[ref] = first
        return canonical

    # -- the running feeds (bot.commands.FeedBook) ----------------------------------------

    def feeds_in_room(self, room_id: str) -> list[FeedView]:
        views = []
        for feed, from_config in self._feeds.values():
            for ref in feed.rooms:
                if ref == room_id or self._room_ids.get(ref) == room_id:
                    views.append(FeedView(feed, ref, from_config))
                    break
        return views

    async def _admin_rooms(self) -> list[str]:
        raw = await self.store.get(ADMIN_ROOMS_KEY)
        return list(json.loads(raw)) if raw else []

    async def may_add_feeds(self, room_id: str) -> bool:
        """Rooms whose moderators may add feeds: those the configuration posts to, the
        managed ones, and those an admin brought the bot into. Anyone can make a room
        and be its moderator: a room the bot merely sits in must not become a way to
        make it fetch arbitrary addresses."""
        return bool(self.feeds_in_room(room_id)) or self.rooms.managed(room_id) is not None \
            or room_id in await self._admin_rooms()

    async def name_taken(self, name: str) -> bool:
        # A name that ever had state keeps it (seen entries): never reuse one.
        return name in self._feeds or await self.store.feed_state(name) is not None

    async def add_room_feed(self, feed: RoomFeed, first: FetchResult | None = None) -> None:
        """Start a feed added by command. ``first``: the body the command read; it is the
        feed's first sight, so what the command reported is exactly what is marked seen
        (an entry published a second later is new)."""
        await self.store.add_room_feed(feed)
        log.info("feed %s added to %s by %s: %s", feed.name, feed.room, feed.added_by, feed.url)
        self._start_feed(self._room_feed_config(feed), from_config=False, first=first)

    async def remove_room_feed(self, name: str) -> None:
        poller = self._pollers.pop(name, None)
        if poller is not None:
            self._polls.remove(poller)
        self._feeds.pop(name, None)
        await self.store.remove_room_feed(name)
        log.info("feed %s removed", name)

    def _room_feed_config(self, feed: RoomFeed) -> FeedConfig:
        return FeedConfig(name=feed.name, url=feed.url, rooms=(feed.room,),
                          interval=feed.interval)

    async def _room_language(self, ref: str) -> str | None:
        return await self.store.room_language(self._room_ids.get(ref, ref))

    def _start_feed(self, feed: FeedConfig, *, from_config: bool,
                    first: FetchResult | None = None) -> None:
        assert self._tasks is not None and self._fetcher is not None
        self._feeds[feed.name] = (feed, from_config)
        poller = FeedPoller(feed, store=self.store, fetcher=self._fetcher, clock=self.clock,
                            fetch_config=self.config.fetch, language=self.config.language,
                            on_enqueued=self._enqueued,
                            room_language=self._room_language, observe=self.metrics.fetched,
                            rng=self._rng, leases=self._poll_leases)
        self._pollers[feed.name] = poller
        self._polls.add(poller, first)
        for room in feed.rooms:
            self._start_worker(room)

    # -- the HTTP listener (bot.http) ----------------------------------------------------

    def _http_task(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        if self.config.listen is None:
            return []
        # bot.http loads aiohttp.web (2 MiB): only a bot with the listener on imports it.
        from bot.http import HEARTBEAT_KEY, HttpListener
        websub = self._websub()
        shared = self.store.shared
        listener = HttpListener(self.store, self.clock, loops=self.loops,
                                metrics=self.metrics, push=self.poll_soon,
                                push_token=self.config.http.push_token,
                                routes=websub.routes() if websub is not None else (),
                                leases=self.leases_held if shared else None,
                                heartbeat_key=f"{HEARTBEAT_KEY}.{self.owner}" if shared
                                else HEARTBEAT_KEY)
        tasks = [tg.create_task(listener.serve(*self.config.listen), name="http")]
        if websub is not None:
            # Subscribing and renewing at the hubs is the leader's; any instance takes pushes.
            tasks.append(tg.create_task(self.leadership.while_leading("websub", websub.run),
                                        name="websub"))
        return tasks

    def _websub(self) -> WebSub | None:
        """Hubs push feeds (bot.websub) when the listener has a public address."""
        cfg = self.config
        if cfg.http.public_url is None:
            return None
        from bot.websub import WebSub  # only with http.public_url
        return WebSub(public_url=cfg.http.public_url, store=self.store, clock=self.clock,
                      deliver=self._pushed,
                      feeds=lambda: [feed for feed, _ in self._feeds.values()],
                      max_body_bytes=cfg.fetch.max_body_bytes,
                      allow_private_networks=cfg.fetch.allow_private_networks,
                      timeout=cfg.fetch.timeout, connect_timeout=cfg.fetch.connect_timeout)

    async def _pushed(self, name: str, fetched: FetchResult) -> None:
        """A body a hub pushed: the feed's poller reads it as if it had fetched it."""
        poller = self._pollers.get(name)
        if poller is None or poller.ended:
            return
        poller.hand_over(fetched)

    def poll_soon(self, name: str) -> PushOutcome:
        """A push: poll the feed ``name`` now (bot.poller's poll_soon)."""
        poller = self._pollers.get(name)
        if poller is None:
            return "unknown"
        if poller.ended:
            return "stopped"
        return "queued" if poller.poll_soon() else "joined"

    async def leases_held(self) -> list[str]:
        """The leases this instance holds now (several instances: /healthz shows them)."""
        return [lease.name for lease in await self.store.leases(self.clock.now())
                if lease.owner == self.owner]

    def loops(self) -> list[Loop]:
        """The loops health wants running: the sync, the feeds' polling (one task for
        every feed) and the worker of every room the feeds post to."""
        from bot.http import Loop  # asked by the listener's health check
        loops = [Loop("sync", self._sync_task), Loop("feed polling", self._polls_task)]
        if self.store.shared:
            loops.append(Loop("leadership", self._leadership_task))
        rooms = dict.fromkeys(r for feed, _ in self._feeds.values() for r in feed.rooms)
        loops += [Loop(f"delivery to {room}", self._workers.get(room)) for room in rooms]
        return loops

    async def _on_delivered(self, delivery: Delivery, room_id: str, event_id: str) -> None:
        self.metrics.sent(delivery)
        if delivery.kind == "goodbye":
            await self._leave_after_goodbye(delivery.room)
            return
        await self.rooms.on_delivered(delivery, room_id, event_id)

    def _joined(self, room_id: str) -> None:
        """An invitation was answered: the room's worker, which may be waiting for a room
        it could not join, tries now. Only its worker: a hundred invitations answered at
        start would wake every worker a hundred times."""
        names = [room_id, *(ref for ref, known in self._room_ids.items() if known == room_id)]
        workers = [name for name in dict.fromkeys(names) if name in self._workers]
        if workers:
            self.deliverer.wake(workers)
        else:
            self.deliverer.wake_all()     # a name not resolved yet may be this room's

    def _enqueued(self, rooms: list[str]) -> None:
        """New deliveries: rooms seen for the first time (a new subscriber's private
        conversation) get a worker, and every one is woken."""
        if self._tasks is not None:
            for room in rooms:
                self._start_worker(room)
        self.deliverer.wake(rooms)

    def _start_worker(self, room: str) -> None:
        assert self._tasks is not None
        running = self._workers.get(room)
        if running is not None and not running.done():
            return
        # A worker may end (a conversation the bot no longer has): new deliveries start
        # another. No await between its last look at the outbox and its end, so none is
        # missed.
        task = self._tasks.create_task(
            self.deliverer.run_room(room, keep=lambda: self._keeps_worker(room)),
            name=f"deliver {room}")
        self._workers[room] = task
        task.add_done_callback(lambda done: self._worker_done(room, done))

    def _worker_done(self, room: str, task: asyncio.Task[None]) -> None:
        if self._workers.get(room) is task:
            del self._workers[room]

    def _keeps_worker(self, room: str) -> bool:
        """Rooms feeds post to and the bot's private conversations keep their worker;
        any other (a conversation it lost or left) lets it end once it has nothing to
        send, so workers do not pile up as conversations come and go."""
        return self.transport.is_direct(room) or any(
            room in feed.rooms for feed, _ in self._feeds.values())

    def delivery_workers(self) -> list[str]:
        """The rooms whose delivery worker runs (metrics, tests)."""
        return [room for room, task in self._workers.items() if not task.done()]

    def _direct_closed(self, room_id: str, user_id: str) -> None:
        """From the sync loop, which must not wait for the store: the forgetting runs
        in a task of its own."""
        if self._tasks is not None:
            self._tasks.create_task(self._forget_closed(room_id, user_id),
                                    name=f"closed {room_id}")

    async def _leave_after_goodbye(self, room: str) -> None:
        """A private conversation's last answer was sent: leave it and keep nothing of it
        (done again at start for a goodbye sent just before a stop)."""
        try:
            if self.transport.is_direct(room):
                await self.transport.leave_direct(room)
        except TransportError as exc:
            log.warning("could not leave a private conversation: %s; trying again at the "
                        "next start", exc)
            return
        await self.store.forget_conversation(room)

    async def _forget_closed(self, room_id: str, user_id: str) -> None:
        await self.subscriptions.conversation_closed(room_id, user_id)
        # Whoever it was with (a subscriber or not): nothing of it is kept.
        await self.store.forget_conversation(room_id)
        self.deliverer.wake([room_id])      # its worker sees the room is gone, and ends

    # -- the task tree ------------------------------------------------------------------

    async def _supervise(self) -> None:
        cfg = self.config
        canonical = await self._same_rooms()
        configured = [replace(feed, rooms=tuple(dict.fromkeys(canonical[r] for r in feed.rooms)))
                      for feed in cfg.feeds]
        config_names = {feed.name for feed in configured}
        room_feeds = []
        for added in await self.store.room_feeds():
            if added.name in config_names:
                log.warning("feed %s was added by command in %s, but the configuration now "
                            "defines a feed of that name; the configuration wins",
                            added.name, added.room)
                continue
            room_feeds.append(self._room_feed_config(added))
        async with Fetcher(allow_private_networks=cfg.fetch.allow_private_networks,
                           max_body_bytes=cfg.fetch.max_body_bytes,
                           total_timeout=cfg.fetch.timeout,
                           connect_timeout=cfg.fetch.connect_timeout) as fetcher, \
                asyncio.TaskGroup() as tg:
            self._tasks, self._fetcher = tg, fetcher
            for said in await self.store.goodbyes_said():     # a stop came in between
                await self._leave_after_goodbye(said)
            for room in [*await self.store.pending_rooms(), *await self.store.dm_rooms()]:
                self._start_worker(room)
            for config_feed in configured:
                self._start_feed(config_feed, from_config=True)
            for room_feed in room_feeds:
                self._start_feed(room_feed, from_config=False)
            self._polls_task = tg.create_task(self._polls.run(), name="polls")
            log.info("watching %d feed(s) for %d room(s)", len(self._feeds),
                     len(self._workers))
            commands = CommandRunner(cfg, self.store, self.transport, fetcher, self,
                                     self.clock, self.outbox, subscriptions=self.subscriptions,
                                     first=taken_once(self.store, self.owner, self.clock,
                                                      "command"))
            welcomer = Welcomer(
                cfg, self.store, self.transport, self.outbox, self.rooms.managed,
                lambda room_id: [v.config.name for v in self.feeds_in_room(room_id)],
                personal=self.subscriptions.enabled, clock=self.clock)
            leading = self.leadership

            def on_message(message: IncomingMessage) -> None:
                if leading.leads:
                    commands.submit(message)
                else:       # answered here only if the leader dies before answering
                    self._follower.keep(lambda: commands.submit(message))

            def on_member_joined(room_id: str, user_id: str, event_id: str) -> None:
                if leading.leads:
                    welcomer.submit(room_id, user_id, event_id)

            def on_direct_closed(room_id: str, user_id: str) -> None:
                if leading.leads:
                    self._direct_closed(room_id, user_id)

            handlers = EventHandlers(on_invite=self._on_invite,
                                     on_joined=self._joined,
                                     on_message=on_message,
                                     on_member_joined=on_member_joined,
                                     on_direct_closed=on_direct_closed)
            self._sync_task = tg.create_task(self.transport.run_sync(handlers), name="sync")
            self._leadership_task = tg.create_task(leading.run(), name="leadership")
            background = [self._sync_task, self._polls_task,
                          self._leadership_task,
                          tg.create_task(commands.run(), name="commands"),
                          tg.create_task(leading.while_leading("digests",
                                                               self.subscriptions.run),
                                         name="digests"),
                          tg.create_task(leading.while_leading("welcome", welcomer.run),
                                         name="welcome"),
                          *self._http_task(tg),
                          tg.create_task(self._maintain(), name="maintenance")]
            if self.store.shared:
                background.append(tg.create_task(self._look_for_others_work(config_names),
                                                 name="shared state"))
            await self._stop.wait()
            for task in background:
                task.cancel()
            self.deliverer.stop()
            _, late = await asyncio.wait(self._workers.values(), timeout=DRAIN_SECONDS) \
                if self._workers else (set(), set())
            for task in late:
                log.warning("%s: send still in flight after %.0f s; it will be retried "
                            "on the next start", task.get_name(), DRAIN_SECONDS)
                task.cancel()
        self._tasks = self._fetcher = None

    async def _maintain(self) -> None:
        while True:
            removed = await self.store.prune_sent(self.clock.now() - KEEP_SENT_ROWS)
            if removed:
                log.info("forgot %d delivered outbox rows older than 30 days", removed)
            # Old images: an item needing one again fetches and uploads it again.
            await self.store.prune_media(self.clock.now() - KEEP_MEDIA_ROWS)
            await self.store.prune_taken(self.clock.now() - KEEP_TAKEN_EVENTS)
            await asyncio.sleep(PRUNE_EVERY)

    async def _look_for_others_work(self, config_names: set[str]) -> None:
        """Several instances: what another one queued or added reaches this one too —
        rows of rooms it had no worker for, feeds added or removed by command there."""
        while True:
            # As often as a lease is renewed: what a dead instance left waits no longer.
            await asyncio.sleep(self.config.storage.lease / 3)
            for room in await self.store.pending_rooms():
                self._start_worker(room)
            added = {f.name: f for f in await self.store.room_feeds()
                     if f.name not in config_names}
            for name, (_, from_config) in list(self._feeds.items()):
                if not from_config and name not in added:
                    poller = self._pollers.pop(name, None)
                    if poller is not None:
                        self._polls.remove(poller)
                    self._feeds.pop(name, None)
                    log.info("feed %s was removed by another instance", name)
            for name, feed in added.items():
                if name not in self._feeds:
                    log.info("feed %s was added by another instance", name)
                    self._start_feed(self._room_feed_config(feed), from_config=False)
