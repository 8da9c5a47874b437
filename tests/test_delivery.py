"""The delivery worker's decisions, with a scripted transport (unit-level edge cases; the
real homeserver paths are in test_e2e, test_faults and test_crash)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import nio
import pytest

from bot.clock import SystemClock
from bot.delivery import ANSWER_EXPIRY, CLAIM_SECONDS, Deliverer
from bot.errors import (
    MessageRejectedError,
    RateLimitedError,
    RoomUnavailableError,
    TemporaryTransportError,
    TransportError,
)
from bot.media import ImageSource
from bot.model import Image, Message, Outgoing, Sent, Target, delivery_key
from bot.store import NewDelivery, PollOutcome, Store
from bot.transport.base import EventHandlers
from bot.transport.matrix.errors import error_for
from bot.transport.matrix.events import MatrixMessages
from tests.support.clock import OffsetClock
from tests.support.postgres import StoreOpener, row_of


class ScriptedTransport:
    """Sends succeed unless ``fail_send`` says otherwise; joins likewise."""

    def __init__(self, *, shared: bool = False) -> None:
        self.login_generation = 0
        self.sent: list[str] = []
        self.joins = 0
        self.searches: list[str] = []
        self.fail_send: Callable[[dict[str, object]], Exception | None] = lambda _: None
        self.fail_join: Exception | None = None
        self.join_delay = 0.0
        self.before_send: Callable[[], None] = lambda: None
        self.fenced = 0             # sends the fence stopped
        # Encoding and idempotency as the Matrix transport has them.
        self._messages = MatrixMessages(self, shared=shared)

    async def prepare(self, outgoing: Outgoing, images: ImageSource | None,
                      ) -> dict[str, Any] | None:
        return await self._messages.prepare(outgoing, images)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        return await self._messages.send(room_id, payload, key, attempted_at=attempted_at,
                                         now=now, fence=fence)

    async def connect(self) -> None:
        pass

    async def resolve_room(self, room: str) -> str:
        return room

    async def join_room(self, room: str) -> str:
        self.joins += 1
        await asyncio.sleep(self.join_delay)
        if self.fail_join is not None:
            raise self.fail_join
        return room

    async def send_message(self, room_id: str, content: dict[str, Any], txn_id: str,
                           fence: Callable[[], bool] | None = None) -> str:
        self.before_send()
        if fence is not None and not fence():      # as Messages.send_message asks it
            self.fenced += 1
            raise TemporaryTransportError("claim lapsed")
        error = self.fail_send(content)
        if error is not None:
            raise error
        self.sent.append(str(content["body"]))
        return f"$event{len(self.sent)}"

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        return "mxc://test/media"

    async def find_delivery(self, room_id: str, key: str, *, max_events: int = 500) -> str | None:
        self.searches.append(key)
        return None

    async def run_sync(self, handlers: EventHandlers) -> None:
        await asyncio.Event().wait()

    async def power_level(self, room_id: str, user_id: str) -> float:
        return 0.0

    async def joined_members(self, room_id: str) -> list[str]:
        return []

    async def create_direct_room(self, user_id: str) -> str:
        return "!dm:test"

    def is_direct(self, room_id: str) -> bool:
        return False

    async def leave_direct(self, room_id: str) -> None:
        pass

    async def close(self) -> None:
        pass

    # Rooms the bot manages (bot.rooms): not used by delivery.
    async def create_room(self, *, alias_localpart: str, name: str | None,
                          topic: str | None, preset: str, initial_state: list[dict[str, Any]],
                          power_levels: dict[str, Any]) -> str:
        return f"!{alias_localpart}"

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return []

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        return None

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        return "$state"

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return {}

    async def directory_published(self, room_id: str) -> bool:
        return False

    async def set_directory_published(self, room_id: str, published: bool) -> None:
        pass


async def enqueue(store: Store, bodies: list[str], room: str = "!r:x") -> None:
    await store.ensure_feed("news", "http://x/feed")
    await store.record_poll(PollOutcome(
        feed="news", now=1.0, next_fetch=2.0, etag=None, last_modified=None, body_hash=None,
        title=None, new_url=None, seen_entry_ids=bodies,
        deliveries=[NewDelivery(b, room, Message(b, b)) for b in bodies]))


async def run_until(deliverer: Deliverer, room: str, done: Callable[[], bool],
                    timeout: float = 5.0) -> None:
    worker = asyncio.create_task(deliverer.run_room(room))
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        deliverer.stop()
        await asyncio.wait_for(worker, 5)


@pytest.fixture
async def store(open_store: StoreOpener) -> Store:
    # On SQLite and on PostgreSQL.
    return await open_store()


async def test_a_refused_message_is_skipped_and_the_next_goes_out(store: Store) -> None:
    await enqueue(store, ["huge", "next"])
    transport = ScriptedTransport()
    transport.fail_send = lambda c: MessageRejectedError("M_TOO_LARGE") \
        if c["body"] == "huge" else None
    deliverer = Deliverer(store, transport, SystemClock())
    await run_until(deliverer, "!r:x", lambda: transport.sent == ["next"])
    assert await store.pending_count() == 0
    row = await row_of(store, "SELECT state, error FROM outbox WHERE entry_id = 'huge'")
    assert row == ("rejected", "M_TOO_LARGE")


async def test_rate_limit_and_temporary_errors_keep_the_order(store: Store) -> None:
    await enqueue(store, ["a", "b", "c"])
    transport = ScriptedTransport()
    failures = iter([RateLimitedError("slow down", retry_after=0.05),
                     TemporaryTransportError("502"), None, None, None])
    transport.fail_send = lambda _: next(failures)
    deliverer = Deliverer(store, transport, SystemClock(), retry_base=0.05)
    await run_until(deliverer, "!r:x", lambda: len(transport.sent) == 3)
    assert transport.sent == ["a", "b", "c"]


async def test_an_unavailable_room_does_not_spin_when_woken(store: Store) -> None:
    """A stale wake-up must not turn the unavailable-room wait into a busy loop."""
    await enqueue(store, ["a"])
    transport = ScriptedTransport()
    transport.fail_join = RoomUnavailableError("kicked")
    deliverer = Deliverer(store, transport, SystemClock(), unavailable_retry=60)
    worker = asyncio.create_task(deliverer.run_room("!r:x"))
    deliverer.wake(["!r:x"])
    await asyncio.sleep(0.5)
    deliverer.stop()
    await asyncio.wait_for(worker, 5)
    assert transport.joins <= 2
    assert await store.pending_count() == 1


async def test_after_a_relogin_an_unacknowledged_send_is_looked_for_first(
        store: Store) -> None:
    await enqueue(store, ["a"])
    transport = ScriptedTransport()
    answers = iter([TemporaryTransportError("answer lost"), None])
    transport.fail_send = lambda _: next(answers)
    deliverer = Deliverer(store, transport, SystemClock(), retry_base=0.2)
    worker = asyncio.create_task(deliverer.run_room("!r:x"))
    await asyncio.sleep(0.1)           # first attempt made, answer lost
    transport.login_generation = 1     # the token was replaced meanwhile
    async with asyncio.timeout(5):
        while transport.sent != ["a"]:
            await asyncio.sleep(0.01)
    deliverer.stop()
    await asyncio.wait_for(worker, 5)
    assert len(transport.searches) == 1


async def test_stop_during_a_slow_join_returns_promptly(store: Store) -> None:
    await enqueue(store, ["a"])
    transport = ScriptedTransport()
    transport.join_delay = 0.3
    deliverer = Deliverer(store, transport, SystemClock())
    worker = asyncio.create_task(deliverer.run_room("!r:x"))
    await asyncio.sleep(0.1)
    deliverer.stop()
    await asyncio.wait_for(worker, 1)  # not the 10 s drain deadline
    assert transport.sent == []


class _Status:
    def __init__(self, status: int) -> None:
        self.status = status


def error(status: int, errcode: str | None, message: str = "x") -> nio.ErrorResponse:
    resp = nio.ErrorResponse(message, errcode)
    resp.transport_response = _Status(status)  # type: ignore[assignment]
    return resp


@pytest.mark.parametrize(("status", "errcode", "expected"), [
    (404, None, TemporaryTransportError),           # a proxy's page while Synapse restarts
    (401, None, TemporaryTransportError),
    (502, None, TemporaryTransportError),
    (429, "M_LIMIT_EXCEEDED", RateLimitedError),
    (403, "M_FORBIDDEN", RoomUnavailableError),
    (404, "M_NOT_FOUND", RoomUnavailableError),
    (413, "M_TOO_LARGE", MessageRejectedError),
    (400, "M_BAD_JSON", MessageRejectedError),
    (500, "M_UNKNOWN", TemporaryTransportError),
])
def test_matrix_errors_map_to_what_the_bot_should_do(
        status: int, errcode: str | None, expected: type[TransportError]) -> None:
    assert type(error_for("sending", error(status, errcode))) is expected


async def test_an_image_the_homeserver_refuses_does_not_stop_the_item(store: Store) -> None:
    """M_TOO_LARGE from the media repository: the item goes out without its picture."""
    import struct
    import zlib
    from types import SimpleNamespace

    from bot.media import MediaResolver

    def png(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(
                ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                  8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * height))
                + chunk(b"IEND", b""))

    class Fetcher:
        async def fetch(self, url: str) -> SimpleNamespace:
            return SimpleNamespace(body=png(100, 100))

    class Refusing(ScriptedTransport):
        async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
            raise MessageRejectedError("M_TOO_LARGE")

    await store.ensure_feed("news", "http://x/feed")
    content = Message("a", "<p>a</p>", image=Image("http://x/a.png", "inline", "a"))
    await store.record_poll(PollOutcome(
        feed="news", now=1.0, next_fetch=2.0, etag=None, last_modified=None, body_hash=None,
        title=None, new_url=None, seen_entry_ids=["a"],
        deliveries=[NewDelivery("a", "!r:x", content)]))
    transport = Refusing()
    media = MediaResolver(Fetcher(), transport, store, SystemClock())  # type: ignore[arg-type]
    deliverer = Deliverer(store, transport, SystemClock(), media=media)
    await run_until(deliverer, "!r:x", lambda: transport.sent == ["a"])
    row = await row_of(store, "SELECT payload FROM outbox WHERE entry_id = 'a'")
    assert row is not None
    assert "<img" not in row[0] and "http://x/a.png" not in row[0]


async def reply(store: Store, room: str, command: str, now: float) -> None:
    await store.enqueue("newsbot:replies", [NewDelivery(
        f"reply:{command}", room, Message("Fait.", "Fait.", mentions=("@alice:x",)),
        kind="reply", subject=command)], now)


async def test_a_reply_in_a_room_without_feeds_survives_a_failed_join(store: Store) -> None:
    """A command's room keeps no worker of its own: a temporary error while joining it
    must not end the worker while the answer waits (it would wait until the next one)."""
    await reply(store, "!admin:x", "$cmd1", time.time())
    transport = ScriptedTransport()
    joins = iter([TemporaryTransportError("502"), None])

    async def join(room: str) -> str:
        error = next(joins, None)
        if error is not None:
            raise error
        return room
    transport.join_room = join  # type: ignore[method-assign]
    deliverer = Deliverer(store, transport, SystemClock(), retry_base=0.05)
    worker = asyncio.create_task(deliverer.run_room("!admin:x", keep=lambda: False))
    async with asyncio.timeout(5):
        while transport.sent != ["Fait."]:
            assert not worker.done(), "the worker ended with the answer still waiting"
            await asyncio.sleep(0.01)
        await worker          # nothing left, a room it does not keep: it ends by itself
    # Sent: only the fact that it was is kept, not its words nor whom it named.
    row = await row_of(store, "SELECT state, message, payload FROM outbox")
    assert row == ("sent", None, None)


async def test_an_answer_too_late_to_be_useful_is_dropped_with_its_words(
        store: Store) -> None:
    await reply(store, "!r:x", "$old", time.time() - ANSWER_EXPIRY - 60)
    await enqueue(store, ["item"])
    transport = ScriptedTransport()
    deliverer = Deliverer(store, transport, SystemClock())
    await run_until(deliverer, "!r:x", lambda: transport.sent == ["item"])
    row = await row_of(store, "SELECT state, error, message FROM outbox WHERE kind = 'reply'")
    assert row == ("rejected", "too late to be useful", None)


async def test_a_row_claimed_by_another_instance_waits_for_its_claim_to_lapse(
        store: Store) -> None:
    await enqueue(store, ["a"])
    clock = OffsetClock()
    claimed = await store.claim_next(Target("matrix", "!r:x"), owner="other",
                                     now=clock.now(), lease=CLAIM_SECONDS)
    assert claimed is not None
    transport = ScriptedTransport()
    deliverer = Deliverer(store, transport, clock, claim_wait=0.05)
    worker = asyncio.create_task(deliverer.run_room("!r:x"))
    try:
        await asyncio.sleep(0.3)
        assert transport.sent == []            # another instance holds it
        clock.offset = CLAIM_SECONDS + 1       # that instance died: its claim lapsed
        async with asyncio.timeout(5):
            while transport.sent != ["a"]:
                await asyncio.sleep(0.01)
    finally:
        deliverer.stop()
        await asyncio.wait_for(worker, 5)


async def test_several_instances_a_send_after_its_claim_lapsed_is_not_made_and_is_looked_for(
        store: Store) -> None:
    """Shared store: the claim's deadline is asked last before the message leaves (a process
    frozen past it sends nothing), and a row tried before is looked for in the room before
    it is sent again, even when this very process tried it (another instance may have sent
    it meanwhile, from its own device)."""
    await enqueue(store, ["a"])
    transport = ScriptedTransport(shared=True)
    clock = OffsetClock()
    jumps = iter([True])

    def frozen_once() -> None:
        if next(jumps, False):
            clock.offset += 100.0       # as if frozen past its 30 s claim, once

    transport.before_send = frozen_once
    deliverer = Deliverer(store, transport, clock, retry_base=0.2, owner="one",
                          shared_lease=30.0)
    worker = asyncio.create_task(deliverer.run_room("!r:x"))
    async with asyncio.timeout(10):
        while transport.sent != ["a"]:
            await asyncio.sleep(0.01)
    deliverer.stop()
    await asyncio.wait_for(worker, 5)
    assert transport.fenced == 1
    assert transport.searches == [delivery_key("news", "a", "!r:x")]
