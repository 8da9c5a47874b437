"""Resident memory of an idle bot (line 6): ``python -m bot run`` as its own process,
encryption on, read from /proc once it has settled, against the floor
(benchmarks/bare_client.py: matrix-nio with encryption and aiohttp, same feeds).

"Settled": its room joined, each of its feeds polled once, then its CPU time growing by
less than 2 % over 2 s. With 10,000 feeds the bot starts on the state line 2 left (each
feed seen and its ETag kept), as a restarted bot does: its polls are 304s.

Both processes run from compiled bytecode, as an installed bot does (``pip install``
compiles it): in a checkout with PYTHONDONTWRITEBYTECODE set, bot/ has no ``__pycache__``
and each start compiled every module of the bot from source: the compiler's freed memory
left the bot's heap 2.2 MiB larger once imported, about 0.5 MiB still once settled, a cost
the bare process, whose libraries all come compiled, never had. The figures also give the
resident memory's two parts: anonymous (the heap: objects, code) and file-backed (shared
libraries' pages).
"""

from __future__ import annotations

import asyncio
import compileall
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.scene import Scene, joined_everywhere
from tests.botkit import ROOT, BotProcess
from tests.support import MemberClient, RegisteredUser

ENCRYPTION = {"type": "m.room.encryption", "state_key": "",
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
_TICK = os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict[str, float]:
    """/proc/PID/status's memory fields (kB), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = _status(pid)
    return fields["VmRSS"], fields["VmHWM"]


def memory_figures(pid: int) -> dict[str, float]:
    """Resident memory, its peak, and its anonymous and file-backed parts, in MiB."""
    fields = _status(pid)
    return {"rss_mib": fields["VmRSS"], "peak_mib": fields["VmHWM"],
            "anon_mib": fields["RssAnon"], "file_mib": fields["RssFile"]}


def compile_bytecode() -> None:
    """The bot's and the bench's modules compiled, as ``pip install`` leaves them."""
    for package in ("bot", "benchmarks"):
        compileall.compile_dir(ROOT / package, quiet=1)


def cpu_seconds(pid: int) -> float:
    # /proc/PID/stat: the name (field 2) may hold spaces; utime and stime follow it.
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / _TICK


async def settled(pid: int, timeout: float = 60.0) -> bool:  # noqa: ASYNC109 (a deadline)
    """Wait until the process's CPU time grows by less than 2 % over 2 s."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        now = cpu_seconds(pid)
        if now - before < 0.04:
            return True
        before = now
    return False


async def _requests_reach(scene: Scene, prefix: str, count: int,
                          timeout: float) -> None:  # noqa: ASYNC109 (a deadline)
    deadline = time.monotonic() + timeout
    while await scene.feeds.acall("count", prefix) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} requests for {prefix} in {timeout:g} s")
        await asyncio.sleep(0.5)


async def _bot(scene: Scene, name: str, bot: RegisteredUser, member: MemberClient,
               room: str, feeds: list[tuple[str, str]], prefix: str,
               storage: Path | None) -> dict[str, Any]:
    config = scene.config_file(name, bot, [
        {"name": feed, "url": url, "rooms": [room], "interval": "1h"} for feed, url in feeds],
        storage=storage)
    await scene.feeds.acall("forget")
    process = BotProcess(config, bot, config.parent / "bot.log")
    await process.start()
    assert process.proc is not None
    started = time.monotonic()
    try:
        await joined_everywhere(member, [room], bot.user_id)
        await _requests_reach(scene, prefix, len(feeds), timeout=300)
        ready = time.monotonic() - started
        quiet = await settled(process.proc.pid)
        figures = memory_figures(process.proc.pid)
    finally:
        code = await process.terminate(timeout=30)
    if code != 0:
        raise RuntimeError(f"the bot exited {code}:\n{process.log()[-3000:]}")
    return {**figures, "settled": quiet, "ready_s": ready}


async def _bare(scene: Scene, name: str, feeds: list[tuple[str, str]]) -> dict[str, Any]:
    user = await scene.user("floor")
    home = scene.workdir / name
    home.mkdir(parents=True, exist_ok=True)
    urls = home / "urls.txt"
    urls.write_text("".join(f"{url} {etag}\n" for url, etag in feeds))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bare_client", scene.synapse.base_url, user.user_id,
        user.device_id, str(home / "store"), str(urls), cwd=ROOT,
        env={**os.environ, "BENCH_TOKEN": user.access_token}, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 300)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"the bare client did not start: {line!r}")
        quiet = await settled(process.pid)
        figures = memory_figures(process.pid)
    finally:
        process.terminate()
        await process.wait()
    return {**figures, "settled": quiet}


async def measure(scene: Scene, many: list[tuple[str, str, str]] | None = None,
                  many_prefix: str = "", many_state: Path | None = None) -> dict[str, Any]:
    """One feed in an encrypted room; then ``many`` feeds (name, url, etag), all served
    under ``many_prefix``, on the state ``many_state`` their polls left (None: the bot's
    first sight of each)."""
    await asyncio.to_thread(compile_bytecode)
    bot, alice = await scene.user("membot"), await scene.user("alice")
    await scene.feeds.acall("publish", "/memory/one.xml", "urn:bench:memory:0", "Numéro zéro")
    one = [("one", scene.feeds.url("/memory/one.xml"))]
    results: dict[str, Any] = {}
    async with MemberClient(scene.synapse.base_url, alice) as member:
        room = await member.create_room(invite=[bot.user_id], initial_state=[ENCRYPTION])
        results["one"] = await _bot(scene, "memory-one", bot, member, room, one,
                                    "/memory/", None)
        results["one_bare"] = await _bare(scene, "memory-one-bare",
                                          [(url, "") for _, url in one])
        scene.log(f"    1 feed: newsbot {_parts(results['one'])}, "
                  f"bare {_parts(results['one_bare'])}")
        if many:
            big_bot = await scene.user("membot")
            await member.invite(room, big_bot.user_id)
            results["many"] = await _bot(scene, "memory-many", big_bot, member, room,
                                         [(name, url) for name, url, _ in many], many_prefix,
                                         many_state)
            results["many"]["feeds"] = len(many)
            results["many_bare"] = await _bare(scene, "memory-many-bare",
                                               [(url, etag) for _, url, etag in many])
            scene.log(f"    {len(many):,} feeds: newsbot {_parts(results['many'])}, "
                      f"bare {_parts(results['many_bare'])}")
    return results


def _parts(figures: dict[str, Any]) -> str:
    return (f"{figures['rss_mib']:.1f} MiB (anonymous {figures['anon_mib']:.1f}, "
            f"files {figures['file_mib']:.1f})")
