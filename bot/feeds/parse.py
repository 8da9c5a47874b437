"""Pure feed parsing: bytes (+ content type and URL) -> ParsedFeed. No I/O.

RSS 0.9x/1.0/2.0 and Atom go through feedparser; JSON Feed 1.x is read here with
``json``. Whatever the format, entries get a stable ``entry_id`` and come back in
document order; problems that still leave usable entries become warnings, anything
that is not a feed at all raises ParseError with one clear line.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import json
import os
import re
import warnings as _warnings
import xml.sax
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from bot.clean import bounded_title, clean_link
from bot.errors import ParseError
from bot.feeds.hints import FeedHints, read_skips, read_ttl, read_update_period
from bot.model import Entry, ParsedFeed

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["parse_feed", "parse_feed_async"]

_JSON_MIME_TYPES = frozenset({"application/feed+json", "application/json"})
_JSONFEED_VERSION_PREFIX = "https://jsonfeed.org/version/1"
# Only used to word the error once a document is known not to be a feed.
_HTML_MARKER = re.compile(rb"<!doctype\s+html|<html[\s>]", re.IGNORECASE)
_XML_DECLARATION = re.compile(rb"^(\xef\xbb\xbf)?<\?xml")
_AUTHOR_EMAIL_NAME = re.compile(r"^\S+@\S+\s*\((?P<name>[^()]+)\)$")
_AUTHOR_NAME_EMAIL = re.compile(r"^(?P<name>[^<>@]+?)\s*<\S+@\S+>$")

# --- the prolog: the internal DTD subset ---------------------------------------------
# Quoted strings are matched whole so that a "]" or ">" inside an entity value does not
# end the subset early; possessive quantifiers keep every pattern linear on hostile input.
_QUOTED = r"\"[^\"]*+\"|'[^']*+'"
# Anchored at the start: a DOCTYPE only counts in the prolog, never inside an entry.
_PROLOG_SUBSET = re.compile(
    rf"\ufeff?(?:\s|<\?.*?\?>|<!--.*?-->)*+<!DOCTYPE\b(?:[^\[>\"']|{_QUOTED})*+"
    rf"\[(?P<subset>(?:[^\]\"']|{_QUOTED})*+)\]",
    re.DOTALL,
)
# An internal entity with a literal value; SYSTEM/PUBLIC (external) ones do not match:
# feedparser never loads those (external general entities are switched off).
_ENTITY_DECL = re.compile(rf"<!ENTITY\s++(?P<pe>%\s++)?[^\s%\"'>]++\s*+(?P<value>{_QUOTED})\s*+>")
# What an entity may stand for: one character reference (&nbsp; spelled out by feeds
# that want HTML names) or a few characters. Anything else (references to other
# entities, long text, markup, parameter entities) is the stuff of "billion laughs" and
# quadratic blow-ups: expat stops those only after expanding megabytes, and feedparser's
# lenient parser expands plain-text entities without any limit at all.
_HARMLESS_ENTITY_VALUE = re.compile(r"&#(?:[0-9]{1,7}|x[0-9A-Fa-f]{1,6});|[^&%<]{0,16}")
# expat errors that only occur when the input ends in the middle of the document.
_END_OF_INPUT_ERRORS = frozenset({
    "no element found", "unclosed token", "unclosed CDATA section", "partial character",
})
# The root element of RSS 0.9x/2.0, RSS 1.0 (rdf:RDF) and Atom, wherever it starts: junk
# before it (PHP warnings) is a minor problem, not a reason to look for "</br>".
_FEED_ROOT = re.compile(r"<((?:[A-Za-z_][\w.-]*:)?(?:rss|feed|RDF))[\s/>]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _RawEntry:
    """An entry before identity is settled (shared by the feedparser and JSON paths)."""

    explicit_id: str
    title: str
    link: str | None
    summary_html: str
    content_html: str
    author: str | None
    published: datetime | None
    updated: datetime | None
    categories: tuple[str, ...]
    image_url: str | None = None


_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*(?:"([^"]+)"|'([^']+)'|([^\s>]+))""",
                      re.IGNORECASE)
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def _image_link(url: str, base: str) -> str | None:
    """An absolute http(s) image address, or None (data:, javascript:, broken URLs)."""
    try:
        return clean_link(_absolute(url, base))
    except ValueError:
        return None


def _image_from_html(html_text: str, base: str) -> str | None:
    for match in _IMG_SRC.finditer(html_text[:200_000]):
        candidate = _image_link(html.unescape(next(g for g in match.groups() if g)), base)
        if candidate is not None:
            return candidate
    return None


