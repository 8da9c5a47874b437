"""Run the load scenario of tests/test_load.py on several feed-host layouts and print
what was measured (no assertions): where the layout matters, this shows by how much.

    .venv/bin/python benchmarks/load_topologies.py                 # 1, 10 and 50 hosts
    .venv/bin/python benchmarks/load_topologies.py 10 10s 50 --cycles 14

A layout is a number of hosts (feed servers on distinct ports); a trailing "s" puts the
slow (trickling) feeds on a host of their own instead of among the healthy ones.
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
from tests.test_load import CYCLES, run_load  # noqa: E402


async def main(layouts: list[str], cycles: int) -> None:
    with tempfile.TemporaryDirectory(prefix="newsbot-load-") as tmp:
        work = Path(tmp)
        (work / "synapse").mkdir()
        async with SynapseServer(work / "synapse") as synapse, FeedServer() as feeds:
            for n, layout in enumerate(layouts):
                slow_own = layout.endswith("s")
                hosts = int(layout.rstrip("s"))
                bot = await synapse.register(f"newsbot-{uuid.uuid4().hex[:8]}")
                user = await synapse.register(f"alice-{uuid.uuid4().hex[:8]}")
                run_dir = work / f"run{n}"
                run_dir.mkdir()
                async with MemberClient(synapse.base_url, user) as alice:
                    result = await run_load(
                        synapse=synapse, feed_server=feeds, bot=bot, alice=alice,
                        workdir=run_dir, base_path=f"/bench-{n}", hosts=hosts,
                        slow_on_own_host=slow_own, cycles=cycles)
                print(result.summary(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layouts", nargs="*", default=["1", "10", "10s", "50"])
    parser.add_argument("--cycles", type=int, default=CYCLES)
    args = parser.parse_args()
    asyncio.run(main(args.layouts, args.cycles))
