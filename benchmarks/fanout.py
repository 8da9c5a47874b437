"""One item to 100 rooms (line 3): the time until a member has it in every room, newsbot
against raw matrix-nio sends of the same events.

A member creates the rooms and invites the bot (Synapse's rate limits are the harness's
relaxed ones, tests/support/synapse.py, as an operator sets them for a bot). newsbot
runs in this process, and its first syncs (every room's state, once per start) are over
before the first round (its stored sync token is past the joins). The clock starts when its poll has
committed the item's 100 rows and wakes their delivery workers (``Deliverer.wake``,
watched from outside: no bot code is changed) and stops when the member's /sync has
brought the last of the 100. The limit: the bot's own account, through a bare
``nio.AsyncClient``, sends each event's content as the member received it to the same
rooms, all at once, timed the same way (the bot is stopped meanwhile, so nothing else
runs in the process but the member's sync). Each side runs ``rounds`` times, after one
round that is not counted: the first messages into 100 new rooms fill the homeserver's
caches of them (1.5-2 s more than the next rounds), and that round fell to whichever side
went first. The figure is the median.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

import aiohttp
import nio

from benchmarks.member_sync import MemberSync, Seen
from benchmarks.scene import Scene, bounded, joined_everywhere, polled_once, until
from bot.transport.matrix import SYNC_TOKEN_KEY
from tests.botkit import InProcessBot
from tests.support import MemberClient, RegisteredUser
from tests.support.synapse import matrix_request

PATH = "/fanout.xml"


def _position(token: str | None) -> int:
    """The room-event position of a Synapse sync token ("s653_1_0_...")."""
    head = (token or "").split("_", 1)[0]
    return int(head[1:]) if head[:1] == "s" and head[1:].isdigit() else -1


async def _caught_up(scene: Scene, member: RegisteredUser, store: Any) -> None:
    """Wait until the bot's sync has gone past where the homeserver is now (after the
    bot's joins): its first syncs (every room's state, once per start) are over."""
    async with aiohttp.ClientSession() as session:
        answer = await matrix_request(
            session, "GET", f"{scene.synapse.base_url}/_matrix/client/v3/sync",
            access_token=member.access_token,
            params={"timeout": "0", "filter": json.dumps({"room": {"rooms": []}})})
    now = _position(str(answer["next_batch"]))

    async def check() -> bool:
        return _position(await store.get(SYNC_TOKEN_KEY)) >= now

    await until(check, "the bot's first sync")


async def _raw_round(scene: Scene, bot: RegisteredUser, sync: MemberSync,
                     contents: dict[str, dict[str, Any]], tag: str) -> float:
    client = nio.AsyncClient(scene.synapse.base_url, bot.user_id, device_id=bot.device_id,
                             config=nio.AsyncClientConfig(encryption_enabled=False))
    client.access_token = bot.access_token
    try:
        await client.whoami()                  # one connection open, as the bot's is
        mark = sync.mark()
        started = time.monotonic()
        answers = await bounded(len(contents), (
            client.room_send(room, "m.room.message", {**content, "bench": tag})
            for room, content in contents.items()))
        for answer in answers:
            if not isinstance(answer, nio.RoomSendResponse):
                raise RuntimeError(f"raw nio send failed: {answer}")
        seen = await sync.wait(lambda s: s.event.get("content", {}).get("bench") == tag,
                               len(contents), after=mark)
        return max(s.at for s in seen) - started
    finally:
        await client.close()


async def measure(scene: Scene, rooms: int = 100, rounds: int = 3) -> dict[str, Any]:
    bot, alice = await scene.user("fanbot"), await scene.user("alice")
    await scene.feeds.acall("publish", PATH, "urn:bench:fanout:0", "Numéro zéro")
    async with MemberClient(scene.synapse.base_url, alice) as member, \
            MemberSync(scene.synapse.base_url, alice) as sync:
        started = time.monotonic()
        room_ids = await bounded(4, (member.create_room(invite=[bot.user_id])
                                     for _ in range(rooms)))
        scene.log(f"    {rooms} rooms created in {time.monotonic() - started:.1f} s")
        config = scene.config("fanout", bot, [{
            "name": "fanout", "url": scene.feeds.url(PATH), "rooms": room_ids,
            "interval": "2s"}], admins=[alice.user_id])
        running = InProcessBot(config)
        app = running.build()
        woken: list[float] = []
        wake = app.deliverer.wake

        def timed_wake(woken_rooms: list[str]) -> None:
            if len(woken_rooms) >= rooms:
                woken.append(time.monotonic())
            wake(woken_rooms)

        # The moment the poll's rows are committed and their workers woken: from outside.
        setattr(app.deliverer, "wake", timed_wake)  # noqa: B010 (a method replaced)
        contents: list[dict[str, dict[str, Any]]] = []
        newsbot: list[float] = []
        await running.start()
        try:
            await joined_everywhere(member, room_ids, bot.user_id)
            await polled_once(app.store, ["fanout"])
            # The bot's first sync (every room's state, once per start) is over: what is
            # timed is a fan-out, not a start-up that happens to overlap it.
            await _caught_up(scene, alice, app.store)
            for n in range(1, rounds + 2):      # round 1: the homeserver warms up
                title = f"Numéro {n} {uuid.uuid4().hex[:6]}"
                mark, before = sync.mark(), len(woken)
                await scene.feeds.acall("publish", PATH, f"urn:bench:fanout:{n}", title)

                def ours(s: Seen, title: str = title) -> bool:
                    return s.sender == bot.user_id and title in s.body

                seen = await sync.wait(ours, rooms, after=mark)
                newsbot.append(max(s.at for s in seen) - woken[before])
                contents.append({s.room_id: s.event["content"] for s in seen})
                scene.log(f"    newsbot round {n}: {newsbot[-1]:.2f} s")
        finally:
            await running.stop()
        raw = []
        for n, round_contents in enumerate(contents, 1):
            raw.append(await _raw_round(scene, bot, sync, round_contents, f"raw-{n}"))
            scene.log(f"    raw nio round {n}: {raw[-1]:.2f} s")
    return {"rooms": rooms, "newsbot_s": newsbot[1:], "raw_nio_s": raw[1:],
            "warm_up_s": {"newsbot": newsbot[0], "raw_nio": raw[0]},
            "newsbot_median_s": statistics.median(newsbot[1:]),
            "raw_nio_median_s": statistics.median(raw[1:])}
