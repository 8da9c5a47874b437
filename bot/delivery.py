"""Delivery: from the outbox to the rooms, exactly once.

Each room has one worker that sends its pending deliveries one at a time, oldest first.
The protocol that makes it exactly-once:
1. the delivery is in the outbox (committed with the poll that found the entry);
2. an attempt is recorded before sending;
3. it is sent with a transaction id derived from the delivery key, so a resend after a
   crash returns the first event instead of creating a second one;
4. it is marked sent only once the homeserver returned an event id.
Homeservers forget transaction ids after a while (Synapse: ~30 minutes), so a delivery
whose first attempt is older than that is first looked for in the room's history, by the
delivery key every event carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from bot.clock import Clock
from bot.errors import (
    MessageRejectedError,
    RateLimitedError,
    RoomUnavailableError,
    StorageError,
    TemporaryTransportError,
)
from bot.media import IMAGE_FIELD
from bot.model import Delivery, Message
from bot.store import Store
from bot.transport.base import DELIVERY_KEY_FIELD, Transport

log = logging.getLogger(__name__)

class MediaFinalizer(Protocol):
    async def finalize(self, content: dict[str, Any]) -> dict[str, Any] | None: ...

# A row that fails this many times for an unforeseen reason is parked as 'failed'.
PARK_AFTER_FAILURES = 5

# Less than Synapse's 30 minutes, to leave room for clock drift and slow requests.
TXN_MEMORY_SECONDS = 25 * 60


def event_content(message: Message, *, msgtype: str, key: str) -> dict[str, object]:
    return {
        "msgtype": msgtype,
        "body": message.body,
        "format": "org.matrix.custom.html",
        "formatted_body": message.html,
        "m.mentions": {},   # a feed item never pings anyone
        DELIVERY_KEY_FIELD: key,
    }


def edit_content(new: dict[str, object], *, original_event_id: str,
                 key: str) -> dict[str, object]:
    """An m.replace edit showing ``new`` (an event_content) in place of the original."""
    replacement = {k: v for k, v in new.items()
                   if k in ("msgtype", "body", "format", "formatted_body")}
    replacement["m.mentions"] = {}
    # What clients without edit support show: "* " and the title only, so that the edit
    # (which carries the whole new version in m.new_content) stays within the size limit.
    title = str(new["body"]).split("\n", 1)[0]
    content: dict[str, object] = {
        "msgtype": new["msgtype"],
        "body": f"* {title}",
        "format": "org.matrix.custom.html",
        "formatted_body": f"* {html.escape(title, quote=False)}",
        "m.new_content": replacement,
        "m.relates_to": {"rel_type": "m.replace", "event_id": original_event_id},
        "m.mentions": {},
        DELIVERY_KEY_FIELD: key,
    }
    if IMAGE_FIELD in new:
        content[IMAGE_FIELD] = new[IMAGE_FIELD]     # the image placeholder, resolved when sent
    return content


def txn_id_for(key: str) -> str:
    return f"newsbot.{key}"


class Deliverer:
    def __init__(self, store: Store, transport: Transport, clock: Clock, *,
                 retry_base: float = 1.0, retry_cap: float = 300.0,
                 unavailable_retry: float = 300.0,
                 on_delivered: Callable[[Delivery, str, str], Awaitable[None]] | None = None,
                 media: MediaFinalizer | None = None) -> None:
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
        self._wakeups: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()
        # Login generation of each attempt made by this process: after a re-login the
        # homeserver may no longer recognise our earlier transaction ids.
        self._attempt_generation: dict[str, int] = {}
        self.delivered = 0
        self.parked = 0

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

    async def run_room(self, room: str, keep: Callable[[], bool] | None = None) -> None:
        """``keep`` False (a conversation the bot no longer has) ends the worker once the
        room has nothing to send or cannot be reached; new deliveries start another."""
        room_id: str | None = None
        failures = 0
        unavailable_logged = False
        wakeup = self._wakeup(room)

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
                delivery = self._store.next_pending(room)
                if delivery is None:
                    if lost():
                        return
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
                if room_id is None and lost():      # cannot even join a room it lost
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
                parked = self._store.record_failure_of(
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

    async def _finalize(self, delivery: Delivery) -> dict[str, object] | None:
        """Resolve the entry's image once, and store the content that will be sent, so a
        resend after a crash sends the very same event. None: nothing to send now (no
        image to show, or a correction replaced the row meanwhile: it is read again)."""
        content = dict(delivery.content)
        final = await self._media.finalize(content) if self._media is not None else {
            k: v for k, v in content.items() if k != IMAGE_FIELD}
        if final is None or (self._media is None and content.get("msgtype") == "m.image"):
            self._store.mark_rejected(delivery.key, "no image to show", self._clock.now())
            log.info("room %s: the image of item %s of feed %s cannot be shown; skipped",
                     delivery.room, delivery.subject, delivery.feed)
            return None
        if not self._store.update_pending_content(delivery.key, final,
                                                  expected=delivery.content):
            return None
        return final

    def _as_edit(self, delivery: Delivery) -> dict[str, object] | None:
        """An edit row carries the corrected version; it is sent as an m.replace of the
        message it corrects, found now: the room's rows go out in order, so that message
        was sent (or refused) before this row is reached."""
        if "m.new_content" in delivery.content:
            return delivery.content     # queued whole by an older newsbot: already an edit
        target = self._store.event_of(delivery.feed, delivery.subject or "", delivery.room)
        if target is None:
            self._store.mark_rejected(delivery.key, "the message it corrects was never "
                                      "delivered", self._clock.now())
            log.info("room %s: a correction of item %s of feed %s is dropped: the item was "
                     "not delivered there", delivery.room, delivery.subject, delivery.feed)
            return None
        return edit_content(delivery.content, original_event_id=target, key=delivery.key)

    def _txn_may_be_forgotten(self, delivery: Delivery, now: float) -> bool:
        if delivery.first_attempt_at is None:
            return False           # never tried: nothing to find
        if now - delivery.first_attempt_at > TXN_MEMORY_SECONDS:
            return True
        # Attempts by an earlier process ran under login generation 0.
        return self._attempt_generation.get(delivery.key, 0) != self._transport.login_generation

    async def _deliver(self, room_id: str, delivery: Delivery) -> None:
        if IMAGE_FIELD in delivery.content and delivery.first_attempt_at is None:
            final = await self._finalize(delivery)
            if final is None:
                return
            delivery = replace(delivery, content=final)
        content: dict[str, object] = delivery.content
        if delivery.kind == "edit":
            edit = self._as_edit(delivery)
            if edit is None:
                return
            content = edit
        now = self._clock.now()
        if self._txn_may_be_forgotten(delivery, now):
            # The homeserver may not recognise our transaction id any more: a resend could
            # duplicate. Look for the event first.
            found = await self._transport.find_delivery(room_id, delivery.key)
            if found is not None:
                self._store.mark_sent(delivery.key, found, now)
                log.info("room %s: item %s of feed %s was already delivered (%s)",
                         delivery.room, delivery.entry_id, delivery.feed, found)
                return
        if not self._store.mark_attempt(delivery.key, now, delivery.content):
            return      # a correction replaced it while its image was resolved: read again
        self._attempt_generation[delivery.key] = self._transport.login_generation
        try:
            event_id = await self._transport.send_message(room_id, content,
                                                          txn_id_for(delivery.key))
        except MessageRejectedError as exc:
            # Retrying cannot help and would hold back every later item of the room.
            self._store.mark_rejected(delivery.key, str(exc), self._clock.now())
            log.error("room %s: item %s of feed %s was refused by the homeserver and is "
                      "skipped: %s", delivery.room, delivery.entry_id, delivery.feed, exc)
            return
        self._attempt_generation.pop(delivery.key, None)
        self._store.mark_sent(delivery.key, event_id, self._clock.now())
        self.delivered += 1
        log.info("room %s: posted item %s of feed %s (%s)", delivery.room, delivery.entry_id,
                 delivery.feed, event_id)
        if self._on_delivered is not None:
            try:
                await self._on_delivered(delivery, room_id, event_id)
            except Exception:
                log.warning("room %s: after posting %s:", delivery.room, event_id,
                            exc_info=True)
