"""Hostile and broken feeds through the real pipeline (issue 3, first section).

Every case is served by the real FeedServer (aiohttp on 127.0.0.1) and polled by a real
FeedPoller: Fetcher -> parse -> decide -> render -> one Store transaction, in a fresh
SQLite store. What is asserted is what matters outside: what a room would receive (the
outbox rows' JSON content, read in delivery order), what the operator reads (the log
line naming the feed), the feed's stored state, and that another feed in the same store
still works afterwards.

The corpus is in tests/data/hostile/ (one small file per case; see its README). Big
bodies (over the cap, gzip bomb, 10,000 entries, quadratic blow-up) are built here at
run time rather than committed.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import random
import re
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from aiohttp import web

from bot.config import FeedConfig
from bot.feeds.fetch import Fetcher
from bot.model import Delivery
from bot.store import SqliteStore, Store
from bot.transport.matrix import MatrixTransport
from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
    make_items,
)
from tests.support.peakmem import peak_rss_growth
from tests.support.pollers import feed_poller
from tests.support.rows import content_of

CORPUS = Path(__file__).parent / "data" / "hostile"
ROOMS = ("!alpha:hostile.test", "!beta:hostile.test")
KiB = 1024
MiB = 1024 * KiB
CAP = 64 * KiB  # Fetcher.max_body_bytes for every case but the big ones
NEW_ITEMS = "<!--@NEW@-->"  # where a corpus file takes the items of a later poll
RSS = "application/rss+xml; charset=utf-8"
ATOM = "application/atom+xml"
JSON_FEED = "application/feed+json"

# "feed NAME: reason (failure N in a row; next try in S s)", FeedPoller's failure line.
FAILURE_LINE = re.compile(
    r"feed (?P<feed>\S+): (?P<reason>.+) \(failure (?P<count>\d+) in a row; "
    r"next try in \d+ s\)")
# What a reason must never look like: a Python exception, a traceback, an object repr.
PYTHON_LEAK = re.compile(r"Traceback|\b[A-Z]\w*(?:Error|Exception)\b|object at 0x|<class ")

# The Matrix spec's suggested formatted_body subset (the render module's allow-list is
# deliberately not imported: this is the independent statement of what a room accepts).
MATRIX_TAGS = frozenset({
    "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
    "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "strike", "code", "hr", "br",
    "div", "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span",
    "details", "summary",
})
MATRIX_ATTRIBUTES = {
    "font": {"data-mx-bg-color", "data-mx-color", "color"},
    "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler"},
    "a": {"href", "name", "target"},
    "ol": {"start"},
    "code": {"class"},
}
LINK_SCHEMES = frozenset({"http", "https", "mailto"})


# --- the bench: a store, a fetcher, the feed server, and a poller per feed -------------


@dataclass
class Bench:
    store: Store
    fetcher: Fetcher
    server: FeedServer
    base_path: str
    enqueued: list[str] = field(default_factory=list)

    def path(self, suffix: str = "feed") -> str:
        return f"{self.base_path}/{suffix}"

    def serve(self, suffix: str, body: bytes, content_type: str = RSS) -> None:
        self.server.set_raw(self.path(suffix), body, content_type=content_type)

    async def poll(self, name: str, suffix: str = "feed", *, backfill: int = 0,
                   max_per_poll: int = 5) -> float:
        feed = FeedConfig(name=name, url=self.server.url(self.path(suffix)), rooms=ROOMS,
                          interval=600.0, backfill=backfill, max_per_poll=max_per_poll)
        poller = feed_poller(feed, self.store, self.fetcher, on_enqueued=self.enqueued.extend)
        return await poller.poll_once()

    async def deliver(self) -> list[Delivery]:
        """Everything pending, as the rooms would receive it (oldest first), marked sent.

        Every room must receive the same items in the same order; the first room's
        deliveries are returned.
        """
        per_room: dict[str, list[Delivery]] = {}
        for room in ROOMS:
            got = per_room.setdefault(room, [])
            while (delivery := await self.store.next_pending(room)) is not None:
                got.append(delivery)
                await self.store.mark_sent(delivery.key, f"$event-{len(got)}", time.time())
        first = per_room[ROOMS[0]]
        for room in ROOMS[1:]:
            assert [d.entry_id for d in per_room[room]] == [d.entry_id for d in first], room
        return first


async def _open_bench(tmp_path: Path, server: FeedServer, feed_path: str,
                      cap: int) -> AsyncIterator[Bench]:
    store = SqliteStore.open(tmp_path / "state")
    try:
        async with Fetcher(allow_private_networks=True, max_body_bytes=cap) as fetcher:
            yield Bench(store, fetcher, server, feed_path.removesuffix("/feed"))
    finally:
        store.close()


@pytest_asyncio.fixture
async def bench(tmp_path: Path, feed_server: FeedServer, feed_path: str,
                caplog: pytest.LogCaptureFixture) -> AsyncIterator[Bench]:
    caplog.set_level(logging.INFO, logger="bot")
    async for b in _open_bench(tmp_path, feed_server, feed_path, CAP):
        yield b


@pytest_asyncio.fixture
async def big_bench(tmp_path: Path, feed_server: FeedServer, feed_path: str,
                    caplog: pytest.LogCaptureFixture) -> AsyncIterator[Bench]:
    """The same with the default 5 MiB cap, for the cases that must be read whole."""
    caplog.set_level(logging.INFO, logger="bot")
    async for b in _open_bench(tmp_path, feed_server, feed_path, 5 * MiB):
        yield b


# --- helpers ----------------------------------------------------------------------------


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def with_new_items(body: bytes, items: str) -> bytes:
    assert NEW_ITEMS.encode() in body
    return body.replace(NEW_ITEMS.encode(), items.encode())


def bot_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("bot") and r.levelno >= level]


def bot_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in bot_records(caplog, logging.WARNING)]


def bot_infos(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in bot_records(caplog, logging.INFO)
            if r.levelno == logging.INFO and r.getMessage().startswith(f"feed {name}: ")]


def titles(deliveries: list[Delivery]) -> list[str]:
    """The first line of each message's plain body: the entry's title."""
    return [str(content_of(d)["body"]).split("\n", 1)[0] for d in deliveries]


def content_size(delivery: Delivery) -> int:
    """Bytes of the event content as a client library sends it (ASCII-escaped JSON)."""
    return len(json.dumps(content_of(delivery)).encode())


class _MarkupAudit(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in MATRIX_TAGS:
            self.problems.append(f"tag <{tag}>")
        for name, value in attrs:
            if name not in MATRIX_ATTRIBUTES.get(tag, set()):
                self.problems.append(f"attribute {name} on <{tag}>")
            elif name == "href":
                # convert_charrefs: value is decoded, so &#106;avascript: shows as javascript:
                scheme = urlsplit((value or "").strip()).scheme.lower()
                if scheme not in LINK_SCHEMES:
                    self.problems.append(f"link {value!r}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_comment(self, data: str) -> None:
        self.problems.append("comment")

    def handle_decl(self, decl: str) -> None:
        self.problems.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.problems.append(f"processing instruction {data!r}")


def assert_safe_markup(formatted_body: str) -> None:
    """Only the Matrix subset: allowed tags and attributes, web or mail links only."""
    audit = _MarkupAudit()
    audit.feed(formatted_body)
    audit.close()
    assert audit.problems == [], formatted_body


@pytest.mark.parametrize("dirty", [
    '<p><img src="https://tracker.example/p.gif"></p>',
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="data:text/html,x">x</a>',
    '<p onclick="alert(1)">x</p>',
    '<p style="color:red">x</p>',
    "<iframe></iframe>",
    "<!-- comment -->",
])
def test_markup_audit_catches_what_it_must(dirty: str) -> None:
    # The audit used on every room message must itself be able to fail.
    with pytest.raises(AssertionError):
        assert_safe_markup(f"<p>ok</p>{dirty}")


async def assert_refused(bench: Bench, caplog: pytest.LogCaptureFixture, name: str,
                   reason: str) -> None:
    """One WARNING naming the feed with a human reason; nothing queued; error stored."""
    records = bot_records(caplog, logging.WARNING)
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None  # no traceback under the line either
    match = FAILURE_LINE.fullmatch(record.getMessage())
    assert match is not None, record.getMessage()
    assert match["feed"] == name and match["count"] == "1"
    assert re.fullmatch(reason, match["reason"]), match["reason"]
    assert not PYTHON_LEAK.search(match["reason"]), match["reason"]
    assert "\n" not in record.getMessage()
    state = await bench.store.feed_state(name)
    assert state is not None
    assert state.last_error == match["reason"]
    assert state.failures == 1 and not state.initialized
    assert await bench.store.pending_count() == 0
    assert bench.enqueued == []


async def assert_other_feeds_unaffected(bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    """A healthy feed polled next, in the same store, posts as usual."""
    bench.server.set_feed(bench.path("healthy"), make_items(3, prefix="healthy"), kind="atom")
    caplog.clear()
    bench.enqueued.clear()
    await bench.poll("healthy", "healthy", backfill=1)
    assert bot_warnings(caplog) == []
    state = await bench.store.feed_state("healthy")
    assert state is not None and state.initialized and state.last_error is None
    delivered = await bench.deliver()
    assert [(d.feed, d.entry_id) for d in delivered] == [("healthy", "urn:newsbot-test:healthy-3")]
    assert sorted(bench.enqueued) == sorted(ROOMS)


def rss_document(items: str, *, title: str = "Flux de test") -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0">\n<channel>\n'
            f"<title>{title}</title>\n<link>https://hostile.example/</link>\n"
            f"<description>x</description>\n{items}</channel>\n</rss>\n").encode()


def rss_item(guid: str, title: str, *, day: int = 1, description: str = "") -> str:
    when = format_datetime(datetime(2024, 3, 1, 12, tzinfo=UTC) + timedelta(days=day),
                           usegmt=True)
    return (f'<item><title>{title}</title><guid isPermaLink="false">{guid}</guid>'
            f"<link>https://hostile.example/{guid}</link><pubDate>{when}</pubDate>"
            f"<description>{description or html.escape('<p>Résumé de ' + title + '</p>')}"
            "</description></item>\n")


# --- refused documents: one clear line, nothing posted, other feeds fine -----------------


def _corpus_case(name: str, content_type: str) -> Callable[[Bench], None]:
    def serve(bench: Bench) -> None:
        bench.serve("feed", corpus(name), content_type)
    return serve


def _big_rss(size: int) -> bytes:
    items = "".join(rss_item(f"big-{i}", f"Article {i}") for i in range(size // 200))
    body = rss_document(items)
    assert len(body) > size
    return body


def _serve_big_gzipped(bench: Bench) -> None:
    # The FeedServer gzips it: the cap applies to the decoded size.
    bench.serve("feed", _big_rss(200 * KiB))


def _serve_big_identity(bench: Bench) -> None:
    body = _big_rss(200 * KiB)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": RSS})  # with Content-Length

    bench.server.set_handler(bench.path(), handler)


def _serve_big_chunked(bench: Bench) -> None:
    body = _big_rss(200 * KiB)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": RSS})
        response.enable_chunked_encoding()  # no Content-Length to refuse early
        await response.prepare(request)
        try:
            for start in range(0, len(body), 8 * KiB):
                await response.write(body[start:start + 8 * KiB])
        except (ConnectionError, RuntimeError):
            pass  # the client hung up once over the cap, as it should
        return response

    bench.server.set_handler(bench.path(), handler)


def gzip_bomb(decoded_mib: int) -> bytes:
    """A gzip stream inflating to ``decoded_mib`` MiB of zeros (about 1 KiB per MiB)."""
    zeros = bytes(MiB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush every further MiB of zeros compresses to the same bytes.
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + block * (decoded_mib - 1)


def _serve_gzip_bomb(bench: Bench) -> None:
    payload = gzip_bomb(1024)  # 1 GiB once inflated, about 1 MiB on the wire

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": RSS, "Content-Encoding": "gzip"})
        await response.prepare(request)
        try:
            for start in range(0, len(payload), 16 * KiB):
                await response.write(payload[start:start + 16 * KiB])
        except (ConnectionError, RuntimeError):
            pass
        return response

    bench.server.set_handler(bench.path(), handler)


def _serve_deep_json(bench: Bench) -> None:
    depth = 20_000  # far past Python's recursion limit, well under the cap
    body = (b'{"version": "https://jsonfeed.org/version/1.1", "title": "x", "items": '
            + b"[" * depth + b"]" * depth + b"}")
    bench.serve("feed", body, JSON_FEED)


def _serve_binary(bench: Bench) -> None:
    png = b"\x89PNG\r\n\x1a\n" + random.Random(3).randbytes(8 * KiB)
    bench.serve("feed", png, "image/png")


TRUNCATED_RSS = r"truncated document: it ends at line \d+ before its closing </rss>"
TOO_BIG = re.escape("body larger than 64 KiB cap")
NOT_HTML = re.escape("not a feed: looks like an HTML page")

REFUSED: list[tuple[str, Callable[[Bench], None], str]] = [
    ("truncated-mid-entry", _corpus_case("truncated_mid_entry.xml", RSS), TRUNCATED_RSS),
    ("truncated-mid-tag-atom", _corpus_case("truncated_mid_tag.atom", ATOM),
     r"truncated document: it ends at line \d+ before its closing </feed>"),
    # The bare "&" stops expat long before the end: the missing </rss> still tells.
    ("truncated-after-bare-ampersand",
     _corpus_case("truncated_after_bare_ampersand.xml", RSS), TRUNCATED_RSS),
    ("truncated-json", _corpus_case("truncated.json", JSON_FEED),
     re.escape("truncated document: the JSON ends at line 6 before it is complete")),
    ("html-page", _corpus_case("html_page.html", "text/html; charset=utf-8"), NOT_HTML),
    ("html-page-as-rss", _corpus_case("html_page.html", RSS), NOT_HTML),
    ("empty-body", _corpus_case("empty.xml", RSS), "empty body"),
    ("whitespace-body", _corpus_case("whitespace_only.xml", RSS), "empty body"),
    ("over-cap-gzipped", _serve_big_gzipped, TOO_BIG),
    ("over-cap-content-length", _serve_big_identity, TOO_BIG),
    ("over-cap-chunked", _serve_big_chunked, TOO_BIG),
    ("gzip-bomb", _serve_gzip_bomb, TOO_BIG),
    ("json-nested-too-deeply", _serve_deep_json, re.escape("not a feed: JSON nested too deeply")),
    ("binary-image", _serve_binary, r"not a feed: no RSS, Atom or JSON Feed structure found .+"),
]


@pytest.mark.parametrize(("case", "serve", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_refused_with_one_clear_line(bench: Bench, caplog: pytest.LogCaptureFixture,
                                           case: str, serve: Callable[[Bench], None],
                                           reason: str) -> None:
    serve(bench)
    name = f"hostile-{case}"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        delay = await bench.poll(name, backfill=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"\n{case}: refused in {elapsed:.3f} s, peak traced memory {peak / MiB:.1f} MiB")
    await assert_refused(bench, caplog, name, reason)
    assert delay == 600.0  # retried after one interval: a failed fetch, not a dead feed
    # Bounded whatever the server sends: the gzip bomb is 1 GiB once inflated.
    assert peak < 32 * MiB, f"{case}: peak {peak / MiB:.1f} MiB"
    await assert_other_feeds_unaffected(bench, caplog)


# --- truncation: retried, never half-posted --------------------------------------------


@pytest.mark.parametrize("cut_after", [
    "<description>&lt;p&gt;Résumé de Tro",  # inside the text of the newest entry
    "<guid isPermaLink=\"false\">art-3</gu",  # inside a tag
    "</item>\n",  # between entries: still not the whole document
])
async def test_truncated_newest_entry_is_retried_not_half_posted(
        bench: Bench, caplog: pytest.LogCaptureFixture, cut_after: str) -> None:
    name = "hostile-truncated-retry"
    older = rss_item("art-2", "Deux", day=2) + rss_item("art-1", "Un", day=1)
    bench.serve("feed", rss_document(older))
    await bench.poll(name)  # first sight: both seen, nothing posted
    assert await bench.store.pending_count() == 0

    whole = rss_document(rss_item("art-3", "Trois, le plus récent", day=3) + older)
    text = whole.decode()
    cut = text.index(cut_after) + len(cut_after)
    bench.serve("feed", text[:cut].encode())
    caplog.clear()
    await bench.poll(name)
    assert await bench.store.pending_count() == 0  # no half entry, not even a whole older one
    assert await bench.store.unseen(name, ["art-3"]) == {"art-3"}  # nor marked as seen
    [warning] = bot_warnings(caplog)
    assert re.fullmatch(rf"feed {name}: {TRUNCATED_RSS} \(failure 1 in a row; next try in "
                        r"\d+ s\)", warning), warning
    state = await bench.store.feed_state(name)
    assert state is not None and state.last_error is not None
    assert state.last_error.startswith("truncated document")

    bench.serve("feed", whole)  # the next poll gets the whole document
    caplog.clear()
    await bench.poll(name)
    assert bot_warnings(caplog) == []
    [delivery] = await bench.deliver()
    assert delivery.entry_id == "art-3"
    assert "Résumé de Trois, le plus récent" in str(content_of(delivery)["body"])
    state = await bench.store.feed_state(name)
    assert state is not None and state.last_error is None and state.failures == 0


@pytest.mark.parametrize(("file", "problem"), [
    ("minor_bare_ampersand.xml", "not well-formed (invalid token)"),
    ("minor_undefined_entity.xml", "undefined entity"),
    ("minor_junk_before_declaration.xml", "junk after document element"),  # PHP warnings
])
async def test_minor_well_formedness_problem_keeps_entries(
        bench: Bench, caplog: pytest.LogCaptureFixture, file: str, problem: str) -> None:
    name = "hostile-minor"
    bench.serve("feed", corpus(file))
    await bench.poll(name, backfill=3)
    assert bot_warnings(caplog) == []  # worth a note, not an alarm
    assert any(problem in line and "lenient parser" in line for line in bot_infos(caplog, name))
    delivered = await bench.deliver()
    assert [d.entry_id for d in delivered] == ["art-1", "art-2", "art-3"]
    second = content_of(delivered[1])
    if "ampersand" in file:
        assert "Fish & chips" in str(second["body"])
        assert "Fish &amp; chips" in str(second["formatted_body"])
    elif "junk" in file:
        assert "Fish & chips, après des avertissements PHP" in str(second["body"])
        assert all("Warning" not in str(content_of(d)["body"]) for d in delivered)
    else:
        assert titles(delivered)[1] == "Café\u00a0: l’entité non déclarée"
        assert "Texte avec © et …" in str(second["body"])
    state = await bench.store.feed_state(name)
    assert state is not None and state.last_error is None


# --- encodings --------------------------------------------------------------------------


ACCENTED = ["Œuvre, cœur et cætera", "Été à la mer : élève naïve"]
LATIN1 = ["Français à l'école", "Été à la mer : élève naïve"]


@pytest.mark.parametrize(("file", "content_type", "feed_title", "expected"), [
    ("latin1_declared_utf8.xml", RSS, "Encodage déclaré faux", LATIN1),
    ("latin1_declared_utf8.xml", "application/rss+xml", "Encodage déclaré faux", LATIN1),
    ("utf16_bom.xml", "application/rss+xml", "Flux UTF-16", ACCENTED),
    ("utf16_bom.xml", "text/xml", "Flux UTF-16", ACCENTED),
    ("utf8_bom.xml", RSS, "Flux avec BOM", ACCENTED),
    ("no_declaration.xml", "application/rss+xml", "Sans déclaration", ACCENTED),
    # The header is wrong: the bytes are UTF-8.
    ("no_declaration.xml", "text/xml; charset=iso-8859-1", "Sans déclaration", ACCENTED),
    ("no_declaration_latin1.xml", "text/xml", "Sans déclaration, en Latin-1", LATIN1),
], ids=["latin1-declared-utf8", "latin1-declared-utf8-no-charset", "utf16-bom",
        "utf16-bom-text-xml", "utf8-bom", "no-declaration", "no-declaration-wrong-header",
        "no-declaration-latin1"])
async def test_encodings_decode_right(bench: Bench, caplog: pytest.LogCaptureFixture, file: str,
                                      content_type: str, feed_title: str,
                                      expected: list[str]) -> None:
    name = "hostile-encoding"
    bench.serve("feed", corpus(file), content_type)
    await bench.poll(name, backfill=2)
    assert bot_warnings(caplog) == []
    delivered = await bench.deliver()
    assert titles(delivered) == expected
    for delivery in delivered:
        content = content_of(delivery)
        body, formatted = str(content["body"]), str(content["formatted_body"])
        assert f"{feed_title} · " in body
        for text in (body, formatted):
            assert not re.search("[ÃÂ\ufffd]|Å\u201c|â€", text), text  # no mojibake
    state = await bench.store.feed_state(name)
    assert state is not None and state.title == feed_title


# --- entity expansion and external entities ---------------------------------------------


async def test_billion_laughs_is_not_expanded(bench: Bench,
                                              caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-billion-laughs"
    bench.serve("feed", corpus("billion_laughs.xml"))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        await bench.poll(name, backfill=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"\n{name}: {elapsed:.3f} s, peak traced memory {peak / MiB:.1f} MiB")
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert bot_warnings(caplog) == []
    assert any("entity amplification" in line for line in bot_infos(caplog, name))
    [delivery] = await bench.deliver()
    assert titles([delivery]) == ["Un milliard de rires &lol9;"]  # left as written
    assert "lollol" not in json.dumps(content_of(delivery))
    assert content_size(delivery) < 2 * KiB


async def test_quadratic_blowup_is_not_expanded(bench: Bench,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # One plain 20 KB entity referenced 2,000 times: 40 MB of text from a 26 KB body.
    # expat lets the first megabytes through, and feedparser's lenient parser expands
    # such "safe-looking" entities without any limit.
    name = "hostile-quadratic"
    entity = "A" * 20_000
    body = ('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE rss [\n'
            f'<!ENTITY big "{entity}">\n]>\n<rss version="2.0"><channel><title>Q</title>\n'
            '<item><title>Explosion quadratique</title><guid isPermaLink="false">q-1</guid>'
            f"<description>{'&big;' * 2000}</description></item>\n</channel></rss>\n").encode()
    assert len(body) < CAP
    bench.serve("feed", body)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        await bench.poll(name, backfill=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"\n{name}: {elapsed:.3f} s, peak traced memory {peak / MiB:.1f} MiB")
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert bot_warnings(caplog) == []
    [delivery] = await bench.deliver()
    assert titles([delivery]) == ["Explosion quadratique"]
    assert "AAAAAAAAAA" not in json.dumps(content_of(delivery))
    assert content_size(delivery) < 4 * KiB


@pytest.mark.parametrize(("file", "title"), [
    ("xxe_local_file.xml", "Fuite &secret; ici ?"),
    ("xxe_parameter_entity.xml", "Entité paramètre &exfil;"),
    ("xxe_external_dtd.xml", "DTD externe &fromdtd;"),
])
async def test_external_entities_are_never_resolved(
        bench: Bench, caplog: pytest.LogCaptureFixture, tmp_path: Path, file: str,
        title: str) -> None:
    name = "hostile-xxe"
    marker = "NEWSBOT-SECRET-MARKER-5d41402a"
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{marker}\n")
    canary = bench.path("canary.dtd")  # a request here would be an SSRF through the parser
    bench.server.set_raw(canary, f'<!ENTITY exfil "{marker}">'.encode(),
                         content_type="application/xml-dtd")
    body = corpus(file).decode()
    body = body.replace("@SECRET_URL@", secret.as_uri())
    body = body.replace("@CANARY_URL@", bench.server.url(canary))
    bench.serve("feed", body.encode())

    await bench.poll(name, backfill=1)
    assert bot_warnings(caplog) == []
    assert bench.server.requests(canary) == []
    delivered = await bench.deliver()
    assert titles(delivered) == [title]  # references are left as written, unresolved
    for delivery in delivered:
        assert marker not in json.dumps(content_of(delivery), ensure_ascii=False)
        assert "file:" not in str(content_of(delivery)["formatted_body"])
    state = await bench.store.feed_state(name)
    assert state is not None and marker not in repr(state)
    assert marker not in caplog.text
    bench.store.close()  # checkpoint the WAL so the whole database is in one file
    for db_file in bench.store.path.parent.iterdir():
        assert marker.encode() not in db_file.read_bytes(), db_file


# --- unsafe HTML ------------------------------------------------------------------------


UNSAFE_MARKERS = ("xss-", "evil.example", "tracker.example")


@pytest.mark.parametrize(("file", "content_type", "count"), [
    ("unsafe_html_rss.xml", RSS, 6),
    ("unsafe_html_atom.atom", ATOM, 3),
    ("unsafe_html.json", JSON_FEED, 3),
])
async def test_unsafe_html_never_reaches_a_room(bench: Bench, caplog: pytest.LogCaptureFixture,
                                                file: str, content_type: str,
                                                count: int) -> None:
    name = "hostile-unsafe-html"
    bench.serve("feed", corpus(file), content_type)
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    delivered = await bench.deliver()
    assert len(delivered) == count
    by_id = {d.entry_id: content_of(d) for d in delivered}
    for delivery in delivered:
        formatted = str(content_of(delivery)["formatted_body"])
        body = str(content_of(delivery)["body"])
        assert_safe_markup(formatted)
        for marker in UNSAFE_MARKERS:
            assert marker not in formatted.lower() and marker not in body.lower(), \
                (delivery.entry_id, marker)
        for scheme in ("javascript", "vbscript", "data:", "file:"):
            assert scheme not in formatted.lower(), (delivery.entry_id, scheme)
            assert scheme not in body.lower(), (delivery.entry_id, scheme)
        assert "<img" not in formatted and "<script" not in formatted.lower()

    if file == "unsafe_html_rss.xml":
        assert "Avant après." in str(by_id["unsafe-script"]["body"])
        assert "Stylé" in str(by_id["unsafe-script"]["body"])
        assert "lien sain (https://hostile.example/ok)" in str(by_id["unsafe-handlers"]["body"])
        assert "Texte lisible." in str(by_id["unsafe-pixels"]["body"])
        # An entry link that is not a web address gives no link at all.
        assert "<a " not in str(by_id["unsafe-links"]["formatted_body"]).split("</strong>")[0]
        # Markup written as text in the title stays visible text, escaped.
        escaped = str(by_id["unsafe-escaped"]["formatted_body"])
        assert "&lt;script&gt;alert('shown-as-text')&lt;/script&gt;" in escaped
        assert "Contenu." in str(by_id["unsafe-mxss"]["body"])
    elif file == "unsafe_html.json":
        assert sorted(titles(delivered)) == ["Liens dangereux en JSON", "Pixels en JSON",
                                             "Script <b>en JSON</b>"]
        assert "sain (https://hostile.example/json/ok)" in str(by_id["json-links"]["body"])
        assert "&lt;script&gt;" in str(by_id["json-script"]["formatted_body"])  # feed title


async def test_huge_fields_stay_within_a_matrix_event(big_bench: Bench,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # Homeservers refuse events over 64 KiB (M_TOO_LARGE); such an item would block its
    # rooms' queues for good, as deliveries go out in order.
    name = "hostile-huge-fields"
    link = "https://hostile.example/" + "é&" * 30_000
    items = (
        f'<item><title>{"Titre interminable é&amp; " * 5000}</title>'
        f'<guid isPermaLink="false">huge-title</guid><link>{html.escape(link)}</link>'
        f"<description>{html.escape('<p>' + 'Un résumé très long. ' * 20_000 + '</p>')}"
        "</description></item>\n"
        '<item><title>Attributs géants</title><guid isPermaLink="false">huge-attributes</guid>'
        "<link>https://hostile.example/attributs</link><description>"
        + html.escape(f'<p><span data-mx-spoiler="{"s" * 60_000}">court</span>'
                      f'<code class="language-{"c" * 60_000}">x</code>'
                      f'<a href="https://hostile.example/{"h" * 60_000}" name="{"n" * 60_000}">'
                      "lien</a></p>")
        + "</description></item>\n"
        # Just within every bound, and as costly as can be once JSON-escaped.
        f'<item><title>{"é&amp;" * 125}</title><guid isPermaLink="false">worst-case</guid>'
        f'<link>https://hostile.example/{"é&amp;" * 735}</link><description>'
        + html.escape(f'<p><span data-mx-spoiler="{"é" * 1500}">{"é" * 400}</span></p>')
        + "</description></item>\n"
    )
    big_bench.serve("feed", rss_document(items, title="Énorme " * 10_000))
    await big_bench.poll(name, backfill=3)
    assert bot_warnings(caplog) == []
    delivered = await big_bench.deliver()
    assert sorted(d.entry_id for d in delivered) == [
        "huge-attributes", "huge-title", "worst-case"]
    sizes = {d.entry_id: content_size(d) for d in delivered}
    print(f"\nevent content sizes (bytes): {sizes}")
    for delivery in delivered:
        assert content_size(delivery) < 48 * KiB, (delivery.entry_id, content_size(delivery))
        assert_safe_markup(str(content_of(delivery)["formatted_body"]))
    worst = next(d for d in delivered if d.entry_id == "worst-case")
    assert str(content_of(worst)["formatted_body"]).count('href="https://hostile.example/') == 2
    huge = next(d for d in delivered if d.entry_id == "huge-title")
    assert titles([huge])[0].startswith("Titre interminable é& Titre")
    assert titles([huge])[0].endswith("…")


# --- identity: missing fields, duplicates, dates ----------------------------------------


async def test_entries_missing_id_link_or_title(bench: Bench,
                                                caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-missing-fields"
    body = corpus("missing_fields.xml")
    bench.serve("feed", body)
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    skipped = [line for line in bot_infos(caplog, name) if "no title, link or text" in line]
    assert len(skipped) == 2  # the empty item and the one with nothing but a guid
    first = await bench.deliver()
    # Undated entries go out in reverse document order (feeds list newest first).
    assert titles(first) == ["Guid qui n'est pas une adresse", "(sans titre)", "(sans titre)",
                             "Ni guid ni lien", "Sans guid"]
    by_title = {d.entry_id: content_of(d) for d in first}
    assert by_title["https://missing.example/sans-guid"]["body"] == (
        "Sans guid\nChamps manquants\n\nIdentifiée par son lien.\n\n"
        "https://missing.example/sans-guid")
    no_title = str(by_title["missing-title"]["formatted_body"])
    assert '<a href="https://missing.example/sans-titre">(sans titre)</a>' in no_title
    # A guid that is no address is not taken for the entry's link.
    assert "<a " not in str(by_title["missing-link-from-guid"]["formatted_body"])
    assert all("Lire la suite" not in str(content_of(d)["formatted_body"]) for d in first
               if d.entry_id != "https://missing.example/sans-guid"
               and d.entry_id != "missing-title")

    # Second poll: the same entries plus one new one. The body changed, so everything
    # is parsed again: ids must come out the same, and only the new entry is posted.
    bench.serve("feed", with_new_items(body, "<item><title>Nouvelle</title>"
                                             "<description>Arrivée plus tard.</description>"
                                             "</item>"))
    caplog.clear()
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    assert titles(await bench.deliver()) == ["Nouvelle"]


async def test_duplicate_ids_in_one_feed_post_once(bench: Bench,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-duplicates"
    body = corpus("duplicate_ids.xml")
    bench.serve("feed", body)
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    assert sum("repeats id" in line for line in bot_infos(caplog, name)) == 2
    assert titles(await bench.deliver()) == ["Autre", "Premier"]

    bench.serve("feed", with_new_items(body, (
        '<item><title>Nouveau</title><guid isPermaLink="false">dup-3</guid></item>'
        '<item><title>Nouveau, encore</title><guid isPermaLink="false">dup-3</guid></item>'
        '<item><title>Premier, revu</title><guid isPermaLink="false">dup-1</guid></item>')))
    await bench.poll(name, backfill=10)
    second = await bench.deliver()
    # dup-3 is posted once; dup-1's first occurrence now reads differently: that is a
    # correction, shown as an edit of the message already posted, never a second post.
    # The edit row holds the corrected version; it is sent as an m.replace of dup-1's
    # message, found when it is sent.
    assert titles(second) == ["Nouveau", "Premier, revu"]
    assert [(d.kind, d.subject) for d in second] == [("item", "dup-3"), ("edit", "dup-1")]
    assert await bench.store.pending_count() == 0


@pytest.mark.parametrize(("file", "first_titles"), [
    ("dates.xml", None),
    ("dates_future_only.xml", ["Février 2024", "Mars 2024", "Publiée en 2999"]),
])
async def test_garbage_and_far_future_dates(bench: Bench, caplog: pytest.LogCaptureFixture,
                                            file: str, first_titles: list[str] | None) -> None:
    name = "hostile-dates"
    body = corpus(file)
    bench.serve("feed", body)
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    first = await bench.deliver()
    if first_titles is not None:
        assert titles(first) == first_titles  # dated: oldest first, 2999 last
        assert "31 décembre 2999" in str(content_of(first[-1])["body"])
    else:
        assert len(first) == 7
        garbage = next(d for d in first if d.entry_id == "date-garbage")
        assert str(content_of(garbage)["body"]).split("\n")[1] == "Dates impossibles"  # no date

    # A far-future entry is not a high-water mark: a later, normally dated entry still
    # goes out on the next poll, and alone.
    bench.serve("feed", with_new_items(body, rss_item("date-new", "Arrivée après", day=5)))
    caplog.clear()
    await bench.poll(name, backfill=10)
    assert bot_warnings(caplog) == []
    assert titles(await bench.deliver()) == ["Arrivée après"]


# --- volume: 10,000 entries, and a feed that rewrites all its ids -----------------------


async def test_ten_thousand_entries(big_bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-ten-thousand"
    items = "".join(rss_item(f"bulk-{i}", f"Article {i} &amp; co", day=i // 24,
                             description=html.escape(f"<p>Résumé <b>{i}</b>.</p>"))
                    for i in range(10_000, 0, -1))
    body = rss_document(items)
    big_bench.serve("feed", body)
    started = time.perf_counter()
    # The process's resident peak, not tracemalloc: that made this poll 8 times slower.
    with peak_rss_growth() as growth:
        await big_bench.poll(name, backfill=3)
    peak = growth.bytes
    elapsed = time.perf_counter() - started
    print(f"\n10,000 entries ({len(body) / MiB:.1f} MiB): first poll {elapsed:.2f} s, "
          f"peak resident growth {peak / MiB:.1f} MiB")
    assert peak < 200 * MiB, f"peak {peak / MiB:.0f} MiB"
    assert bot_warnings(caplog) == []
    assert titles(await big_bench.deliver()) == [
        f"Article {i} & co" for i in (9_998, 9_999, 10_000)]
    every_id = [f"bulk-{i}" for i in range(1, 10_001)]
    assert await big_bench.store.unseen(name, every_id) == set()  # all 10,000 remembered

    big_bench.serve("feed", rss_document(rss_item("bulk-10001", "La suite", day=500) + items))
    started = time.perf_counter()
    await big_bench.poll(name, backfill=3)
    elapsed = time.perf_counter() - started
    print(f"10,001 entries: second poll {elapsed:.2f} s")
    # Its speed is the machine's (tests/test_parse.py checks that parsing is linear).
    assert titles(await big_bench.deliver()) == ["La suite"]


async def test_all_ids_change_at_once_is_a_capped_flood(bench: Bench,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    name = "hostile-flood"
    bench.server.set_feed(bench.path(), make_items(30, prefix="old"))
    await bench.poll(name, max_per_poll=5)
    assert await bench.store.pending_count() == 0

    bench.server.set_feed(bench.path(), make_items(30, prefix="rewritten"))
    caplog.clear()
    await bench.poll(name, max_per_poll=5)
    [warning] = bot_warnings(caplog)
    assert warning == (f"feed {name}: 30 entries appeared at once (did the feed rewrite its "
                       "ids?); posting the newest 5 and marking the rest as seen")
    delivered = await bench.deliver()
    assert [d.entry_id for d in delivered] == [
        f"urn:newsbot-test:rewritten-{i}" for i in range(26, 31)]

    # The rest were marked as seen: one more entry is one more post, no second flood.
    bench.server.set_feed(bench.path(), make_items(31, prefix="rewritten"))
    caplog.clear()
    await bench.poll(name, max_per_poll=5)
    assert bot_warnings(caplog) == []
    assert [d.entry_id for d in await bench.deliver()] == ["urn:newsbot-test:rewritten-31"]


# --- issue 10: hostile links, deep nesting ------------------------------------------------

LINK_FILES = [("unsafe_links_rss.xml", RSS, 10), ("unsafe_links.atom", ATOM, 7),
              ("unsafe_links.json", JSON_FEED, 7)]
# What the hostile links carry: none of it may reach a message, as a link or as text.
LINK_MARKERS = ("xss-", "evil.example", ":alert(", ":fetch(", ":msgbox(", "base64,")


class _Hrefs(HTMLParser):
    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value or "" for name, value in attrs if name in ("href", "src")]


def assert_no_hostile_link(content: dict[str, object]) -> None:
    """The Matrix subset, every href a web address, and no trace of a hostile link."""
    formatted, body = str(content.get("formatted_body", "")), str(content.get("body", ""))
    assert_safe_markup(formatted)
    for href in _Hrefs(formatted).hrefs:
        assert href.startswith(("https://", "http://", "mxc://")), href
    for text in (formatted, body):
        for marker in LINK_MARKERS:
            assert marker not in text.lower(), (marker, text)


@pytest.mark.parametrize(("file", "content_type", "count"), LINK_FILES)
async def test_hostile_links_reach_neither_a_room_nor_the_store(
        bench: Bench, caplog: pytest.LogCaptureFixture, file: str, content_type: str,
        count: int) -> None:
    # javascript:, data:, vbscript: links in every spelling (mixed case, spaces, tabs,
    # newlines, control characters, character references), as the entry's link, its
    # image or in its HTML: the item is posted, without any of them.
    bench.serve("feed", corpus(file), content_type)
    await bench.poll("hostile-links", backfill=20, max_per_poll=20)
    delivered = await bench.deliver()
    assert len(delivered) == count
    for delivery in delivered:
        assert_no_hostile_link(content_of(delivery))
        assert delivery.message is not None and delivery.message.image is None  # none to fetch
    # What archive, latest, welcome and digests read from: no hostile link stored either.
    stored = await bench.store.latest(["hostile-links"], 50)
    assert len(stored) == count
    assert all(e.link is None or e.link.startswith(("https://", "http://")) for e in stored)
    assert sum(1 for e in stored if e.link) == 2


@pytest.mark.parametrize("depth", [3_000, 20_000])
async def test_deeply_nested_entry_is_posted_with_its_neighbour(
        big_bench: Bench, caplog: pytest.LogCaptureFixture, depth: int) -> None:
    # 3,000 nested <div> raised RecursionError: every poll of the feed failed and its
    # other entries were never posted.
    body = corpus("deep_nesting.xml")
    body = body.replace(b"<div>" * 3000, b"<div>" * depth).replace(b"</div>" * 3000,
                                                                 b"</div>" * depth)
    big_bench.serve("feed", body)
    await big_bench.poll("hostile-deep", backfill=10)
    assert bot_warnings(caplog) == []
    delivered = await big_bench.deliver()
    assert sorted(d.entry_id for d in delivered) == ["deep-divs", "deep-neighbour"]
    deep = next(content_of(d) for d in delivered if d.entry_id == "deep-divs")
    assert "En surface." in str(deep["body"])
    assert_safe_markup(str(deep["formatted_body"]))
    assert str(deep["formatted_body"]).count("<div>") <= 100


# --- the same, as a member's client receives it (real Synapse) ----------------------------


async def _reply_to(client: MemberClient, room: str, bot_user: str, event_id: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in await client.messages(room, sender=bot_user):
            relates = event["content"].get("m.relates_to", {})
            if relates.get("m.in_reply_to", {}).get("event_id") == event_id:
                assert_no_hostile_link(event["content"])
                return str(event["content"]["body"])
        await asyncio.sleep(0.2)
    raise AssertionError("no reply")


async def test_hostile_links_reach_no_member(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="hostile links")
    feeds = []
    for name, (file, content_type, _) in zip(("rss", "atom", "json"), LINK_FILES,
                                             strict=True):
        feed_server.set_raw(f"{feed_path}-{name}", corpus(file), content_type=content_type)
        feeds.append({"name": name, "url": feed_server.url(f"{feed_path}-{name}"),
                      "rooms": [room], "backfill": 20, "max_per_poll": 20})
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", feeds=feeds)), bot)
    async with InProcessBot(cfg):
        total = sum(count for _, _, count in LINK_FILES)
        events = await alice.wait_for_messages(room, total, sender=bot.user_id, timeout=60)
        assert len(events) == total
        for event in events:
            assert_no_hostile_link(event["content"])
        # latest lists stored links in plain text: none of them hostile.
        asked = await alice.send_text(room, "!news latest 20")
        reply = await _reply_to(alice, room, bot.user_id, asked)
        assert "https://hostile.example/" in reply, reply      # the safe links are kept
        assert "script:" not in reply.lower() and "data:" not in reply.lower(), reply


async def test_a_hand_built_message_is_cleaned_before_it_leaves(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    # A future code path that writes its own HTML cannot send an unsafe link: the
    # transport sanitises every message (and edit, and topic) it sends.
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="chokepoint")
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": [room]}])), bot)
    store = SqliteStore.open(tmp_path / "state")
    transport = MatrixTransport(cfg.matrix, store, tmp_path / "state")
    await transport.connect()
    try:
        room_id = await transport.join_room(room)
        await alice.set_power_level(room, bot.user_id, 50)
        dirty = {
            "msgtype": "m.notice", "body": "Voir javascript:alert('xss-body')",
            "format": "org.matrix.custom.html",
            "formatted_body": (
                '<p><a href="javascript:fetch(\'https://evil.example/\')">a</a> '
                '<a href="JaVaScRiPt:alert(\'xss-case\')">b</a> '
                '<a href="java&#9;script:alert(\'xss-tab\')">c</a> '
                '<a href="data:text/html;base64,PHNjcmlwdD4=">d</a> '
                '<a href="https://hostile.example/ok">ok</a></p>'),
        }
        await transport.send_message(room_id, dirty, "newsbot.test.chokepoint")
        [sent] = await alice.wait_for_messages(room, 1, sender=bot.user_id)
        edit = {"msgtype": "m.notice", "body": "* edit", "format": "org.matrix.custom.html",
                "formatted_body": '<a href="data:text/html,x">* edit</a>',
                "m.new_content": dict(dirty),
                "m.relates_to": {"rel_type": "m.replace", "event_id": sent["event_id"]}}
        await transport.send_message(room_id, edit, "newsbot.test.chokepoint-edit")
        await transport.set_state(room_id, "m.room.topic",
                                  {"topic": "Dernier : javascript:alert('xss-topic')"})
        received = await alice.wait_for_messages(room, 2, sender=bot.user_id)
    finally:
        await transport.close()
        store.close()
    first, second = received[0]["content"], received[1]["content"]
    for content in (first, second, second["m.new_content"]):
        assert _Hrefs(content["formatted_body"]).hrefs in ([], ["https://hostile.example/ok"])
        assert_safe_markup(content["formatted_body"])
        for text in (content["formatted_body"], content["body"]):
            assert re.search(r"(?i)(?<![\w=])(javascript|data):", text) is None, text
    assert _Hrefs(first["formatted_body"]).hrefs == ["https://hostile.example/ok"]
    topic = next(e["content"]["topic"] for e in await alice.room_state(room)
                 if e["type"] == "m.room.topic")
    assert topic == "Dernier : javascript\u2060:alert('xss-topic')"