def _feedparser_image(e: Mapping[str, Any], base: str, html_parts: list[str]) -> str | None:
    """The entry's picture: media:content / media:thumbnail, an image enclosure, else the
    first <img> of its HTML. Only a URL here; fetching it is the media step's job."""
    for media in e.get("media_content") or []:
        medium, mime = _str(media.get("medium")), _str(media.get("type"))
        url = _str(media.get("url"))
        if url and (medium == "image" or mime.startswith("image/")
                    or (not medium and not mime and url.lower().endswith(_IMAGE_EXTENSIONS))):
            found = _image_link(url, base)
            if found:
                return found
    for thumb in e.get("media_thumbnail") or []:
        found = _image_link(_str(thumb.get("url")), base)
        if found:
            return found
    for link in e.get("links") or []:
        if _str(link.get("rel")) == "enclosure" and _str(link.get("type")).startswith("image/"):
            found = _image_link(_str(link.get("href")), base)
            if found:
                return found
    for part in html_parts:
        found = _image_from_html(part, base)
        if found:
            return found
    return None


def parse_feed(body: bytes, *, content_type: str | None = None, url: str = "") -> ParsedFeed:
    """Parse a feed document; raise ParseError if it is not one we can read.

    ``content_type`` is the HTTP Content-Type (it may carry the charset) and ``url``
    the address the body came from (base for relative links).
    """
    if not body.strip():
        raise ParseError("empty body")
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in _JSON_MIME_TYPES or body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return _valid_text(_parse_json_feed(body, url))
    return _valid_text(_parse_xml_feed(body, content_type, url))


_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    """``value`` with lone surrogates (a JSON Feed may escape "\\ud800") replaced: they
    are not text, and no database or homeserver accepts them."""
    if not _LONE_SURROGATE_RE.search(value):
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _valid_text(feed: ParsedFeed) -> ParsedFeed:
    def entry(e: Entry) -> Entry:
        return replace(e, entry_id=_text(e.entry_id), title=_text(e.title),
                       link=e.link and _text(e.link), summary_html=_text(e.summary_html),
                       content_html=_text(e.content_html), author=e.author and _text(e.author),
                       categories=tuple(_text(c) for c in e.categories),
                       image_url=e.image_url and _text(e.image_url))
    return replace(feed, title=_text(feed.title), link=feed.link and _text(feed.link),
                   entries=tuple(entry(e) for e in feed.entries))


# A body this large takes feedparser most of a second of pure Python (2 MB: 0.65-1 s). In
# a thread it holds the GIL in 5 ms slices, and every step of the loop (a command's reply
# is dozens) waits for the next slice: such bodies go to a process of their own.
LARGE_BODY = 256 * 1024
# The process (feedparser loaded: some 40 MB) is let go after this long without a large
# body, so a small server that polls one only now and then does not keep it (what stays is
# multiprocessing's resource tracker, some 12 MB).
PROCESS_IDLE_SECONDS = 300.0


class _ParseProcess:
    """One worker process, started on the first large body and stopped when idle."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._idle: asyncio.TimerHandle | None = None

    async def parse(self, body: bytes, content_type: str | None, url: str) -> ParsedFeed:
        from concurrent.futures.process import BrokenProcessPool

        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        pool = self._pool or self._start()
        self._busy += 1
        try:
            return await asyncio.wrap_future(pool.submit(
                parse_feed, body, content_type=content_type, url=url))
        except BrokenProcessPool:
            # The worker died (killed, out of memory): a new one for the next body; this
            # one is parsed as before, in a thread.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            return await asyncio.to_thread(parse_feed, body, content_type=content_type,
                                           url=url)
        finally:
            self._busy -= 1
            if not self._busy and self._pool is not None:
                self._idle = asyncio.get_running_loop().call_later(
                    PROCESS_IDLE_SECONDS, self.stop)

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Spawned, never forked: the bot's threads (SQLite, the planner) may hold locks at
        # that moment. Not a forkserver either: it would stay when the worker is let go.
        self._pool = ProcessPoolExecutor(max_workers=1,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_background)
        return self._pool

    def stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._pool is not None and not self._busy:
            self._pool.shutdown(wait=False)
            self._pool = None


def _background() -> None:
    """The worker yields the CPU to the bot's own process: on a small server, parsing
    must not slow a command's reply, and a parse that waits a little costs nobody."""
    if hasattr(os, "nice"):
        os.nice(10)


