"""A large body is parsed in a worker process (bot.feeds.parse.LARGE_BODY): the loop's
GIL stays free for commands. The result, and the errors, are those of parse_feed."""

from __future__ import annotations

import os
import signal

import pytest

from bot.errors import ParseError
from bot.feeds import parse
from bot.feeds.parse import LARGE_BODY, parse_feed, parse_feed_async


def _rss(count: int, size: int) -> bytes:
    filler = "Données de santé hébergées en Europe. " * (size // 40)
    items = "".join(
        f"<item><guid>urn:big:{n}</guid><title>Numéro {n}</title>"
        f"<link>https://asso.example/{n}</link>"
        f"<description>&lt;p&gt;{filler}&lt;/p&gt;</description>"
        f"<pubDate>Mon, 0{1 + n % 9} Jun 2026 10:00:00 GMT</pubDate></item>"
        for n in range(count))
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            f"<title>Lettre</title><link>https://asso.example/</link><ttl>90</ttl>"
            f"{items}</channel></rss>").encode()


async def test_a_large_body_is_parsed_in_a_worker_process_with_the_same_result() -> None:
    body = _rss(80, 5000)
    assert len(body) > LARGE_BODY
    parsed = await parse_feed_async(body, content_type="application/rss+xml",
                                    url="https://asso.example/feed")
    assert parse._PROCESS._pool is not None     # it went to the process
    assert parsed == parse_feed(body, content_type="application/rss+xml",
                                url="https://asso.example/feed")
    assert len(parsed.entries) == 80


async def test_a_large_body_that_is_no_feed_raises_the_same_parse_error() -> None:
    body = b"<!doctype html><html><body>" + b"<p>page</p>" * 30_000 + b"</body></html>"
    assert len(body) > LARGE_BODY
    with pytest.raises(ParseError) as in_process:
        await parse_feed_async(body, content_type="text/html")
    with pytest.raises(ParseError) as in_thread:
        parse_feed(body, content_type="text/html")
    assert str(in_process.value) == str(in_thread.value)


async def test_a_dead_worker_costs_no_poll_and_is_replaced() -> None:
    body = _rss(80, 5000)
    await parse_feed_async(body)
    pool = parse._PROCESS._pool
    assert pool is not None
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    # The body in hand is parsed all the same (in a thread), and the next gets a new worker.
    assert len((await parse_feed_async(body)).entries) == 80
    assert len((await parse_feed_async(body)).entries) == 80
    assert parse._PROCESS._pool is not None and parse._PROCESS._pool is not pool


async def test_the_worker_is_let_go_when_idle() -> None:
    await parse_feed_async(_rss(80, 5000))
    assert parse._PROCESS._pool is not None
    parse._PROCESS.stop()       # what the idle timer calls after PROCESS_IDLE_SECONDS
    assert parse._PROCESS._pool is None
    assert len((await parse_feed_async(_rss(80, 5000))).entries) == 80
