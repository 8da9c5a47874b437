"""Several instances (``./dev bench --only instances``, not in the default run): the
throughput of one, two and three newsbot processes on one PostgreSQL database, with one
on SQLite as the reference, on the same feed and the same rooms.

Each setup is one bot account (a Matrix device per instance, as tests/test_instances.py
runs them: real ``python -m bot run`` processes, each its own ``storage.path``, the same
``storage.url``, the default ``storage.lease``) and one feed posting to ``rooms`` rooms.
Once every instance is up and a first item is in every room, ``items`` entries are
published at once; the clock runs from the first publish until a member's own /sync has
brought the last of the ``items × rooms`` messages. Then every room is read back and each
item must be there exactly once: a throughput that duplicated would be worth nothing.
The homeserver's own pace for the same work closes the run: the bot's account sends as
many messages through a bare matrix-nio client, one at a time per room (a room's rows go
out in order) and every room at once.

Where the time goes is measured over the same window from /proc: CPU seconds of Synapse
(one process, its own SQLite), of each bot process, of the PostgreSQL cluster (the
postmaster and its backends), of the feed server and of this process (the member's
sync), and of the whole machine (/proc/stat: what others ran too). Each instance's
resident memory is read at the end. PostgreSQL is a throwaway cluster on loopback
(tests/support/postgres.py); the same Synapse serves every setup, in turn.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nio

from benchmarks.member_sync import MemberSync, Seen
from benchmarks.memory import compile_bytecode, cpu_seconds, rss_mib, settled
from benchmarks.scene import Scene, bounded
from tests.botkit import BotProcess, bot_config, write_config
from tests.support import MemberClient, RegisteredUser
from tests.support.postgres import PostgresServer, postgres_available

FULL_SIZE = (40, 10)            # items published at once, rooms the feed posts to
QUICK_SIZE = (10, 5)
SETUPS: tuple[tuple[str, int], ...] = (
    ("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3))
_TICK = os.sysconf("SC_CLK_TCK")


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (PostgreSQL's backends)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            after_name = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:         # gone meanwhile
            continue
        if int(after_name[1]) == parent:
            found.append(int(entry.name))
    return found


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:         # a backend that ended: its time is lost to both ends
            pass
    return total


def _waited(pids: Sequence[int]) -> float:
    """Seconds the threads of these processes spent runnable but waiting for a CPU
    (/proc/PID/task/TID/schedstat's second field): time they would have run on a machine
    with a core free."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]        # idle, iowait
    total = sum(fields[:8])             # guest time is already in user
    return (total - idle) / _TICK, total / _TICK


@dataclass
class Watch:
    """CPU seconds of each party, read at the start and the end of the timed window."""

    synapse: int
    bots: list[int]
    feeds: int
    postmaster: int | None
    start: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        busy, total = _machine()
        figures = {"synapse": _cpu([self.synapse]), "feeds": _cpu([self.feeds]),
                   "bench": _cpu([os.getpid()]), "machine_busy": busy, "machine_total": total}
        for n, pid in enumerate(self.bots):
            figures[f"bot{n}"] = _cpu([pid])
        figures["synapse_waiting"] = _waited([self.synapse])
        figures["bots_waiting"] = _waited(self.bots)
        if self.postmaster is not None:
            figures["postgresql"] = _cpu([self.postmaster, *_children(self.postmaster)])
        return figures

    def begin(self) -> None:
        self.start = self.read()

    def spent(self, wall: float) -> dict[str, Any]:
        """Each party's share of the window in cores (1.0: one core all the time)."""
        end = self.read()
        cores = {key: round((end[key] - self.start[key]) / wall, 2)
                 for key in end if key != "machine_total"}
        bots = [cores.pop(f"bot{n}") for n in range(len(self.bots))]
        ours = sum(bots) + sum(cores.get(k, 0.0)
                               for k in ("synapse", "postgresql", "feeds", "bench"))
        # What the rest of the machine ran meanwhile (other people's work on a shared box).
        others = round(max(cores["machine_busy"] - ours, 0.0), 2)
        # CPU per unit of work hardly depends on what else runs: the figure to compare
        # between setups run at different moments of a busy machine.
        seconds = {"synapse_s": end["synapse"] - self.start["synapse"],
                   "bots_s": sum(end[f"bot{n}"] - self.start[f"bot{n}"]
                                 for n in range(len(self.bots)))}
        return {**cores, "bots": bots, "bots_total": round(sum(bots), 2), "others": others,
                "machine_cores": os.cpu_count(), **seconds}


def _postmaster(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split("\n", 1)[0])


async def _setup(scene: Scene, pg: PostgresServer | None, bot: RegisteredUser,
                 member: MemberClient, sync: MemberSync, rooms: list[str], items: int,
                 store: str, count: int) -> dict[str, Any]:
    tag = f"{store[:2]}{count}-{uuid.uuid4().hex[:6]}"
    path = f"/instances/{tag}.xml"
    await scene.feeds.acall("publish", path, f"urn:bench:{tag}:w", f"Warm-up {tag}")
    feed = {"name": f"inst-{tag}", "url": scene.feeds.url(path), "rooms": rooms,
            "interval": "1s", "backfill": 1, "max_per_poll": items}
    database = await pg.new_database() if pg is not None else None
    processes: list[BotProcess] = []
    for n in range(count):
        # A device of its own per instance (its own keys, sync token and transaction ids).
        device = await scene.synapse.login(bot, f"BENCH{tag.upper()}{n}")
        home = scene.workdir / f"instances-{tag}-{n}"
        home.mkdir(parents=True)
        data = bot_config(homeserver=scene.synapse.base_url, bot=device,
                          storage=home / "state", feeds=[feed])
        if database is not None:
            data["storage"]["url"] = database
        processes.append(BotProcess(write_config(home / "config.yaml", data), device,
                                    home / "bot.log"))
    try:
        warm = sync.mark()
        for process in processes:
            await process.start()
        pids = []
        for process in processes:
            assert process.proc is not None
            pids.append(process.proc.pid)
        deadline = time.monotonic() + 120
        while not all("watching " in p.log() for p in processes):
            for p in processes:
                assert p.proc is not None
                if p.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"an instance did not start:\n{p.log()[-3000:]}")
            await asyncio.sleep(0.1)
        await sync.wait(lambda s: s.sender == bot.user_id and f"Warm-up {tag}" in s.body,
                        len(rooms), after=warm, timeout=180)
        # Every instance past its first sync and idle: what is timed is the burst.
        await asyncio.gather(*(settled(pid, timeout=30) for pid in pids))
        load = os.getloadavg()
        assert scene.synapse._process is not None
        watch = Watch(scene.synapse._process.pid, pids, scene.feeds.pid,
                      _postmaster(pg) if pg is not None else None)
        mark = sync.mark()
        watch.begin()
        began = time.monotonic()
        for n in range(1, items + 1):
            await scene.feeds.acall("publish", path, f"urn:bench:{tag}:{n}", f"Item {n} {tag}")

        def ours(s: Seen) -> bool:
            return s.sender == bot.user_id and s.body.startswith("Item ") and tag in s.body

        seen = await sync.wait(ours, items * len(rooms), after=mark, timeout=600)
        last = max(s.at for s in seen)
        wall = last - began
        spent = watch.spent(max(time.monotonic() - began, 1e-3))
        rss = [rss_mib(pid) for pid in pids]
        # Exactly once, read back from every room after a pause (a late duplicate shows).
        await asyncio.sleep(3)
        expected = [f"Item {n} {tag}" for n in range(1, items + 1)]
        in_order = True
        for room, events in zip(rooms, await bounded(4, (
                member.messages(room, sender=bot.user_id) for room in rooms)), strict=True):
            titles = [e["content"].get("body", "").splitlines()[0] for e in events]
            titles = [t for t in titles if t.startswith("Item ") and t.endswith(tag)]
            if sorted(titles) != sorted(expected):
                twice = sorted({t for t in titles if titles.count(t) > 1})
                raise AssertionError(f"{store} × {count}, room {room}: {len(titles)} messages "
                                     f"for {items} items (twice: {twice[:5]}; missing: "
                                     f"{sorted(set(expected) - set(titles))[:5]})")
            in_order = in_order and titles == expected
    finally:
        codes: list[int | str] = []
        for process in processes:
            if process.proc is not None and process.proc.returncode is None:
                try:
                    codes.append(await process.terminate(timeout=60))
                except TimeoutError:
                    await process.discard()
                    codes.append("killed")
    sent_by = [p.log().count(f"posted item urn:bench:{tag}:") -
               p.log().count(f"posted item urn:bench:{tag}:w ") for p in processes]
    messages = items * len(rooms)
    figures = {"store": store, "instances": count, "items": items, "rooms": len(rooms),
               "messages": messages, "seconds": round(wall, 2),
               "msgs_per_s": round(messages / wall, 1),
               "first_s": round(min(s.at for s in seen) - began, 2),
               "in_order": in_order, "sent_by": sent_by, "cores": spent,
               "rss_mib": [round(r, 1) for r, _ in rss], "peak_mib": [round(p, 1) for _, p in rss],
               "exit_codes": codes, "load_average": [round(v, 2) for v in load]}
    scene.log(f"    {store} × {count}: {messages} messages in {wall:.1f} s "
              f"({messages / wall:.1f}/s), sent by {sent_by}; cores: Synapse "
              f"{spent['synapse']:.2f} (waiting for a CPU {spent['synapse_waiting']:.2f}), "
              f"bots {spent['bots']} (waiting {spent['bots_waiting']:.2f}), PostgreSQL "
              f"{spent.get('postgresql', 0):.2f}, others {spent['others']:.2f}, machine "
              f"{spent['machine_busy']:.2f} of {spent['machine_cores']}; load {load[0]:.2f}")
    return figures