_PROCESS = _ParseProcess()


async def parse_feed_async(
    body: bytes, *, content_type: str | None = None, url: str = ""
) -> ParsedFeed:
    """``parse_feed`` off the loop: feedparser is CPU-bound. A large body is parsed in a
    worker process (see LARGE_BODY), a small one in a thread."""
    if len(body) > LARGE_BODY:
        return await _PROCESS.parse(body, content_type, url)
    return await asyncio.to_thread(parse_feed, body, content_type=content_type, url=url)


# --- RSS and Atom (feedparser) ----------------------------------------------------


def _parse_xml_feed(body: bytes, content_type: str | None, url: str) -> ParsedFeed:
    # No Content-Location on purpose: with it feedparser resolves relative guids and
    # Atom ids against the feed's URL, so ids would change whenever the feed moves.
    # Links are resolved against the URL below instead; xml:base still applies.
    headers = {"content-type": content_type} if content_type else {}
    warnings: list[str] = []
    body, ignored_entities = _defuse_entities(body)
    if ignored_entities:
        warnings.append(
            f"ignored {ignored_entities} XML entity declaration(s) that could expand into "
            "huge text (entity amplification); their references are left as they are")
    # Loaded with the first body to read (1.3 MiB): a bot whose polls are 304s never is.
    import feedparser
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # feedparser's own deprecation chatter
            # A stream, never the bytes themselves: given bytes or str, feedparser
            # tries them as a file name (and str as a URL) before as a document.
            result = feedparser.parse(io.BytesIO(body), response_headers=headers)
    except Exception as exc:  # feedparser has no error contract; keep ours
        raise ParseError(f"feed parser failed: {type(exc).__name__}") from exc

    version: str = result.get("version") or ""
    raw_entries = result.get("entries") or []
    problem = _bozo_problem(result, body)

    if not raw_entries:
        if not version:
            if _looks_like_html(body, content_type):
                raise ParseError("not a feed: looks like an HTML page")
            detail = f" ({problem})" if problem else ""
            raise ParseError(f"not a feed: no RSS, Atom or JSON Feed structure found{detail}")
        if problem and isinstance(result.get("bozo_exception"), xml.sax.SAXException):
            # Feed-shaped but broken before any entry (typically truncated).
            raise ParseError(problem)
    if result.get("bozo"):
        # The lenient parser reads a cut-off document as far as it goes, half an entry
        # included (a guid without its title, a title without its link). A truncated
        # download says nothing reliable about the feed: fail, and let the next poll
        # fetch it whole, rather than post or mark as seen what the cut left behind.
        truncated = _truncation(result, body)
        if truncated:
            raise ParseError(truncated)

    if problem:
        warnings.append(f"{problem}; read with the lenient parser")
    if not version:
        warnings.append("unrecognised feed format; entries read on a best-effort basis")

    feed: Mapping[str, Any] = result.get("feed") or {}
    entries = [_entry_from_feedparser(e, url) for e in raw_entries]
    hints = _polling_hints(feed, body, version, warnings)
    return ParsedFeed(
        title=bounded_title(_plain_text(_str(feed.get("title")), _detail_type(feed, "title"))),
        # feedparser falls back to the feed's <id> (often a urn:) when there is no link.
        link=clean_link(_absolute(_str(feed.get("link")), url)),
        entries=_settle_identity(entries, warnings),
        language=_str(feed.get("language")).strip() or None,
        warnings=tuple(warnings),
        hints=hints,
    )


def _polling_hints(feed: Mapping[str, Any], body: bytes, version: str,
                   warnings: list[str]) -> FeedHints:
    """What the document asks about its polling; garbage becomes a warning."""
    problems: list[str] = []
    ttl = read_ttl(_str(feed.get("ttl"))[:100], problems)
    period = read_update_period(_str(feed.get("sy_updateperiod"))[:100],
                                _str(feed.get("sy_updatefrequency"))[:100], problems)
    # feedparser keeps only the last <hour> and <day>: the lists come from the raw
    # document, RSS only (they are RSS 2.0 elements).
    hours, days = (read_skips(body, problems) if version.startswith("rss")
                   else (frozenset(), frozenset()))
    warnings.extend(problems[:10])
    return FeedHints(ttl=ttl, update_period=period, skip_hours=hours, skip_days=days)


