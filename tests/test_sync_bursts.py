"""The sync keeps out of the way of a burst of the bot's own sends (an item fanned out to
many rooms): its long poll, which each of those events would wake, is called off before
its answer comes and asked again, with the same token, once the burst is over. Nothing
is lost by that: what arrived meanwhile comes with the next answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from bot.store import SqliteStore
from bot.transport.base import EventHandlers, IncomingMessage
from bot.transport.matrix import SYNC_TOKEN_KEY, MatrixTransport
from bot.transport.matrix.messaging import SendActivity
from tests.botkit import bot_config, load, write_config
from tests.support import MemberFactory, NewUserFactory, SynapseServer


async def _refuse(_room: str, _inviter: str, _direct: bool) -> bool:
    return False


async def _until(check: object, what: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.1)


async def test_a_burst_of_sends_gets_no_sync_answer_until_it_is_over_and_loses_nothing(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(invite=[bot.user_id]) for _ in range(4)]
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": rooms}])), bot)
    store = SqliteStore.open(tmp_path / "state")
    transport = MatrixTransport(cfg.matrix, store, tmp_path / "state")
    received: list[IncomingMessage] = []
    sync: asyncio.Task[None] | None = None
    try:
        await transport.connect()
        for room in rooms:
            await transport.join_room(room)
        sync = asyncio.create_task(transport.run_sync(EventHandlers(
            on_invite=_refuse, on_message=received.append)))

        async def synced_past_joins() -> bool:
            # An answer after the joins, and its next long poll under way.
            return await store.get(SYNC_TOKEN_KEY) is not None and \
                transport._sync._awaiting_answer
        await _until(synced_past_joins, "the bot's sync")
        await asyncio.sleep(1.0)        # whatever the joins still woke is answered
        await _until(synced_past_joins, "the bot's long poll")
        before = await store.get(SYNC_TOKEN_KEY)
        # Waves of four sends at once, one room each, for a second or more: without the
        # hold, the first wave's events wake the long poll and its answer is stored.
        for wave in range(8):
            await asyncio.gather(*(transport.send_message(
                room, {"msgtype": "m.notice", "body": f"item {wave}"}, f"t-{wave}-{n}")
                for n, room in enumerate(rooms)))
            if wave == 0:
                # Something that must not be lost: it arrives while the sync is held.
                await alice.send_text(rooms[0], "hello bot")
            await asyncio.sleep(0.15)
        assert await store.get(SYNC_TOKEN_KEY) == before

        async def heard() -> bool:
            return any(m.body == "hello bot" for m in received)
        await _until(heard, "the member's message, after the burst")
        assert await store.get(SYNC_TOKEN_KEY) != before
        assert [m.body for m in received] == ["hello bot"]
    finally:
        if sync is not None:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
        await transport.close()
        store.close()


async def test_a_send_or_two_is_no_burst_and_a_burst_holds_the_sync_no_longer_than_asked(
        ) -> None:
    activity = SendActivity(burst=3, linger=0.2)
    with activity.sending(), activity.sending():
        # A command's answer (or two): the sync goes on as usual.
        await asyncio.wait_for(activity.settled(time.monotonic() + 60), 5)
        assert not activity.began.is_set()
    with activity.sending(), activity.sending(), activity.sending():
        assert activity.began.is_set()
        held = asyncio.ensure_future(activity.settled(time.monotonic() + 60))
        await asyncio.sleep(0.3)
        assert not held.done()          # sends in flight: held
        # ... but never past its deadline.
        await asyncio.wait_for(activity.settled(time.monotonic() + 0.1), 5)
    await asyncio.wait_for(held, 5)     # the burst over (and its linger): released
    await asyncio.wait_for(activity.settled(time.monotonic() + 60), 5)
