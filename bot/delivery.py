"""Delivery: from the outbox to the rooms, exactly once.

Each target (a room on a network) has one worker that sends its pending rows one at a
time, oldest first (a command's answer first). The protocol that makes it exactly-once:
1. the row is in the outbox (committed with the poll, command or digest that made it);
2. the worker claims it, and its transport encodes its message into the network's payload
   (resolving its picture), unless that was done before;
3. the attempt, with that payload, is recorded before sending, so a resend after a crash
   sends the very same message;
4. the transport sends it idempotently (Matrix: a transaction id derived from the row's
   key, and the key in the content, looked for in the room when the homeserver may have
   forgotten the transaction);
5. it is marked sent only once the network returned the message's id.
Nothing here knows a network's format: features queue messages, transports encode them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bot.clock import Clock
from bot.errors import (
    MessageRejectedError,
    RateLimitedError,
    RoomUnavailableError,
    StorageError,
    TemporaryTransportError,
)
from bot.media import ImageSource
from bot.model import Delivery, Network, Outgoing, Sent, Target, network_of
from bot.store.base import Store
from bot.store.types import NewDelivery

log = logging.getLogger(__name__)

# A row that fails this many times for an unforeseen reason is parked as 'failed'.
PARK_AFTER_FAILURES = 5
# How long a worker's claim on a row holds without being renewed (each send renews it).
CLAIM_SECONDS = 300.0
# Who claims rows: one instance per state database.
LOCAL_OWNER = "local"
# A command's answer or a welcome not sent within this time is dropped, not sent late.
ANSWER_EXPIRY = 3600.0


class DeliveryTransport(Protocol):
    """What delivery needs of a network: reach a target, encode a row, send it once."""

    async def join_room(self, room: str) -> str:
        """Join a room by its reference; returns the id to send to."""
        ...

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        """The network's payload for a row, or None when it has nothing to show."""
        ...

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        """Send a payload once whatever happened before (``attempted_at``: when it was
        first tried, if it was): its id on the network, and whether it was already there.
        ``fence``: asked last before sending; False raises TemporaryTransportError."""
        ...