def _bozo_problem(result: Mapping[str, Any], body: bytes) -> str | None:
    """The bozo exception as one line, or None if there is none worth reporting."""
    if not result.get("bozo"):
        return None
    exc = result.get("bozo_exception")
    if exc is None:
        return None
    name = type(exc).__name__
    if name == "NonXMLContentType":
        return None  # feeds served as text/plain or text/html are common and harmless
    if name == "CharacterEncodingOverride" and "declared as us-ascii" in str(exc):
        # RFC 3023's default for text/xml without a charset, not a real declaration.
        return None
    if isinstance(exc, xml.sax.SAXParseException):
        line = exc.getLineNumber()
        # feedparser prepends an XML declaration line when the document has none.
        if isinstance(line, int) and not _XML_DECLARATION.match(body.lstrip()):
            line = max(1, line - 1)
        return f"XML error at line {line}: {_one_line(exc.getMessage())}"
    return _one_line(str(exc)) or name


def _wide_codec(body: bytes) -> str | None:
    """The UTF-16/32 codec of a body in one (with or without BOM), else None."""
    head = body[:4]
    if head.startswith((b"\xff\xfe\x00\x00", b"<\x00\x00\x00")):
        return "utf-32-le"
    if head.startswith((b"\x00\x00\xfe\xff", b"\x00\x00\x00<")):
        return "utf-32-be"
    if head.startswith((b"\xff\xfe", b"<\x00")):
        return "utf-16-le"
    if head.startswith((b"\xfe\xff", b"\x00<")):
        return "utf-16-be"
    return None


def _defuse_entities(body: bytes) -> tuple[bytes, int]:
    """Drop the internal DTD's entity declarations that could expand without bound.

    Returns the body (unchanged unless something was dropped) and how many were dropped.
    Works on the text in its own encoding (Latin-1 stands in for every ASCII-compatible
    one, byte for byte), so the rest of the document reaches feedparser untouched.
    """
    codec = _wide_codec(body) or "latin-1"
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        return body, 0
    if "<!ENTITY" not in text:
        return body, 0
    prolog = _PROLOG_SUBSET.match(text)
    if prolog is None:
        return body, 0
    dropped = 0

    def drop(decl: re.Match[str]) -> str:
        nonlocal dropped
        if decl["pe"] or not _HARMLESS_ENTITY_VALUE.fullmatch(decl["value"][1:-1]):
            dropped += 1
            return "\n" * decl[0].count("\n")  # keep line numbers true for XML errors
        return decl[0]

    start, end = prolog.span("subset")
    subset = _ENTITY_DECL.sub(drop, text[start:end])
    if not dropped:
        return body, 0
    return (text[:start] + subset + text[end:]).encode(codec), dropped


def _truncation(result: Mapping[str, Any], body: bytes) -> str | None:
    """Why the document looks cut off before its end, or None if it does not."""
    exc = result.get("bozo_exception")
    encoding = _str(result.get("encoding")) or "utf-8"
    try:
        text = body.decode(encoding, errors="replace")
    except LookupError:
        text = body.decode("latin-1")
    root = _FEED_ROOT.search(text)
    # expat reached the end of the input in the middle of something: cut, for sure.
    cut_short = (isinstance(exc, xml.sax.SAXParseException)
                 and exc.getMessage() in _END_OF_INPUT_ERRORS)
    if not cut_short:
        if root is None:
            return None  # no feed root to judge the end by
        # An earlier error (a bare "&") stops expat before it reaches the end, so also
        # look for the root's closing tag, in any case: sloppy feeds mix <RSS> and </rss>.
        closing = re.compile(rf"</{re.escape(root[1])}\s*>", re.IGNORECASE)
        if closing.search(text, root.end()):
            return None
    last_line = text.rstrip().count("\n") + 1
    where = f"before its closing </{root[1]}>" if root else "in the middle of the XML"
    return f"truncated document: it ends at line {last_line} {where}"


def _looks_like_html(body: bytes, content_type: str | None) -> bool:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime in {"text/html", "application/xhtml+xml"} or bool(_HTML_MARKER.search(body[:1024]))


