"""Real HTTP feed servers on 127.0.0.1 (aiohttp.web) that record every request."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from types import TracebackType
from typing import Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FeedKind = Literal["rss", "atom", "json"]

CONTENT_TYPES: Mapping[str, str] = {
    "rss": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}

_NS_ATOM = "http://www.w3.org/2005/Atom"
_NS_CONTENT = "http://purl.org/rss/1.0/modules/content/"
_NS_DC = "http://purl.org/dc/elements/1.1/"
ET.register_namespace("atom", _NS_ATOM)
ET.register_namespace("content", _NS_CONTENT)
ET.register_namespace("dc", _NS_DC)

# Used where a format requires a date and the items give none: a constant keeps the
# rendered body, hence the ETag, identical for identical items.
_FALLBACK_DATE = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class FeedItem:
    guid: str
    title: str
    link: str
    summary: str = ""                  # HTML allowed
    published: datetime | None = None  # timezone-aware
    content: str = ""                  # HTML allowed
    author: str | None = None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the feed server saw it, and the status it answered."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]     # case-insensitive: record.headers["if-none-match"]
    status: int
    at: float                          # time.time() when answered

    @property
    def conditional(self) -> bool:
        return "If-None-Match" in self.headers or "If-Modified-Since" in self.headers


@dataclass
class _Document:
    body: bytes
    status: int
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: datetime | None = None


def make_items(n: int, *, prefix: str = "item",
               start: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> list[FeedItem]:
    """``n`` items, newest first, one hour apart from ``start`` (item 1 is the oldest).

    Titles are French with accents and an ampersand, summaries are small HTML fragments:
    both exercise escaping on the way to the room.
    """
    topics = [
        "Réunion du comité de pilotage",
        "Élection du bureau : résultats",
        "Sécurité des données de santé",
        "Journée portes ouvertes à l'hôpital",
        "Assemblée générale extraordinaire",
        "Recherche & développement : où en est-on ?",
        "Lettre d'information de décembre",
        "Hébergement des données : le point",
    ]
    items = []
    for i in range(n, 0, -1):
        topic = topics[(i - 1) % len(topics)]
        items.append(FeedItem(
            guid=f"urn:newsbot-test:{prefix}-{i}",
            title=f"{topic} (n° {i})",
            link=f"http://127.0.0.1/actualites/{prefix}-{i}",
            summary=f"<p>Résumé de l'article <b>{prefix} {i}</b> — à lire.</p>",
            published=start + timedelta(hours=i - 1),
            author="Équipe com",
        ))
    return items


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _latest(items: Sequence[FeedItem]) -> datetime:
    dates = [i.published for i in items if i.published is not None]
    return max(dates) if dates else _FALLBACK_DATE


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def render_rss(items: Sequence[FeedItem], *, title: str, lang: str, link: str,
               self_url: str) -> bytes:
    rss = ET.Element("rss", {"version": "2.0"})
    channel = _sub(rss, "channel")
    _sub(channel, "title", title)
    _sub(channel, "link", link)
    _sub(channel, "description", f"{title} — flux de test")
    _sub(channel, "language", lang)
    _sub(channel, "lastBuildDate", format_datetime(_latest(items).astimezone(UTC), usegmt=True))
    _sub(channel, f"{{{_NS_ATOM}}}link", href=self_url, rel="self", type=CONTENT_TYPES["rss"])
    for item in items:
        node = _sub(channel, "item")
        _sub(node, "title", item.title)
        _sub(node, "link", item.link)
        _sub(node, "guid", item.guid, isPermaLink="false")
        if item.summary:
            _sub(node, "description", item.summary)
        if item.content:
            _sub(node, f"{{{_NS_CONTENT}}}encoded", item.content)
        if item.published is not None:
            _sub(node, "pubDate", format_datetime(item.published.astimezone(UTC), usegmt=True))
        if item.author:
            # RSS <author> must be an e-mail address; names go in dc:creator.
            _sub(node, f"{{{_NS_DC}}}creator", item.author)
    return ET.tostring(rss, encoding="utf-8", xml_declaration=True)


def render_atom(items: Sequence[FeedItem], *, title: str, lang: str, link: str,
                self_url: str) -> bytes:
    # Unqualified names plus a literal xmlns give the usual prefix-free Atom document
    # (ElementTree's default_namespace option rejects unqualified attributes).
    feed = ET.Element("feed", {"xmlns": _NS_ATOM,
                               "{http://www.w3.org/XML/1998/namespace}lang": lang})
    _sub(feed, "title", title)
    _sub(feed, "id", self_url)
    _sub(feed, "updated", _rfc3339(_latest(items)))
    _sub(feed, "link", href=self_url, rel="self")
    _sub(feed, "link", href=link, rel="alternate")
    # Atom requires an author on the feed unless every entry has one.
    _sub(_sub(feed, "author"), "name", title)
    for item in items:
        entry = _sub(feed, "entry")
        _sub(entry, "id", item.guid)
        _sub(entry, "title", item.title)
        _sub(entry, "link", href=item.link, rel="alternate")
        when = item.published or _FALLBACK_DATE
        _sub(entry, "updated", _rfc3339(when))
        if item.published is not None:
            _sub(entry, "published", _rfc3339(item.published))
        if item.author:
            _sub(_sub(entry, "author"), "name", item.author)
        if item.summary:
            _sub(entry, "summary", item.summary, type="html")
        if item.content:
            _sub(entry, "content", item.content, type="html")
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


def render_json(items: Sequence[FeedItem], *, title: str, lang: str, link: str,
                self_url: str) -> bytes:
    entries = []
    for item in items:
        entry: dict[str, object] = {"id": item.guid, "url": item.link, "title": item.title}
        # JSON Feed requires content_html or content_text on every item.
        entry["content_html"] = item.content or item.summary
        if item.summary:
            entry["summary"] = item.summary
        if item.published is not None:
            entry["date_published"] = _rfc3339(item.published)
        if item.author:
            entry["authors"] = [{"name": item.author}]
        entries.append(entry)
    doc = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": title,
        "home_page_url": link,
        "feed_url": self_url,
        "language": lang,
        "items": entries,
    }
    return json.dumps(doc, ensure_ascii=False, indent=2).encode()


_RENDERERS: Mapping[str, Callable[..., bytes]] = {
    "rss": render_rss, "atom": render_atom, "json": render_json,
}


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    # If-None-Match uses weak comparison: W/ prefixes are ignored.
    candidates = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in candidates


class FeedServer:
    """An aiohttp.web server on 127.0.0.1 (random port) serving feeds by path.

    Feed and raw 200 routes carry a strong ETag (hash of the body) and a Last-Modified
    that moves whenever the body changes, answer 304 to matching conditional requests,
    and gzip the body when the client accepts it (``gzip=False`` to turn that off).
    Unknown paths answer 404. Every request is recorded, see ``requests()``.
    """

    def __init__(self, *, gzip: bool = True) -> None:
        self.gzip = gzip
        self._docs: dict[str, _Document] = {}
        self._handlers: dict[str, Handler] = {}
        self._records: dict[str, list[RequestRecord]] = {}
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(runner.addresses[0][1])  # the port the OS picked
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FeedServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FeedServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + _norm(path)

    # ---- content ------------------------------------------------------------------------

    def set_feed(self, path: str, items: Sequence[FeedItem], *, kind: FeedKind = "rss",
                 title: str = "Actualités", lang: str = "fr") -> bytes:
        """Serve ``items`` (in this order) as an RSS 2.0, Atom 1.0 or JSON Feed 1.1
        document at ``path``; returns the body served (before any gzip)."""
        path = _norm(path)
        body = _RENDERERS[kind](items, title=title, lang=lang, link=self.url("/"),
                                self_url=self.url(path))
        self._put(path, _Document(body=body, status=200, content_type=CONTENT_TYPES[kind]))
        return body

    def set_raw(self, path: str, body: bytes, *, status: int = 200,
                content_type: str = "application/rss+xml",
                headers: Mapping[str, str] | None = None) -> None:
        """Serve exactly ``body``. Only 200 answers get ETag/Last-Modified and 304s."""
        path = _norm(path)
        self._put(path, _Document(body=body, status=status, content_type=content_type,
                                  headers=dict(headers or {})))

    def set_handler(self, path: str, handler: Handler) -> None:
        """Answer ``path`` with ``handler(request)``: slow, redirecting, 429, ... The
        status it returns (or raises as web.HTTPException) is recorded."""
        path = _norm(path)
        self._docs.pop(path, None)
        self._handlers[path] = handler

    def remove(self, path: str) -> None:
        """Forget ``path``: it answers 404 from now on (a feed that disappeared)."""
        path = _norm(path)
        self._docs.pop(path, None)
        self._handlers.pop(path, None)

    def etag(self, path: str) -> str | None:
        doc = self._docs.get(_norm(path))
        return doc.etag if doc else None

    def requests(self, path: str) -> list[RequestRecord]:
        return list(self._records.get(_norm(path), []))

    def clear_requests(self, path: str | None = None) -> None:
        if path is None:
            self._records.clear()
        else:
            self._records.pop(_norm(path), None)

    def _put(self, path: str, doc: _Document) -> None:
        previous = self._docs.get(path)
        self._handlers.pop(path, None)
        if doc.status == 200:
            doc.etag = '"' + hashlib.sha256(doc.body).hexdigest()[:32] + '"'
            if previous is not None and previous.etag == doc.etag:
                doc.last_modified = previous.last_modified
            else:
                # HTTP dates have one-second resolution: step at least one second past
                # the previous value so a quick change never looks "not modified".
                now = datetime.now(UTC).replace(microsecond=0)
                if previous is not None and previous.last_modified is not None:
                    now = max(now, previous.last_modified + timedelta(seconds=1))
                doc.last_modified = now
        self._docs[path] = doc

    # ---- serving ------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        status = 500
        try:
            handler = self._handlers.get(path)
            if handler is not None:
                response = await handler(request)
            else:
                response = self._serve_document(request, self._docs.get(path))
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._records.setdefault(path, []).append(RequestRecord(
                method=request.method, path=path,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                status=status, at=time.time()))

    def _serve_document(self, request: web.Request, doc: _Document | None) -> web.Response:
        if doc is None:
            return web.Response(status=404, text="not found")
        headers = CIMultiDict(doc.headers)
        if doc.etag is not None and doc.last_modified is not None:
            headers["ETag"] = doc.etag
            headers["Last-Modified"] = format_datetime(doc.last_modified, usegmt=True)
            if _not_modified(request, doc.etag, doc.last_modified):
                return web.Response(status=304, headers=headers)
        body = doc.body
        if (self.gzip and "Content-Encoding" not in headers
                and "gzip" in request.headers.get("Accept-Encoding", "").lower()):
            # mtime=0 keeps the compressed bytes stable for a given body.
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        headers["Content-Type"] = doc.content_type
        return web.Response(status=doc.status, body=body, headers=headers)


def _not_modified(request: web.Request, etag: str, last_modified: datetime) -> bool:
    # RFC 9110: If-None-Match, when present, decides alone.
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        return _etag_matches(inm, etag)
    ims = request.headers.get("If-Modified-Since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return last_modified <= since
    return False


def _norm(path: str) -> str:
    return path if path.startswith("/") else "/" + path