async def _raw(scene: Scene, bot: RegisteredUser, sync: MemberSync, rooms: list[str],
               items: int) -> dict[str, Any]:
    """The homeserver's own pace for the same work: the bot's account, through a bare
    matrix-nio client, sends ``items`` messages to every room, one at a time per room
    (as a room's worker does, in order) and all rooms at once."""
    tag = f"raw-{uuid.uuid4().hex[:6]}"
    client = nio.AsyncClient(scene.synapse.base_url, bot.user_id, device_id=bot.device_id,
                             config=nio.AsyncClientConfig(encryption_enabled=False))
    client.access_token = bot.access_token

    async def one_room(room: str) -> None:
        for n in range(1, items + 1):
            answer = await client.room_send(room, "m.room.message", {
                "msgtype": "m.notice", "body": f"Raw {n} {tag}"})
            if not isinstance(answer, nio.RoomSendResponse):
                raise RuntimeError(f"raw nio send failed: {answer}")

    try:
        await client.whoami()                  # one connection open, as the bot's is
        load = os.getloadavg()
        assert scene.synapse._process is not None
        watch = Watch(scene.synapse._process.pid, [], scene.feeds.pid, None)
        mark = sync.mark()
        watch.begin()
        began = time.monotonic()
        await asyncio.gather(*(one_room(room) for room in rooms))
        seen = await sync.wait(lambda s: s.body.startswith("Raw ") and tag in s.body,
                               items * len(rooms), after=mark, timeout=600)
        wall = max(s.at for s in seen) - began
        spent = watch.spent(max(time.monotonic() - began, 1e-3))
    finally:
        await client.close()
    messages = items * len(rooms)
    scene.log(f"    raw matrix-nio: {messages} messages in {wall:.1f} s "
              f"({messages / wall:.1f}/s); cores: Synapse {spent['synapse']:.2f} (waiting "
              f"for a CPU {spent['synapse_waiting']:.2f}), others {spent['others']:.2f}; "
              f"load {load[0]:.2f}")
    return {"store": "raw matrix-nio", "instances": 0, "items": items, "rooms": len(rooms),
            "messages": messages, "seconds": round(wall, 2),
            "msgs_per_s": round(messages / wall, 1), "sent_by": [messages], "cores": spent,
            "rss_mib": [], "load_average": [round(v, 2) for v in load]}