def _entry_from_feedparser(e: dict[str, Any], url: str) -> _RawEntry:
    contents = [_as_html(_str(c.get("value")), _str(c.get("type"))) for c in e.get("content") or []]
    content_html = max(contents, key=len, default="")
    summary_html = _as_html(_str(e.get("summary")), _detail_type(e, "summary"))
    if summary_html in contents:
        summary_html = ""  # feedparser copies the content into a missing summary
    tags = e.get("tags") or []
    explicit_id = _str(e.get("id")).strip()
    link = _absolute(_str(e.get("link")), url)
    if (e.get("guidislink") and not e.get("links") and link is not None
            and not _is_web_url(explicit_id)):
        # feedparser copies a guid into the link when there is no <link>, as RSS
        # says guids are permalinks by default; "12345" as a link is nonsense. Only
        # then: "guidislink" also stays set when the <link> comes after the <guid>.
        link = None
    return _RawEntry(
        explicit_id=explicit_id,
        title=_plain_text(_str(e.get("title")), _detail_type(e, "title")),
        link=link,
        summary_html=summary_html,
        content_html=content_html,
        author=_author_name(e),
        # dict.get, not FeedParserDict.get: the latter answers "updated" with the
        # published date when there is none, which is not what the feed said.
        published=_from_struct_time(dict.get(e, "published_parsed")),
        updated=_from_struct_time(dict.get(e, "updated_parsed")),
        categories=_unique(_str(t.get("label")) or _str(t.get("term")) for t in tags),
        image_url=_feedparser_image(e, link or url, [content_html, summary_html]),
    )


def _author_name(e: Mapping[str, Any]) -> str | None:
    raw = _str(e.get("author")).strip()
    # RSS 2.0 writes "email (Name)": show the name, not the address. Done here as
    # feedparser's own split assumes 2-4 letter TLDs and mangles ".paris" or ".bzh".
    match = _AUTHOR_EMAIL_NAME.match(raw) or _AUTHOR_NAME_EMAIL.match(raw)
    if match:
        return match["name"].strip() or None
    detail = e.get("author_detail") or {}
    name = _str(detail.get("name")).strip()
    # Atom's structured <name> (feedparser's "author" is then "name (email)").
    if name and raw.startswith(name):
        return name
    return raw or None


def _detail_type(d: Mapping[str, Any], key: str) -> str:
    detail = d.get(f"{key}_detail") or {}
    return _str(detail.get("type"))


def _from_struct_time(value: object) -> datetime | None:
    # feedparser's *_parsed are already normalised to UTC.
    if not isinstance(value, tuple) or len(value) < 6:
        return None
    year, month, day, hour, minute, second = value[:6]
    try:
        # A leap second (60) is valid in struct_time but not in datetime.
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


# --- JSON Feed ----------------------------------------------------------------------


