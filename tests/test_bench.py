"""The bench's pieces work (``./dev bench``, benchmarks/): tiny runs, no figure asserted —
speed is the bench's business, not the tests'."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks import instances, polls
from benchmarks.bench import rows, table
from benchmarks.feedproc import FeedProcess
from benchmarks.member_sync import MemberSync
from benchmarks.memory import cpu_seconds, rss_mib
from tests.support import MemberFactory, NewUserFactory


async def test_unchanged_polls_are_measured_on_both_sides(tmp_path: Path) -> None:
    with FeedProcess() as feeds:
        figures, made = await polls.measure(feeds, 12, 1, "smoke", tmp_path / "state",
                                            log=lambda _line: None)
        # The server is another process: what it answered is counted there, not here.
        assert feeds.pid != os.getpid()
    summary = figures.summary()
    assert [name for name, _url, _etag in made] == [f"smoke-{n}" for n in range(12)]
    for side in ("newsbot", "bare"):
        (only,) = figures.newsbot if side == "newsbot" else figures.bare
        assert only.polls == 12 and only.cpu > 0 and only.wall > 0
        assert summary[side]["requests_per_s"] > 0   # type: ignore[index]
    assert (tmp_path / "state" / "newsbot.sqlite3").exists()


def test_changing_feed_answers_304_only_while_idle() -> None:
    import urllib.request

    with FeedProcess() as feeds:
        size = feeds.call("changing", "/big.xml", 3, 1000)
        assert size > 3000
        url = feeds.url("/big.xml")

        def status(etag: str | None) -> int:
            request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as exc:   # 304 is raised by urllib
                return exc.code

        assert status(None) == 200
        assert status('"idle"') == 304
        assert feeds.call("set_idle", False) == 1      # one full answer so far
        assert status('"idle"') == 200
        assert feeds.call("count", "/big") == 3


def test_the_table_has_a_row_per_figure_and_names_a_failed_line() -> None:
    side = {"cpu_per_1000_s": 0.5, "requests_per_s": 1000.0}
    results: dict[str, Any] = {
        "1": {"feeds": 1000, "newsbot": side, "bare": {**side, "cpu_per_1000_s": 0.25}},
        "2": {"feeds": 10000, "newsbot": side, "bare": {**side, "requests_per_s": 1100.0}},
        "3": {"rooms": 100, "newsbot_median_s": 2.2, "raw_nio_median_s": 2.0},
        "4": {"error": "TimeoutError: no answer"},
        "5": {"interval_s": 10.0, "feeds": 20, "p50_s": 4.5, "max_s": 8.3,
              "push": "not available yet"},
        "6": {"one": {"rss_mib": 62.0}, "one_bare": {"rss_mib": 50.0},
              "many": {"rss_mib": 110.0, "feeds": 10000}, "many_bare": {"rss_mib": 60.0}},
    }
    made = rows(results)
    by_measure = {row.measure.split(",")[0]: row for row in made}
    cpu = by_measure["CPU per 1"]
    assert (cpu.ratio, cpu.met) == ("2.00×", "NO")
    assert cpu.filed == "1.6–2.9×"           # issue 13's "today", printed beside the new
    assert by_measure["10"].met == "yes"                      # 0.91× ≥ 0.85×
    memory = [row for row in made if row.measure.startswith("resident memory")]
    assert [row.met for row in memory] == ["NO", "yes"]      # 62 > 50 MiB; 110 ≤ 120 MiB
    results["6"]["many"]["feeds"] = 2000                     # --quick: not the target's size
    assert rows(results)[-2].met == "n/a"
    assert any("not available yet" in row.newsbot for row in made)
    assert any(row.measure == "line 4: failed" for row in made)
    printed = table(made)
    assert printed.splitlines()[0].startswith("| measure | newsbot | limit (bare) |")
    assert printed.splitlines()[0].endswith("| at filing |")
    assert len(printed.splitlines()) == len(made) + 2


def test_the_instances_figure_has_a_row_per_setup_against_one_instance() -> None:
    # ./dev bench --only instances runs for minutes (real processes, PostgreSQL): only its
    # table is checked here, from figures of the shape it writes.
    def setup(store: str, count: int, per_s: float) -> dict[str, Any]:
        cores = {"synapse": 0.9, "synapse_waiting": 0.2, "bots": [0.05] * count,
                 "others": 0.5, "postgresql": 0.03, "synapse_s": 18.0, "bots_s": 1.0}
        return {"store": store, "instances": count, "items": 40, "rooms": 10, "messages": 400,
                "msgs_per_s": per_s, "seconds": 400 / per_s, "ratio": per_s / 20.0,
                "sent_by": [400 // max(count, 1)] * max(count, 1), "cores": cores,
                "rss_mib": [70.0] * count, "load_average": [1.5, 1.2, 1.0]}
    figures = {"items": 40, "rooms": 10, "setups": [
        setup("sqlite", 1, 22.0), setup("postgresql", 1, 20.0), setup("postgresql", 2, 19.0),
        setup("postgresql", 3, 18.0), setup("raw matrix-nio", 0, 21.0)]}
    made = rows({"instances": figures})
    assert [row.ratio for row in made] == ["1.10×", "1.00×", "0.95×", "0.90×", "1.05×"]
    assert made[2].measure == "40 items × 10 rooms, 2 instance(s) on postgresql: messages/s"
    assert made[4].measure.startswith("40 items × 10 rooms, raw matrix-nio sends")
    printed = instances.table(figures).splitlines()
    assert printed[0].startswith("| instances | store | seconds | msgs/s | ratio |")
    assert printed[5].startswith("| 3 | postgresql | 22.2 | 18.0 | 0.90× | 133 / 133 / 133 |")
    assert len(printed) == 2 + len(figures["setups"])


def test_memory_and_cpu_are_read_from_proc() -> None:
    rss, peak = rss_mib(os.getpid())
    assert 1 < rss <= peak
    assert cpu_seconds(os.getpid()) > 0


async def test_member_sync_stamps_what_the_member_receives(
        new_user: NewUserFactory, member: MemberFactory, synapse: object) -> None:
    alice, bob = await new_user("alice"), await new_user("bob")
    alice_client, bob_client = await member(alice), await member(bob)
    room = await alice_client.create_room(invite=[bob.user_id])
    await bob_client.join(room)
    base_url = alice_client.base_url
    async with MemberSync(base_url, alice) as sync:
        mark = sync.mark()
        sent_at = time.monotonic()
        await bob_client.send_text(room, "bonjour")
        (seen,) = await sync.wait(lambda s: s.sender == bob.user_id, 1, after=mark,
                                  timeout=30)
        waited_until = time.monotonic()
    assert seen.room_id == room and seen.body == "bonjour"
    # Stamped by the member's own process, on the same monotonic clock as ours.
    assert sent_at < seen.at <= waited_until