class Deliverer:
    def __init__(self, store: Store, transport: DeliveryTransport, clock: Clock, *,
                 retry_base: float = 1.0, retry_cap: float = 300.0,
                 unavailable_retry: float = 300.0,
                 on_delivered: Callable[[Delivery, str, str], Awaitable[None]] | None = None,
                 media: ImageSource | None = None, owner: str = LOCAL_OWNER,
                 claim_wait: float | None = None, shared_lease: float | None = None) -> None:
        """``shared_lease`` (several instances on one database): how long a claim holds
        unless renewed (each attempt renews it), so a dead instance's rows go on within
        it; a row another instance holds is looked at again every sixth of it, a target
        with nothing to send every third (another instance may have queued), and a send
        is not begun with less than a sixth of its claim left."""
        self._store = store
        self._transport = transport
        self._clock = clock
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._unavailable_retry = unavailable_retry
        # Called as on_delivered(delivery, room_id, event_id) after a delivery is recorded
        # as sent (e.g. to pin the latest issue); its failures never undo the delivery.
        self._on_delivered = on_delivered
        self._media = media
        self._owner = owner
        self._shared = shared_lease is not None
        self._claim_seconds = shared_lease if shared_lease is not None else CLAIM_SECONDS
        # How often a row claimed elsewhere is retried.
        self._claim_wait = claim_wait if claim_wait is not None else (
            self._claim_seconds / 6 if self._shared else CLAIM_SECONDS)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        self.delivered = 0
        self.parked = 0
        self.refused = 0        # by the homeserver (metrics)

    def wake(self, rooms: list[str]) -> None:
        """New deliveries are waiting in these rooms."""
        for room in rooms:
            self._wakeup(room).set()

    def wake_all(self) -> None:
        for event in self._wakeups.values():
            event.set()

    def stop(self) -> None:
        """Finish the send in flight, then return; pending items stay in the outbox."""
        self._stopping.set()
        self.wake_all()

    def _wakeup(self, room: str) -> asyncio.Event:
        return self._wakeups.setdefault(room, asyncio.Event())

    async def _pause(self, room: str, seconds: float) -> None:
        """Sleep, but wake early when stopping or when told this room has news."""
        wakeup = self._wakeup(room)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=seconds)

    async def run_room(self, room: str, keep: Callable[[], bool] | None = None, *,
                       network: Network | None = None) -> None:
        """The worker of one target: a room on a network. ``keep`` False (a conversation
        the bot no longer has) ends the worker once the room has nothing to send or
        cannot be reached; new deliveries start another."""
        room_id: str | None = None
        failures = 0
        unavailable_logged = False
        wakeup = self._wakeup(room)
        network = network or network_of(room)
        target = Target(network, room)

        def lost() -> bool:
            """A room the bot no longer has: the worker ends (its rows wait for the
            worker that new deliveries start)."""
            if keep is None or keep():
                return False
            self._wakeups.pop(room, None)
            return True

        def backoff() -> float:
            return min(self._retry_base * 2 ** (failures - 1), self._retry_cap)
        while not self._stopping.is_set():
            # Cleared before any work: a wake-up that arrives during the work is kept, and
            # a stale one cannot make the waits below return at once, again and again.
            wakeup.clear()
            delivery: Delivery | None = None
            try:
                if room_id is None:
                    room_id = await self._transport.join_room(room)
                    if self._stopping.is_set():
                        break
                delivery = await self._store.claim_next(target, owner=self._owner,
                                                        now=self._clock.now(),
                                                        lease=self._claim_seconds)
                if delivery is None:
                    if await self._store.next_pending(room, network) is not None:
                        # Claimed by another instance: its claim holds until it lapses.
                        await self._pause(room, self._claim_wait)
                        continue
                    if lost():
                        return
                    if self._shared:
                        await self._pause(room, self._claim_seconds / 3)
                    else:
                        await wakeup.wait()
                    continue
                await self._deliver(room_id, delivery)
                if unavailable_logged:
                    log.info("room %s: delivering again", room)
                    unavailable_logged = False
                failures = 0
            except RateLimitedError as exc:
                delay = exc.retry_after or self._retry_base
                log.info("room %s: rate limited by the homeserver; waiting %.1f s", room, delay)
                await self._pause_unless_stopping(room, delay, interruptible=False)
            except TemporaryTransportError as exc:
                # A room it does not keep (a conversation it lost, a room a command came
                # from) ends its worker only once nothing waits there: a reply is retried.
                if room_id is None and lost() and \
                        await self._store.next_pending(room, network) is None:
                    return
                failures += 1
                delay = backoff()
                log.warning("room %s: %s; retrying in %.0f s", room, exc, delay)
                await self._pause_unless_stopping(room, delay, interruptible=False)
            except MessageRejectedError as exc:
                # Only reachable outside a send (a send's refusal is handled in _deliver):
                # never let it end the worker.
                log.error("room %s: %s", room, exc)
                await self._pause_unless_stopping(room, self._retry_cap, interruptible=True)
            except RoomUnavailableError as exc:
                if lost():
                    return
                if not unavailable_logged:
                    log.error("room %s: %s; its deliveries wait (retrying every %.0f s)",
                              room, exc, self._unavailable_retry)
                    unavailable_logged = True
                room_id = None   # join again, resolving the alias again (it may have moved)
                await self._pause_unless_stopping(room, self._unavailable_retry, interruptible=True)
            except StorageError:
                raise       # the state cannot be written: the bot must stop
            except Exception as exc:
                # A row nobody foresaw (or a bug) must not end the task tree, nor come
                # first again after a restart, forever: it is retried a few times, then
                # parked with its reason, and the room goes on.
                failures += 1
                delay = backoff()
                if delivery is None:
                    log.error("room %s: %s: %s; retrying in %.0f s", room, type(exc).__name__,
                              str(exc)[:300], delay)
                    await self._pause_unless_stopping(room, delay, interruptible=False)
                    continue
                parked = await self._store.record_failure_of(
                    delivery.key, f"{type(exc).__name__}: {exc}", self._clock.now(),
                    park_after=PARK_AFTER_FAILURES)
                outcome = (f"parked as failed after {PARK_AFTER_FAILURES} attempts" if parked
                           else f"retrying in {delay:.0f} s")
                log.error("room %s: delivering %s of feed %s failed (%s: %s); %s", room,
                          delivery.subject or delivery.entry_id, delivery.feed,
                          type(exc).__name__, str(exc)[:300], outcome,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                if parked:
                    self.parked += 1
                    failures = 0
                else:
                    await self._pause_unless_stopping(room, delay, interruptible=False)

    async def _pause_unless_stopping(self, room: str, seconds: float, *,
                                     interruptible: bool) -> None:
        if self._stopping.is_set():
            return
        if interruptible:
            await self._pause(room, seconds)
            return
        # A wake-up for new items must not cut a rate-limit or backoff wait short;
        # only stopping does.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _payload(self, delivery: Delivery) -> dict[str, Any] | None:
        """The row's payload: the one fixed before its first attempt, or its message
        encoded now by the transport. None: nothing to send (recorded why)."""
        late = self._clock.now() - delivery.created_at
        if delivery.kind in ("reply", "welcome") and late > ANSWER_EXPIRY:
            # An answer out of its moment would only puzzle; its words are not kept.
            await self._store.mark_rejected(delivery.key, "too late to be useful",
                                            self._clock.now())
            log.info("room %s: a %s %.0f s old is dropped, too late to be useful",
                     delivery.room, delivery.kind, late)
            return None
        if delivery.payload is not None and delivery.message is not None:
            return delivery.payload
        related = None
        if delivery.kind == "edit":
            # The message it corrects, found now: a target's rows go out in order, so
            # that message was sent (or refused) before this row is reached. Without one,
            # the transport says whether it has anything to send.
            related = await self._store.event_of(delivery.feed, delivery.subject or "",
                                                 delivery.room)
        elif delivery.kind in ("reply", "goodbye"):
            related = delivery.subject
        payload = await self._transport.prepare(
            Outgoing(delivery.key, delivery.kind, delivery.message, delivery.payload, related,
                     room=delivery.room),
            self._media)
        if payload is None and delivery.kind == "edit" and related is None:
            await self._store.mark_rejected(delivery.key, "the message it corrects was never "
                                            "delivered", self._clock.now())
            log.info("room %s: a correction of item %s of feed %s is dropped: the item "
                     "was not delivered there", delivery.room, delivery.subject,
                     delivery.feed)
        elif payload is None:
            await self._store.mark_rejected(delivery.key, "nothing to show", self._clock.now())
            log.info("room %s: the picture of item %s of feed %s cannot be shown; skipped",
                     delivery.room, delivery.subject, delivery.feed)
        return payload

    async def _deliver(self, room_id: str, delivery: Delivery) -> None:
        payload = await self._payload(delivery)
        if payload is None:
            return
        now = self._clock.now()
        if self._shared:
            if not await self._store.mark_attempt(delivery.key, now, payload,
                                                  expected=delivery.message, owner=self._owner,
                                                  lease=self._claim_seconds):
                return      # corrected meanwhile, or our claim lapsed: read again
            # Checked by the transport last before the message leaves: a process frozen
            # (or slowed) past its claim must not send what another instance took over.
            deadline = now + self._claim_seconds * 5 / 6
            sent = await self._send(room_id, payload, delivery, now,
                                    fence=lambda: self._clock.now() < deadline)
        elif not await self._store.mark_attempt(delivery.key, now, payload,
                                                expected=delivery.message):
            return      # a correction replaced it while it was encoded: read again
        else:
            sent = await self._send(room_id, payload, delivery, now)
        if sent is None:
            return
        event_id = sent.message_id
        await self._store.mark_sent(delivery.key, event_id, self._clock.now())
        if sent.already_there:
            log.info("room %s: item %s of feed %s was already delivered (%s)",
                     delivery.room, delivery.entry_id, delivery.feed, event_id)
            return
        self.delivered += 1
        log.info("room %s: posted item %s of feed %s (%s)", delivery.room, delivery.entry_id,
                 delivery.feed, event_id)
        if self._on_delivered is not None:
            try:
                await self._on_delivered(delivery, room_id, event_id)
            except Exception:
                log.warning("room %s: after posting %s:", delivery.room, event_id,
                            exc_info=True)

    async def _send(self, room_id: str, payload: dict[str, Any], delivery: Delivery,
                    now: float, fence: Callable[[], bool] | None = None) -> Sent | None:
        """The transport's send; None when the network refused the message for good
        (recorded, and the room goes on)."""
        try:
            if fence is None:
                return await self._transport.send(room_id, payload, delivery.key,
                                                  attempted_at=delivery.first_attempt_at,
                                                  now=now)
            return await self._transport.send(room_id, payload, delivery.key,
                                              attempted_at=delivery.first_attempt_at,
                                              now=now, fence=fence)
        except MessageRejectedError as exc:
            # Retrying cannot help and would hold back every later item of the room.
            await self._store.mark_rejected(delivery.key, str(exc), self._clock.now())
            self.refused += 1
            log.error("room %s: item %s of feed %s was refused by the homeserver and is "
                      "skipped: %s", delivery.room, delivery.entry_id, delivery.feed, exc)
            return None


class Outbox:
    """How features say something (a command's answer, a welcome): rows queued in the
    store, where they get what feed items get (retries, order, exactly once), and the
    target's worker woken. Features queue; they never send."""

    def __init__(self, store: Store, clock: Clock,
                 on_enqueued: Callable[[list[str]], None]) -> None:
        self._store = store
        self._clock = clock
        self._on_enqueued = on_enqueued

    async def queue(self, feed: str, rows: Sequence[NewDelivery]) -> list[str]:
        """Queue rows (a row whose key is already queued is not queued twice)."""
        rooms = await self._store.enqueue(feed, rows, self._clock.now())
        if rooms:
            self._on_enqueued(rooms)
        return rooms