def _parse_json_feed(body: bytes, url: str) -> ParsedFeed:
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string"):
            line = exc.doc.rstrip().count("\n") + 1
            raise ParseError(
                f"truncated document: the JSON ends at line {line} before it is complete"
            ) from exc
        raise ParseError(f"JSON error at line {exc.lineno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ParseError("not a feed: JSON that is not UTF-8, UTF-16 or UTF-32 text") from exc
    except RecursionError as exc:
        raise ParseError("not a feed: JSON nested too deeply") from exc
    if not isinstance(doc, dict):
        raise ParseError("not a feed: JSON document is not an object")
    version = doc.get("version")
    if not isinstance(version, str) or not version.startswith(_JSONFEED_VERSION_PREFIX):
        raise ParseError("not a feed: JSON without a JSON Feed version")
    items = doc.get("items")
    if not isinstance(items, list):
        raise ParseError("not a feed: JSON Feed without an items list")

    warnings: list[str] = []
    base = url or _str(doc.get("feed_url"))
    entries: list[_RawEntry] = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            warnings.append(f"item {index} is not an object; skipped")
            continue
        entries.append(_entry_from_json(item, base))
    home = _str(doc.get("home_page_url")).strip()
    return ParsedFeed(
        title=bounded_title(_plain_text(_str(doc.get("title")), "text/plain")),
        link=clean_link(urljoin(base, home)) if home else None,
        entries=_settle_identity(entries, warnings),
        language=_str(doc.get("language")).strip() or None,
        warnings=tuple(warnings),
    )


def _entry_from_json(item: Mapping[str, Any], base: str) -> _RawEntry:
    raw_id = item.get("id")
    # The spec wants a string, but numbers are common in the wild and just as stable.
    usable = isinstance(raw_id, str | int) and not isinstance(raw_id, bool)
    explicit_id = str(raw_id).strip() if usable else ""
    link = _str(item.get("url")).strip() or _str(item.get("external_url")).strip()
    content_html = _str(item.get("content_html"))
    if not content_html and _str(item.get("content_text")):
        content_html = _as_html(_str(item.get("content_text")), "text/plain")
    authors = item.get("authors")
    if not isinstance(authors, list):
        single = item.get("author")  # JSON Feed 1.0
        authors = [single] if isinstance(single, dict) else []
    names = [_str(a.get("name")).strip() for a in authors if isinstance(a, dict)]
    tags = item.get("tags")
    return _RawEntry(
        explicit_id=explicit_id,
        title=_plain_text(_str(item.get("title")), "text/plain"),
        link=urljoin(base, link) if link else None,
        summary_html=_as_html(_str(item.get("summary")), "text/plain"),
        content_html=content_html,
        author=", ".join(n for n in names if n) or None,
        published=_parse_rfc3339(item.get("date_published")),
        updated=_parse_rfc3339(item.get("date_modified")),
        categories=_unique(_str(t) for t in tags) if isinstance(tags, list) else (),
        image_url=_json_image(item, base, content_html),
    )


def _json_image(item: Mapping[str, Any], base: str, content_html: str) -> str | None:
    for key in ("image", "banner_image"):
        found = _image_link(_str(item.get(key)), base) if _str(item.get(key)) else None
        if found:
            return found
    attachments = item.get("attachments")
    for attachment in attachments if isinstance(attachments, list) else []:
        if isinstance(attachment, dict) and \
                _str(attachment.get("mime_type")).startswith("image/"):
            found = _image_link(_str(attachment.get("url")), base)
            if found:
                return found
    return _image_from_html(content_html, base)


def _parse_rfc3339(value: object) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # RFC 3339 requires an offset; assume UTC
    try:
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# --- Shared -------------------------------------------------------------------------


def _settle_identity(entries: Iterable[_RawEntry], warnings: list[str]) -> tuple[Entry, ...]:
    """Give each entry its id (explicit id, else link, else content hash); drop repeats."""
    seen: set[str] = set()
    settled: list[Entry] = []
    for position, raw in enumerate(entries, start=1):
        if not (raw.title or raw.link or _has_text(raw)):
            # Nothing to show a reader: posting "(untitled)" alone would be noise.
            warnings.append(f"entry {position} has no title, link or text; skipped")
            continue
        # From the link as the feed wrote it: cleaning it must never change an id.
        entry_id = raw.explicit_id or raw.link or _content_hash(raw)
        if entry_id in seen:
            warnings.append(f"entry {position} repeats id {entry_id!r}; kept the first")
            continue
        seen.add(entry_id)
        settled.append(
            Entry(
                entry_id=entry_id,
                # Only http(s) links reach a message, and no title fills one (issue 10).
                title=bounded_title(raw.title),
                link=clean_link(raw.link),
                summary_html=raw.summary_html,
                content_html=raw.content_html,
                author=raw.author,
                published=raw.published,
                updated=raw.updated,
                categories=raw.categories,
                image_url=raw.image_url,
            )
        )
    return tuple(settled)


def _has_text(raw: _RawEntry) -> bool:
    return bool(_plain_text(raw.content_html or raw.summary_html, "text/html"))


def _content_hash(raw: _RawEntry) -> str:
    # Hash the visible text, not the HTML: feedparser rewrites relative URLs against
    # the feed's address, which would change every id when a feed moves.
    text = _plain_text(raw.content_html or raw.summary_html, "text/html")
    digest = hashlib.sha256(json.dumps([raw.title, text]).encode()).hexdigest()
    return f"sha256:{digest}"


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _plain_text(value: str, content_type: str) -> str:
    """Text as people read it: tags stripped, entities decoded, whitespace collapsed."""
    if not value:
        return ""
    if "html" in content_type or not content_type:
        extractor = _TextExtractor()
        extractor.feed(value)
        extractor.close()
        value = "".join(extractor.parts)
    return _one_line(value)


def _as_html(value: str, content_type: str) -> str:
    """HTML for a value that may be plain text (escaped, line breaks kept)."""
    if not value:
        return ""
    if content_type == "text/plain":
        return html.escape(value, quote=False).replace("\n", "<br>\n")
    return value


def _absolute(link: str, base: str) -> str | None:
    link = link.strip()
    if not link:
        return None
    return urljoin(base, link) if base else link


def _is_web_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for value in values:
        value = value.strip()
        if value:
            out.setdefault(value, None)
    return tuple(out)


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


# Every whitespace run but the no-break spaces French typography puts before ":;!?»"
# and inside "« »" (render keeps them too): "Café&nbsp;: ..." must not lose it here.
_COLLAPSIBLE_SPACE = re.compile(r"[^\S\u00a0\u202f\u2007]+")


def _one_line(text: str) -> str:
    return _COLLAPSIBLE_SPACE.sub(" ", text).strip(" ")
