"""What members wait for: a command's answer while a big feed is polled (line 4), and an
item from its publication (line 5). newsbot runs in this process; the feed server in
its own (benchmarks/feedproc.py); times are the member's /sync arrivals
(benchmarks/member_sync.py) on this process's monotonic clock.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks.member_sync import MemberSync, Seen
from benchmarks.scene import Scene, joined_everywhere, polled_once, until
from tests.botkit import InProcessBot
from tests.support import MemberClient, free_port

BIG = "/lettre.xml"
COMMAND = "!news list"


async def _reply_time(member: MemberClient, sync: MemberSync, room: str, bot: str) -> float:
    mark = sync.mark()
    started = time.monotonic()
    await member.send_text(room, COMMAND)
    seen = await sync.wait(lambda s: s.room_id == room and s.sender == bot, 1, after=mark,
                           timeout=60)
    return seen[0].at - started


async def command_replies(scene: Scene, commands: int = 10) -> dict[str, Any]:
    """Line 4. The feed: 400 entries of 5 KB (about 2.2 MB), every entry changed at each
    request, polled every second, so a poll (download, parse, decide, plan, commit)
    is always under way or about to start. "Idle": the same bot while that feed answers
    304 (one conditional request a second, nothing parsed). Commands are sent one at a
    time at random moments; the figure is the slowest answer of each phase."""
    bot, alice = await scene.user("replybot"), await scene.user("alice")
    size = await scene.feeds.acall("changing", BIG, 400, 5000)
    async with MemberClient(scene.synapse.base_url, alice) as member, \
            MemberSync(scene.synapse.base_url, alice) as sync:
        room = await member.create_room(invite=[bot.user_id])
        config = scene.config("reply", bot, [{
            "name": "lettre", "url": scene.feeds.url(BIG), "rooms": [room], "interval": "1s"}],
            admins=[alice.user_id], commands={"rate_limit": 1000})
        rng = random.Random(13)
        async with InProcessBot(config) as running:
            await joined_everywhere(member, [room], bot.user_id)
            await polled_once(running.app.store, ["lettre"])
            phases: dict[str, list[float]] = {}
            polls: dict[str, int] = {}
            for phase in ("idle", "busy"):
                served = await scene.feeds.acall("set_idle", phase == "idle")
                if phase == "busy":
                    # A first heavy poll has begun before the first command.
                    async def begun(served: int = served) -> bool:
                        return bool(await scene.feeds.acall("set_idle", False) != served)

                    await until(begun, "a poll of the changing feed")
                times = []
                for _ in range(commands):
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    times.append(await _reply_time(member, sync, room, bot.user_id))
                phases[phase] = times
                polls[phase] = await scene.feeds.acall("set_idle", phase == "idle") - served
                scene.log(f"    {phase}: answers in {min(times):.2f}–{max(times):.2f} s "
                          f"(median {statistics.median(times):.2f}); "
                          f"{polls[phase]} full download(s) meanwhile")
            await scene.feeds.acall("set_idle", True)
    return {"feed_bytes": size, "commands": commands, "command": COMMAND,
            "idle_s": phases["idle"], "busy_s": phases["busy"],
            "busy_full_polls": polls["busy"],
            "idle_max_s": max(phases["idle"]), "busy_max_s": max(phases["busy"]),
            "idle_median_s": statistics.median(phases["idle"]),
            "busy_median_s": statistics.median(phases["busy"])}


def push_available() -> bool:
    """Whether this checkout has the push endpoint (``POST /feeds/{name}/poll``, turned
    on by ``http.listen`` and ``http.push_token``)."""
    if importlib.util.find_spec("bot.http") is None:
        return False
    import bot.config
    declared = getattr(bot.config, "HttpConfig", None)
    return "push_token" in getattr(declared, "__dataclass_fields__", {})


async def _one_item(scene: Scene, sync: MemberSync, bot: str, names: list[str], label: str,
                    interval: float, rng: random.Random,
                    push: Callable[[str], Awaitable[None]] | None) -> list[float]:
    """Each feed of ``names`` gets one new item at a random moment of a poll's cycle
    (then, with ``push``, a push); the time from the feed server having it to the member's
    /sync bringing it, for each."""
    mark = sync.mark()
    published: dict[str, float] = {}

    async def publish(name: str) -> None:
        await asyncio.sleep(rng.uniform(0, interval))
        title = f"{label} {name} {uuid.uuid4().hex[:6]}"
        await scene.feeds.acall("publish", f"/{name}.xml", f"urn:bench:{name}:{label}", title)
        published[title] = time.monotonic()
        if push is not None:
            await push(name)

    await asyncio.gather(*(publish(name) for name in names))

    def ours(s: Seen) -> bool:
        return s.sender == bot and any(t in s.body for t in published)

    seen = await sync.wait(ours, len(names), after=mark, timeout=interval * 6)
    return sorted(s.at - next(at for t, at in published.items() if t in s.body) for s in seen)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def publish_to_member(scene: Scene, feeds: int = 20,
                            interval: float = 10.0) -> dict[str, Any]:
    """Line 5. ``feeds`` feeds polled every ``interval`` s into one room; each gets one
    new item at a random moment of a poll's cycle. Then, when newsbot has push, each gets
    another, followed at once by ``POST /feeds/{name}/poll`` (the polling goes on
    meanwhile, as in production). The figure is the time from the feed server having the
    item to the member's /sync bringing it."""
    bot, alice = await scene.user("delaybot"), await scene.user("alice")
    names = [f"news-{n}" for n in range(feeds)]
    for name in names:
        await scene.feeds.acall("publish", f"/{name}.xml", f"urn:bench:{name}:0", "Ancien")
    token = secrets.token_hex(16)
    port = free_port()
    extra: dict[str, Any] = {}
    if push_available():
        extra["http"] = {"listen": f"127.0.0.1:{port}", "push_token": token}
    result: dict[str, Any] = {"feeds": feeds, "interval_s": interval}
    async with MemberClient(scene.synapse.base_url, alice) as member, \
            MemberSync(scene.synapse.base_url, alice) as sync:
        room = await member.create_room(invite=[bot.user_id])
        config = scene.config("delay", bot, [
            {"name": name, "url": scene.feeds.url(f"/{name}.xml"), "rooms": [room],
             "interval": f"{interval:g}s"} for name in names],
            admins=[alice.user_id], **extra)
        rng = random.Random(5)
        async with InProcessBot(config) as running, aiohttp.ClientSession() as http:
            await joined_everywhere(member, [room], bot.user_id)
            await polled_once(running.app.store, names)
            delays = await _one_item(scene, sync, bot.user_id, names, "Nouveau", interval,
                                     rng, None)
            result.update(delays_s=delays, p50_s=statistics.median(delays), max_s=max(delays))
            scene.log(f"    polling: {feeds} items, p50 {statistics.median(delays):.2f} s, "
                      f"max {max(delays):.2f} s")
            if not extra:
                result["push"] = "not available yet"
                return result

            async def push(name: str) -> None:
                async with http.post(f"http://127.0.0.1:{port}/feeds/{name}/poll",
                                     headers={"Authorization": f"Bearer {token}"}) as answer:
                    if answer.status != 202:
                        raise RuntimeError(f"push of {name}: HTTP {answer.status}")

            try:
                pushed = await _one_item(scene, sync, bot.user_id, names, "Poussé", interval,
                                         rng, push)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                result["push"] = f"failed ({type(exc).__name__}: {exc})"[:200]
                return result
    result.update(push_delays_s=pushed, push_p50_s=statistics.median(pushed),
                  push_p99_s=_p99(pushed), push_max_s=max(pushed),
                  push=f"p99 {_p99(pushed):.2f} s")
    scene.log(f"    push: {feeds} items, p50 {statistics.median(pushed):.2f} s, "
              f"p99 {_p99(pushed):.2f} s")
    return result