async def measure(scene: Scene, quick: bool = False) -> dict[str, Any]:
    """Every setup of SETUPS in turn on the same rooms: their figures, and each one's
    throughput against one instance on PostgreSQL."""
    if not postgres_available():
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    items, room_count = QUICK_SIZE if quick else FULL_SIZE
    await asyncio.to_thread(compile_bytecode)       # as an installed bot starts
    bot, alice = await scene.user("multibot"), await scene.user("alice")
    results: list[dict[str, Any]] = []
    async with PostgresServer() as pg, \
            MemberClient(scene.synapse.base_url, alice) as member, \
            MemberSync(scene.synapse.base_url, alice) as sync:
        scene.log(f"    PostgreSQL up in {pg.started_in:.1f} s")
        rooms = await bounded(4, (member.create_room(invite=[bot.user_id])
                                  for _ in range(room_count)))
        for store, count in SETUPS:
            results.append(await _setup(scene, pg if store == "postgresql" else None, bot,
                                        member, sync, rooms, items, store, count))
        results.append(await _raw(scene, bot, sync, rooms, items))
    one = next(r for r in results if r["store"] == "postgresql" and r["instances"] == 1)
    for r in results:
        r["ratio"] = round(r["msgs_per_s"] / one["msgs_per_s"], 2)
    return {"items": items, "rooms": room_count, "setups": results}


def table(figures: dict[str, Any]) -> str:
    """The figure in Markdown: instances, store, seconds, messages/s, ratio to one
    instance on PostgreSQL, and where the CPU went over the window, in cores (1.00: one
    core all the time): Synapse's use and its threads' wait for a CPU, each bot's, the
    database's, and what the rest of the machine ran meanwhile."""
    lines = ["| instances | store | seconds | msgs/s | ratio | sent by each | "
             "Synapse (waiting for a CPU) | bots | PostgreSQL | others' work | "
             "CPU ms per message: Synapse / bots | RSS each (MiB) | load |",
             "|" + "---|" * 13]
    for r in figures["setups"]:
        c = r["cores"]
        bots = " + ".join(f"{b:.2f}" for b in c["bots"]) or "—"
        postgresql = f"{c['postgresql']:.2f}" if "postgresql" in c else "—"
        cells = [str(r["instances"] or "—"), r["store"], f"{r['seconds']:.1f}",
                 f"{r['msgs_per_s']:.1f}", f"{r['ratio']:.2f}×",
                 " / ".join(map(str, r["sent_by"])),
                 f"{c['synapse']:.2f} ({c['synapse_waiting']:.2f})",
                 bots, postgresql,
                 f"{c['others']:.2f}",
                 f"{1000 * c['synapse_s'] / r['messages']:.0f} / "
                 f"{1000 * c['bots_s'] / r['messages']:.1f}",
                 " / ".join(f"{m:.0f}" for m in r["rss_mib"]) or "—",
                 f"{r['load_average'][0]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
