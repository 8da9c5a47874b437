"""The machine-speed figures of the load scenario (tests/test_load.py), against the targets
a quiet 2-core machine meets. Prints them; asserts nothing.

    .venv/bin/python benchmarks/load_speed.py               # 10 hosts, 6 cycles
    .venv/bin/python benchmarks/load_speed.py --cycles 14 --hosts 50

tests/test_load.py asserts only what holds on a loaded machine (never more than
``fetch.concurrency`` in flight, nothing lost or repeated, delivery within a generous
deadline). How fast it goes is measured here: whether every fetch slot fills at
start-up (the setting is what limits, nothing else), whether each item reaches its room
within ``INTERVAL + MARGIN`` (failing feeds delay no healthy one by a whole cycle),
whether an unchanged feed gets 0.85 to 1.2 requests per interval and one in every
cycle. Run it on a quiet machine: a figure out of target there is worth a look.
Starts its own Synapse (about 3 s) in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import FeedServer, MemberClient, SynapseServer  # noqa: E402
from tests.test_load import (  # noqa: E402
    CONCURRENCY,
    CYCLES,
    INTERVAL,
    MARGIN,
    LoadResult,
    run_load,
)


def speed_figures(result: LoadResult) -> list[tuple[str, str, bool]]:
    """(figure, value, within target) for each machine-speed figure of a run."""
    latencies = result.latencies
    worst = latencies[-1] if latencies else float("inf")
    rate = result.requests_per_interval if result.cycles else 0.0
    fewest = min((c.min_requests for c in result.cycles), default=0)
    return [
        (f"max in flight at start-up (target {CONCURRENCY}: the setting limits)",
         str(result.warmup_max_in_flight), result.warmup_max_in_flight == CONCURRENCY),
        (f"slowest delivery (target < INTERVAL + MARGIN = {INTERVAL + MARGIN:g} s)",
         f"{worst:.2f} s", worst < INTERVAL + MARGIN),
        ("requests per unchanged feed per interval (target 0.85 to 1.2)",
         f"{rate:.3f}", 0.85 <= rate <= 1.2),
        ("fewest requests to an unchanged feed in one cycle (target >= 1)",
         str(fewest), fewest >= 1),
        ("warm-up: 900 healthy feeds read once", f"{result.warmup_seconds:.1f} s", True),
        ("longest cycle", f"{max((c.window for c in result.cycles), default=0):.1f} s",
         True),
        ("CPU per cycle", ", ".join(f"{c.cpu:.2f}" for c in result.cycles) + " s", True),
    ]


async def main(hosts: int, cycles: int) -> None:
    with tempfile.TemporaryDirectory(prefix="newsbot-speed-") as tmp:
        work = Path(tmp)
        (work / "synapse").mkdir()
        async with SynapseServer(work / "synapse") as synapse, FeedServer() as feeds:
            bot = await synapse.register(f"newsbot-{uuid.uuid4().hex[:8]}")
            user = await synapse.register(f"alice-{uuid.uuid4().hex[:8]}")
            async with MemberClient(synapse.base_url, user) as alice:
                result = await run_load(synapse=synapse, feed_server=feeds, bot=bot,
                                        alice=alice, workdir=work, base_path="/speed",
                                        hosts=hosts, cycles=cycles)
    print(result.summary())
    print("machine-speed figures:")
    for figure, value, ok in speed_figures(result):
        print(f"  {'ok  ' if ok else 'SLOW'} {figure}: {value}")
    if result.problems:
        print(f"  ({len(result.problems)} problem(s) above: those the test asserts)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=CYCLES)
    args = parser.parse_args()
    asyncio.run(main(args.hosts, args.cycles))
