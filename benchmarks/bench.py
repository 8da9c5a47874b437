"""``./dev bench``: every line of issue 13's speed table, each against its limit, measured
side by side in the same run on the same machine. Prints the table; writes JSON.

    ./dev bench                      # the whole table (8 minutes on a busy 2-core machine)
    ./dev bench --quick              # fewer feeds, rooms and rounds (under 2 minutes)
    ./dev bench --only 1,2 --feeds 3000 --json /tmp/figures.json

It starts its own Synapse (tests/support/synapse.py, the tests' relaxed rate limits) and
its own feed server in another process (benchmarks/feedproc.py), so the server's work is
never counted as the bot's. Lines:

1. CPU per 1,000 unchanged polls (304) of newsbot's pollers vs a bare aiohttp loop
   with If-None-Match, same URLs, 8 at once (benchmarks/polls.py);
2. the same with 10,000 feeds, saturated: requests per second;
3. one item to 100 rooms: newsbot vs raw matrix-nio sends (benchmarks/fanout.py);
4. a command's answer while a 2.2 MB feed is polled vs idle (benchmarks/latency.py);
5. publish -> member with polling every 10 s (and push, once newsbot has it);
6. resident memory of an idle bot process: 1 feed with encryption on, and 10,000
   feeds, vs a bare matrix-nio + aiohttp process (benchmarks/memory.py).

Opt-in, not in the default run (about 3 minutes more): ``--only instances``, the
throughput of one, two and three instances on one PostgreSQL database against one
(benchmarks/instances.py).

Figures vary with the machine's load: the load averages at the start and the end are
recorded with them, and ``--note`` adds what was known about the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import fanout, instances, latency, memory, polls
from benchmarks.feedproc import FeedProcess
from benchmarks.scene import Scene
from tests.support import SynapseServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results.json"


@dataclass(frozen=True)
class Size:
    """How much each line does: the full run, or ``--quick``."""

    cpu_feeds: int
    cpu_rounds: int
    saturated_feeds: int
    saturated_rounds: int
    rooms: int
    fanout_rounds: int
    commands: int
    delay_feeds: int


FULL = Size(cpu_feeds=1000, cpu_rounds=7, saturated_feeds=10_000, saturated_rounds=4,
            rooms=100, fanout_rounds=5, commands=10, delay_feeds=20)
QUICK = Size(cpu_feeds=300, cpu_rounds=2, saturated_feeds=2000, saturated_rounds=1,
             rooms=20, fanout_rounds=1, commands=4, delay_feeds=6)


@dataclass(frozen=True)
class Row:
    measure: str
    newsbot: str
    limit: str
    ratio: str
    target: str
    met: str
    filed: str = ""         # the figure when issue 13 was filed (its "today" column)


# Issue 13's "today" column: the same measures on main when it was filed (a 2-core
# machine, each against its limit), so that a run prints before and after side by side.
AT_FILING = {
    "1": "1.6–2.9×", "2": "0.28–0.61×", "3": "1.20–1.32×", "4": "9–11×",
    "5": "p50 4.5 s, max 8.3 s", "push": "no push", "6": "62.4 MiB", "6many": "148 MiB",
}


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def rows(results: dict[str, Any]) -> list[Row]:
    """The table, from the JSON figures (lines that failed say so)."""
    out: list[Row] = []
    cpu = results.get("1")
    if isinstance(cpu, dict) and "newsbot" in cpu:
        n, b = cpu["newsbot"]["cpu_per_1000_s"], cpu["bare"]["cpu_per_1000_s"]
        out.append(Row(f"CPU per 1,000 unchanged polls (304), {cpu['feeds']:,} feeds, 8 at once",
                       f"{n:.2f} s", f"{b:.2f} s", _ratio(n / b), "≤ 1.2×", _met(n / b <= 1.2),
                       AT_FILING["1"]))
    sat = results.get("2")
    if isinstance(sat, dict) and "newsbot" in sat:
        n, b = sat["newsbot"]["requests_per_s"], sat["bare"]["requests_per_s"]
        out.append(Row(f"{sat['feeds']:,} unchanged feeds, saturated: requests/s",
                       f"{n:,.0f}/s", f"{b:,.0f}/s", _ratio(n / b), "≥ 0.85×",
                       _met(n / b >= 0.85), AT_FILING["2"]))
    fan = results.get("3")
    if isinstance(fan, dict) and "newsbot_median_s" in fan:
        n, b = fan["newsbot_median_s"], fan["raw_nio_median_s"]
        out.append(Row(f"one item to {fan['rooms']} rooms, until a member has it everywhere "
                       "(vs raw matrix-nio sends)", f"{n:.2f} s", f"{b:.2f} s",
                       _ratio(n / b), "≤ 1.1×", _met(n / b <= 1.1), AT_FILING["3"]))
    reply = results.get("4")
    if isinstance(reply, dict) and "busy_max_s" in reply:
        n, b = reply["busy_max_s"], reply["idle_max_s"]
        out.append(Row(f"a command's reply while a {reply['feed_bytes'] / 1e6:.1f} MB feed is "
                       "polled, vs idle (max)", f"{n:.2f} s", f"{b:.2f} s", _ratio(n / b),
                       "≤ 1.5×", _met(n / b <= 1.5), AT_FILING["4"]))
    delay = results.get("5")
    if isinstance(delay, dict) and "p50_s" in delay:
        interval = delay["interval_s"]
        out.append(Row(f"publish → member, polling every {interval:g} s: p50 / max",
                       f"{delay['p50_s']:.1f} s / {delay['max_s']:.1f} s",
                       f"{interval / 2:.1f} s / {interval:.1f} s (the poll's own wait)",
                       "—", "(push below)", "n/a", AT_FILING["5"]))
        if "push_p99_s" in delay:
            p99 = delay["push_p99_s"]
            out.append(Row(f"publish + push → member: p99 ({delay['feeds']} items)",
                           f"{p99:.2f} s", "—", "—", "< 1 s", _met(p99 < 1.0),
                           AT_FILING["push"]))
        else:
            out.append(Row("publish + push → member: p99", f"push: {delay['push']}", "—",
                           "—", "< 1 s", "n/a"))
    mem = results.get("6")
    if isinstance(mem, dict) and "one" in mem:
        n, b = mem["one"]["rss_mib"], mem["one_bare"]["rss_mib"]
        out.append(Row("resident memory idle, 1 feed, encryption on", f"{n:.1f} MiB",
                       f"{b:.1f} MiB", _ratio(n / b), "≤ 50 MiB", _met(n <= 50),
                       AT_FILING["6"]))
        if "many" in mem:
            n, b = mem["many"]["rss_mib"], mem["many_bare"]["rss_mib"]
            feeds = mem["many"]["feeds"]
            # The target is for 10,000 feeds: fewer (--quick, --feeds) meet nothing.
            out.append(Row(f"resident memory idle, {feeds:,} feeds", f"{n:.1f} MiB",
                           f"{b:.1f} MiB", _ratio(n / b), "≤ 120 MiB at 10,000",
                           _met(n <= 120 if feeds >= 10_000 else None),
                           AT_FILING["6many"] if feeds >= 10_000 else ""))
    several = results.get("instances")
    if isinstance(several, dict) and "setups" in several:
        one = next(r for r in several["setups"]
                   if r["store"] == "postgresql" and r["instances"] == 1)
        out.extend(Row(f"{r['items']} items × {r['rooms']} rooms, " + (
                       f"{r['instances']} instance(s) on {r['store']}" if r["instances"]
                       else "raw matrix-nio sends") + ": messages/s", f"{r['msgs_per_s']:.1f}/s",
                       f"{one['msgs_per_s']:.1f}/s (1 on postgresql)", _ratio(r["ratio"]),
                       "measured", "n/a") for r in several["setups"])
    for line, value in sorted(results.items()):
        if isinstance(value, dict) and "error" in value:
            out.append(Row(f"line {line}: failed", value["error"], "", "", "", "NO"))
    return out


def table(table_rows: list[Row]) -> str:
    """A Markdown table: what the terminal shows is what the README gets."""
    header = Row("measure", "newsbot", "limit (bare)", "ratio", "target", "met?",
                 "at filing")
    lines = ["| " + " | ".join(vars(row).values()) + " |" for row in [header, *table_rows]]
    lines.insert(1, "|" + "---|" * len(vars(header)))
    return "\n".join(lines)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bot"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes in bot/)" if dirty else "")


async def run(lines: list[str], size: Size, quick: bool, saturated_feeds: int,
              log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="newsbot-bench-") as tmp:
        work = Path(tmp)
        logging.basicConfig(filename=work / "bots.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        started = time.monotonic()
        with FeedProcess() as feeds:
            async with SynapseServer(work / "synapse") as synapse:
                log(f"Synapse and the feed server up in {time.monotonic() - started:.1f} s")
                scene = Scene(synapse, feeds, work, quick, log)
                many: list[tuple[str, str, str]] | None = None
                saturated_state: Path | None = None

                async def line1() -> dict[str, Any]:
                    figures, _ = await polls.measure(feeds, size.cpu_feeds, size.cpu_rounds,
                                                     "cpu", work / "cpu-state", log)
                    return figures.summary()

                async def line2() -> dict[str, Any]:
                    nonlocal many, saturated_state
                    saturated_state = work / "saturated-state"
                    figures, many = await polls.measure(
                        feeds, saturated_feeds, size.saturated_rounds, "sat",
                        saturated_state, log)
                    return figures.summary()

                async def line3() -> dict[str, Any]:
                    return await fanout.measure(scene, size.rooms, size.fanout_rounds)

                async def line4() -> dict[str, Any]:
                    return await latency.command_replies(scene, size.commands)

                async def line5() -> dict[str, Any]:
                    return await latency.publish_to_member(scene, size.delay_feeds)

                async def line6() -> dict[str, Any]:
                    return await memory.measure(scene, many, "/sat/", saturated_state)

                async def several() -> dict[str, Any]:
                    return await instances.measure(scene, quick)

                steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                    "1": line1, "2": line2, "3": line3, "4": line4, "5": line5, "6": line6,
                    "instances": several}
                for line in lines:
                    log(f"line {line}...")
                    began = time.monotonic()
                    try:
                        results[line] = await steps[line]()
                    except Exception as exc:
                        traceback.print_exc()
                        results[line] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        bots_log = (work / "bots.log").read_text(errors="replace")
                        print("--- the bots' log, last lines ---\n"
                              + "\n".join(bots_log.splitlines()[-30:]), file=sys.stderr)
                    results[line]["seconds"] = round(time.monotonic() - began, 1)
                    log(f"line {line} done in {results[line]['seconds']} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="./dev bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer feeds, rooms and rounds (figures less steady)")
    parser.add_argument("--only", default="1,2,3,4,5,6",
                        help="lines to run, e.g. 1,2 (line 6's 10,000 feeds need line 2); "
                             "'instances' (opt-in) for one, two and three instances")
    parser.add_argument("--feeds", type=int, default=None,
                        help="feeds of line 2 (and of line 6's second figure); "
                             "default 10,000, or 2,000 with --quick")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the figures (default {DEFAULT_JSON})")
    parser.add_argument("--note", default="",
                        help="what is known of the machine's state, kept with the figures")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    lines = [line.strip() for line in args.only.split(",") if line.strip()]
    unknown = [line for line in lines
               if line != "instances" and (line not in "123456" or len(line) != 1)]
    if unknown:
        parser.error(f"unknown line(s) {', '.join(unknown)}: 1 to 6, or instances")
    saturated = args.feeds or size.saturated_feeds
    began, load_before = time.monotonic(), os.getloadavg()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f} s] {text}", flush=True)

    log(f"newsbot bench ({'quick' if args.quick else 'full'}) on {os.cpu_count()} core(s), "
        f"load average {load_before[0]:.2f}. Figures vary with the machine's load: "
        "compare the ratios of one run, not figures of different runs.")
    results = asyncio.run(run(lines, size, args.quick, saturated, log))
    load_after = os.getloadavg()
    total = time.monotonic() - began
    table_rows = rows(results)
    note = args.note or ""
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(), "mode": "quick" if args.quick else "full",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_start": load_before, "load_average_end": load_after,
                    "note": note},
        "total_seconds": round(total, 1),
        "table": [vars(row) for row in table_rows],
        "lines": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print()
    print(table(table_rows))
    print()
    if "setups" in results.get("instances", {}):
        print(instances.table(results["instances"]))
        print()
    print(f"{report['mode']} run of {report['commit']} in {total / 60:.1f} min on "
          f"{os.cpu_count()} cores; load average {load_before[0]:.2f} at the start, "
          f"{load_after[0]:.2f} at the end{'; ' + note if note else ''}.")
    print("Figures vary on a busy machine; each line's limit was measured in the same run, "
          f"so its ratio is what to compare. JSON: {args.json}")
    if any("error" in v for v in results.values()):
        sys.exit(1)
