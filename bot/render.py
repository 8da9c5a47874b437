"""Pure rendering: a feed Entry becomes a Matrix Message (plain body + sanitised HTML).

The pipeline, the same for the poller and ``newsbot preview``:
1. ``entry_fields``: the entry's values for a template, text bounded, HTML sanitised;
2. the feed's template (``bot.templates``: Jinja2, sandboxed, autoescaped) writes HTML;
3. that HTML is sanitised again (a template cannot smuggle anything in) and the plain
   body is derived from it (``message_text``), never written separately;
4. a message over the feed's byte budget is cut at a block boundary and ends with a
   "read more" link (``fit_message``).

Feed HTML is untrusted. Everything that reaches a room goes through ``sanitize_html``
(an allow-list taken from the Matrix spec's suggestion for ``formatted_body``); nothing
here performs I/O.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import urlsplit

import nh3
from jinja2 import TemplateRuntimeError, pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from .i18n import LANGUAGES, MESSAGES, text
from .model import Entry, Message
from .templates import (
    BUILTIN_TEMPLATES,
    CompiledTemplate,
    TemplateEngine,
    TemplateProblem,
    describe_failure,
)

__all__ = [
    "CONTENT_MODES", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_SUMMARY_LENGTH", "FIELDS",
    "MAX_MESSAGE_BYTES", "MIN_MESSAGE_BYTES", "check_template", "compile_template",
    "entry_fields", "fit_message", "format_date", "html_to_text", "message_size",
    "message_text", "render_entry", "sanitize_html",
]

log = logging.getLogger(__name__)

# The Matrix client-server spec's suggested subset for m.room.message formatted_body.
ALLOWED_TAGS: frozenset[str] = frozenset({
    "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
    "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "strike", "code", "hr", "br",
    "div", "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span",
    "details", "summary",
})
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "font": {"data-mx-bg-color", "data-mx-color", "color"},
    "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler"},
    "a": {"href", "name", "target"},
    "ol": {"start"},
    "code": {"class"},
}
_URL_SCHEMES = {"http", "https", "mailto", "mxc"}
# Dropped together with their content: their text is code, styling or a foreign
# document, never something a reader should see as prose.
_CLEAN_CONTENT_TAGS = {
    "script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math",
    "title", "textarea", "select", "frameset", "noembed", "noframes",
}

_COLOR_RE = re.compile(r"#[0-9a-fA-F]{6}")
_CODE_CLASS_RE = re.compile(r"language-[A-Za-z0-9_+#.-]+")


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    # Colours are spec'd as #RRGGBB; anything else is at best ignored by clients.
    if attr in ("data-mx-color", "data-mx-bg-color", "color"):
        return value if _COLOR_RE.fullmatch(value.strip()) else None
    if tag == "code" and attr == "class":
        kept = [c for c in value.split() if _CODE_CLASS_RE.fullmatch(c)]
        return " ".join(kept) or None
    if tag == "ol" and attr == "start":
        return value.strip() if value.strip().isdigit() else None
    return value


def _is_web_url(url: str | None) -> bool:
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


# Keyed by base URL, which is mostly each entry's own link: a small cache is enough
# (the no-base cleaner is the one reused) and keeps memory flat over months.
@lru_cache(maxsize=16)
def _cleaner(base_url: str | None) -> nh3.Cleaner:
    relative: Literal["deny"] | tuple[Literal["rewrite_with_base"], str] = "deny"
    if base_url is not None and _is_web_url(base_url):
        relative = ("rewrite_with_base", base_url)
    try:
        return nh3.Cleaner(
            tags=set(ALLOWED_TAGS),
            clean_content_tags=_CLEAN_CONTENT_TAGS,
            attributes=_ALLOWED_ATTRIBUTES,
            attribute_filter=_filter_attribute,
            url_schemes=_URL_SCHEMES,
            link_rel=None,
            url_relative=relative,
        )
    except ValueError:
        # A base URL that only looks valid to urlsplit: drop relative links instead.
        return _cleaner(None)


def sanitize_html(html: str, *, base_url: str | None = None) -> str:
    """Keep only the Matrix-suggested tags/attributes and safe links.

    Relative links are resolved against ``base_url`` (an http(s) URL), else removed.
    """
    return _cleaner(base_url).clean(html).strip()


# --- HTML -> plain text ---------------------------------------------------------------

_VOID_TAGS = {"br", "hr", "img", "wbr", "input", "meta", "link", "area", "base", "col",
              "embed", "param", "source", "track"}
_BLOCK_TAGS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul",
               "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "caption", "hr",
               "details", "summary"}
# Only ASCII whitespace collapses: U+00A0 / U+202F are typographic in French
# ("10 %", « guillemets », "Attention !") and must survive.
_WS_RE = re.compile(r"[ \t\n\r\f]+")
_SPACES_RE = re.compile(r"[ \t\r\f]+")
_ASCII_WS = " \t\n\r\f"


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    children: list[_Node | str] = field(default_factory=list)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID_TAGS:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(_Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        # The input is sanitiser output, hence well formed; ignore stray closers.
        for i in range(len(self._stack) - 1, 0, -1):
            if self._stack[i].tag == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


class _Flow:
    """Collects finished blocks and the inline run of the block being written."""

    def __init__(self, links: _LinkPlan | None, *, preformatted: bool = False) -> None:
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.links = links
        self.preformatted = preformatted

    def flush(self) -> None:
        text = "".join(self.inline)
        self.inline = []
        if not self.preformatted:
            text = _SPACES_RE.sub(" ", text)
            text = "\n".join(line.strip(_ASCII_WS) for line in text.split("\n"))
        text = text.strip("\n") if self.preformatted else text.strip(_ASCII_WS)
        if text.strip():  # drop spacer paragraphs such as <p>&nbsp;</p>
            self.blocks.append(text)

    def result(self, sep: str = "\n\n") -> str:
        self.flush()
        return sep.join(self.blocks)


def _same_target(text: str, href: str) -> bool:
    def norm(s: str) -> str:
        s = s.strip().lower()
        for prefix in ("mailto:", "https://", "http://"):
            s = s.removeprefix(prefix)
        s = s.removeprefix("www.")
        return s.rstrip("/")
    return norm(text) == norm(href)


def _walk_children(node: _Node, flow: _Flow) -> None:
    for child in node.children:
        _walk(child, flow)


def _sub_text(node: _Node, links: _LinkPlan | None, *, preformatted: bool = False,
              sep: str = "\n\n") -> str:
    sub = _Flow(links, preformatted=preformatted)
    _walk_children(node, sub)
    return sub.result(sep)


def _indent(text: str, first: str, rest: str, empty: str = "") -> str:
    lines = text.split("\n")
    return "\n".join([first + lines[0]] + [(rest + ln) if ln else empty for ln in lines[1:]])


def _walk(node: _Node | str, flow: _Flow) -> None:
    if isinstance(node, str):
        flow.inline.append(node if flow.preformatted else _WS_RE.sub(" ", node))
        return
    tag = node.tag
    if tag == "br":
        flow.inline.append("\n")
    elif tag == "a":
        href = node.attrs.get("href", "")
        plan = flow.links
        if plan is not None and href:
            if id(node) not in plan.last:
                _walk_children(node, flow)  # a later link writes this address
                return
            if href == plan.page and id(node) == plan.closing:
                flow.inline.append(href)    # "Read more" on its own line: the address
                return
        start_blocks, start = len(flow.blocks), len(flow.inline)
        _walk_children(node, flow)
        text = "".join(flow.inline[start:]) if len(flow.blocks) == start_blocks else ""
        if href and not _same_target(text, href):
            flow.inline.append(f" ({href})" if text.strip() else href)
    elif tag not in _BLOCK_TAGS:
        _walk_children(node, flow)  # inline formatting, unknown tags: keep the text
    else:
        flow.flush()
        flow.blocks.extend(b for b in [_block_text(node, flow.links)] if b)


def _block_text(node: _Node, links: _LinkPlan | None) -> str:
    tag = node.tag
    if tag == "hr":
        return "———"
    if tag == "pre":
        return _sub_text(node, links, preformatted=True)
    if tag == "blockquote":
        return _indent(_sub_text(node, links), "> ", "> ", ">")
    if tag in ("ul", "ol"):
        items: list[str] = []
        number = int(node.attrs.get("start", "1") or 1) if tag == "ol" else 0
        for child in node.children:
            if isinstance(child, str):
                if child.strip(_ASCII_WS):
                    items.append("• " + _WS_RE.sub(" ", child).strip(_ASCII_WS))
                continue
            # Blocks inside an item (nested list, paragraphs) stay visually attached.
            text = (_sub_text(child, links, sep="\n") if child.tag == "li"
                    else _block_text(child, links))
            if not text:
                continue
            bullet = f"{number}. " if tag == "ol" else "• "
            number += 1
            items.append(_indent(text, bullet, " " * len(bullet)))
        return "\n".join(items)
    if tag == "li":
        text = _sub_text(node, links, sep="\n")
        return _indent(text, "• ", "  ") if text else ""
    if tag in ("table", "thead", "tbody"):
        rows = [_block_text(c, links) if isinstance(c, _Node) else "" for c in node.children]
        return "\n".join(r for r in rows if r)
    if tag == "tr":
        cells = [_sub_text(c, links).replace("\n", " ")
                 for c in node.children if isinstance(c, _Node)]
        return " | ".join(c for c in cells if c)
    return _sub_text(node, links)


def _parse(html: str) -> _Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def html_to_text(html: str) -> str:
    """Readable plain text: paragraphs, bullets, quotes, links as "text (url)"."""
    # Sanitising first drops script/style content and unsafe links, and gives the
    # tree builder well-formed markup (implicitly closed <p>, <li>...).
    flow = _Flow(None)
    _walk_children(_parse(sanitize_html(html)), flow)
    return flow.result()


@dataclass
class _LinkPlan:
    """How a message's links read in its plain body: each address written once."""

    page: str | None                                    # the entry's own address
    last: set[int] = field(default_factory=set)         # id() of the last <a> per address
    closing: int | None = None      # id() of the <a> alone in the final block, after others


def _plan_links(root: _Node, page: str | None) -> _LinkPlan:
    plan = _LinkPlan(page)
    last: dict[str, _Node] = {}
    # Per block: its links, and all of its own text (nested blocks excluded).
    blocks: list[tuple[list[_Node], list[str]]] = []

    def visit(node: _Node, block: tuple[list[_Node], list[str]]) -> None:
        for child in node.children:
            if isinstance(child, str):
                block[1].append(child)
            elif child.tag in _BLOCK_TAGS:
                inner: tuple[list[_Node], list[str]] = ([], [])
                blocks.append(inner)
                visit(child, inner)
            else:
                if child.tag == "a" and child.attrs.get("href"):
                    last[child.attrs["href"]] = child
                    block[0].append(child)
                visit(child, block)

    top: tuple[list[_Node], list[str]] = ([], [])
    blocks.append(top)
    visit(root, top)
    plan.last = {id(node) for node in last.values()}
    written = [(links, text) for links, texts in blocks
               if (text := "".join(texts).strip(_ASCII_WS))]
    if len(written) >= 2:  # a message that is only a link keeps its words
        links, own = written[-1]
        if len(links) == 1 and own == _text_of(links[0]).strip(_ASCII_WS):
            plan.closing = id(links[0])
    return plan


def _text_of(node: _Node | str) -> str:
    if isinstance(node, str):
        return node
    return "".join(_text_of(child) for child in node.children)


def message_text(html: str, *, page: str | None = None) -> str:
    """The plain body of a message, derived from its (sanitised) HTML.

    As ``html_to_text``, and each address is written once: a link followed later by
    another to the same address shows only its text; a link to the entry's own page
    (``page``) standing alone in the message's last paragraph, after other text (the
    "read more" line), is written as the bare address. So "<title link>, summary,
    <read more link>" reads "title, summary, address", as in a plain-text e-mail.
    """
    root = _parse(sanitize_html(html))
    flow = _Flow(_plan_links(root, page))
    _walk_children(root, flow)
    return flow.result()


# --- dates ----------------------------------------------------------------------------

_MONTHS = {
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre"),
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
}


def _lang(language: str | None) -> str:
    # "fr", "fr-FR", "fr_CA" all read French; anything unknown falls back to English.
    return "fr" if (language or "").lower()[:2] == "fr" else "en"


def format_date(dt: datetime, language: str) -> str:
    """'22 décembre 2025' / '22 December 2025'; French writes the first day '1er'."""
    lang = _lang(language)
    day = "1er" if lang == "fr" and dt.day == 1 else str(dt.day)
    return f"{day} {_MONTHS[lang][dt.month - 1]} {dt.year}"


# --- text and link helpers -------------------------------------------------------------

_HAS_TAG_RE = re.compile(r"<[A-Za-z!/]")
_TRAILING_PUNCT = " \t\n\r\f,;:.-–—(«…\u00a0\u202f"

# Homeservers refuse events over 64 KiB (M_TOO_LARGE), and an item that can never be
# sent would hold up its rooms' queues, since deliveries go out in order. Each field is
# bounded so that a message usually fits, and the finished message is measured against
# the feed's budget (max_message_bytes) and cut at a block boundary when over it.
_MAX_TITLE_CHARS = 250
_MAX_FEED_TITLE_CHARS = 100
_MAX_AUTHOR_CHARS = 200
_MAX_CATEGORIES = 30
_MAX_CATEGORY_CHARS = 100
_MAX_LINK_CHARS = 1500          # used three times: title link, "read more", plain body
_MAX_SUMMARY_HTML_CHARS = 2000  # richer than this (long attributes...): plain text instead

DEFAULT_SUMMARY_LENGTH = 400
# Counted as the JSON-encoded body + formatted_body (ASCII-escaped, as client libraries
# send them): 40 KiB leaves ample room under 64 KiB for the rest of the event (msgtype,
# mentions, delivery key, and what the homeserver adds: ids, hashes, signatures).
# In an encrypted room the same content grows by about a third (base64): 44 KiB at most
# keeps even an encrypted message under the limit.
DEFAULT_MAX_MESSAGE_BYTES = 40 * 1024
MIN_MESSAGE_BYTES = 4 * 1024
MAX_MESSAGE_BYTES = 44 * 1024
CONTENT_MODES = ("summary", "full")


# Escape exactly as the sanitiser serialises (html5ever), so that our markup is a fixed
# point of sanitize_html: one canonical form, easy to test and compare.
def _esc(text: str) -> str:
    return html.escape(text, quote=False).replace("\u00a0", "&nbsp;")


def _esc_attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("\u00a0", "&nbsp;")


def _plain_to_html(source: str) -> str:
    # Some feeds put plain text with blank lines in their "HTML" summary; keep its
    # paragraphs instead of letting HTML collapse them into one line.
    paragraphs = [p.strip() for p in re.split(r"\n[ \t\r\f]*\n", source) if p.strip()]
    return "".join(f"<p>{p.replace(chr(10), '<br>')}</p>" for p in paragraphs)


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text`` ending on a word boundary, plus '…'."""
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\n"))
    # A single enormous "word" (a URL) is cut hard rather than dropped entirely.
    if space > limit // 2 and text[limit:limit + 1] not in ("", " ", "\n"):
        head = head[:space]
    return head.rstrip(_TRAILING_PUNCT) + "…"


def _bounded(text: str, limit: int) -> str:
    return _cut(text, limit) if len(text) > limit else text


_URL_UNSAFE_RE = re.compile(r'[\x00-\x20\x7f"<>\\^`{|}]')


def _clean_link(link: str | None) -> str | None:
    """The entry link if it is a web URL, with characters no URL may hold %-encoded."""
    link = (link or "").strip()
    if not _is_web_url(link):
        return None  # a javascript:, relative or empty link is no link at all
    # Non-ASCII stays readable (French paths); quotes, brackets and spaces never appear
    # raw in a URL and would only confuse linkifiers and attribute quoting.
    link = _URL_UNSAFE_RE.sub(lambda m: f"%{ord(m.group(0)):02X}", link)
    # Longer than any address meant for people: no link rather than an oversized event.
    return link if len(link) <= _MAX_LINK_CHARS else None


def _one_line(text: str) -> str:
    return _WS_RE.sub(" ", text).strip(_ASCII_WS)


# --- template fields ------------------------------------------------------------------

# What a template can use (documented in the README; check-config names them too).
FIELDS: dict[str, str] = {
    "title": "the entry's title, one line of text ('(sans titre)' / '(untitled)' if none)",
    "link": "the entry's web address (http/https), or none",
    "summary": "the summary as sanitised HTML, cut at a word boundary with '…' past "
               "summary_length characters (empty if it only repeats the title)",
    "content": "the whole entry (its content, else its summary) as Matrix-safe HTML: "
               "headings, lists, quotes, tables, links and code kept, relative links "
               "resolved against the entry's address",
    "author": "the author's name, or none",
    "published": "when the entry was published (a UTC datetime), or none",
    "updated": "when it was last updated (a UTC datetime), or none",
    "date": "the publication date (else the update date) in the room's language, "
            "e.g. '22 décembre 2025', or ''",
    "categories": "the entry's categories / tags (a list of text)",
    "feed_title": "the feed's title, or none",
    "image": "the entry's image (not available yet: always none)",
    "language": "the room's language: 'fr' or 'en'",
    "full": "true when the feed says content: full",
}


_TRUNCATED_TAIL_RE = re.compile(r"<[^>]*$")  # a tag cut in the middle
_BLOCK_TAG_RE = re.compile(r"<(?:p|div|h[1-6]|ul|ol|blockquote|pre|table|hr|details)\b",
                           re.IGNORECASE)
_BREAKS_RE = re.compile(r"(?:<br\s*/?>\s*){2,}", re.IGNORECASE)
_LEADING_HEADING_RE = re.compile(r"((?:\s*<div>)*)\s*<(h[1-6])>(.*?)</\2>\s*", re.DOTALL)


def _entry_html(source: str, title: str, link: str | None) -> str:
    """An entry's HTML field as sanitised blocks."""
    if source.strip() and not _HAS_TAG_RE.search(source):
        source = _plain_to_html(source)
    elif source.strip() and not _BLOCK_TAG_RE.search(source):
        # Text with only inline markup and line breaks (a toot, a JSON Feed's
        # content_text): its blank lines are paragraphs.
        source = "".join(f"<p>{part.strip()}</p>" for part in _BREAKS_RE.split(source)
                         if part.strip())
    clean = sanitize_html(source, base_url=link)
    # Newsletters often open with their own title as a heading: it is already shown.
    heading = _LEADING_HEADING_RE.match(clean)
    if heading and _one_line(html_to_text(heading.group(3))).casefold() == title.casefold():
        clean = heading.group(1) + clean[heading.end():]
    return clean


def _summary_markup(entry: Entry, title: str, link: str | None, limit: int) -> Markup:
    source = entry.summary_html if entry.summary_html.strip() else entry.content_html
    summary_html = _entry_html(source, title, link)
    # Only the beginning of a long text can make the summary: do not read it all.
    reading = max(8 * limit, 10_000)
    partial = len(summary_html) > reading
    if partial:
        summary_html = _TRUNCATED_TAIL_RE.sub("", summary_html[:reading])
    summary_text = html_to_text(summary_html)
    if (not summary_text or limit <= 0
            or _one_line(summary_text).casefold() == title.casefold()):
        return Markup("")
    if partial or len(summary_text) > limit or len(summary_html) > _MAX_SUMMARY_HTML_CHARS:
        if len(summary_text) > limit:
            summary_text = _cut(summary_text, limit)
        elif partial:
            summary_text = summary_text.rstrip(_TRAILING_PUNCT) + "…"
        summary_html = f"<p>{_esc(summary_text).replace(chr(10), '<br>')}</p>"
    return Markup(summary_html)


def _content_markup(entry: Entry, title: str, link: str | None) -> Markup:
    source = entry.content_html if entry.content_html.strip() else entry.summary_html
    content_html = _entry_html(source, title, link)
    # Only a short content can be the title again; a long one is never measured.
    if (len(content_html) <= 4 * _MAX_TITLE_CHARS
            and _one_line(html_to_text(content_html)).casefold() in ("", title.casefold())):
        return Markup("")
    return Markup(content_html)


def entry_fields(entry: Entry, *, feed_title: str | None = None, language: str = "en",
                 summary_chars: int = DEFAULT_SUMMARY_LENGTH, full: bool = False,
                 only: frozenset[str] | None = None) -> dict[str, object]:
    """The values a template sees for ``entry``; text is bounded, HTML is sanitised.

    ``only``: the fields the template reads; summary and content (the costly ones)
    are computed only when asked for.
    """
    lang = _lang(language)
    title = _bounded(_one_line(entry.title), _MAX_TITLE_CHARS) or text("untitled", lang)
    link = _clean_link(entry.link)
    when = entry.published or entry.updated
    author = _bounded(_one_line(entry.author or ""), _MAX_AUTHOR_CHARS)
    feed = _bounded(_one_line(feed_title or ""), _MAX_FEED_TITLE_CHARS)
    categories = [c for c in (_bounded(_one_line(c), _MAX_CATEGORY_CHARS)
                              for c in entry.categories[:_MAX_CATEGORIES]) if c]
    fields: dict[str, object] = {
        "title": title, "link": link, "author": author or None,
        "published": entry.published, "updated": entry.updated,
        "date": format_date(when, lang) if when else "",
        "categories": tuple(categories), "feed_title": feed or None,
        "image": None,  # seam: the images work will put the uploaded image here
        "language": lang, "full": full,
    }
    if only is None or "summary" in only:
        fields["summary"] = _summary_markup(entry, title, link, summary_chars)
    if only is None or "content" in only:
        fields["content"] = _content_markup(entry, title, link)
    return fields


# --- the template engine: filters and globals -----------------------------------------

@pass_context
def _date_filter(context: Context, value: datetime | None) -> str:
    """``{{ published | date }}``: '22 décembre 2025' in the room's language."""
    if value is None:
        return ""
    if not isinstance(value, datetime):
        raise TemplateRuntimeError(f"the date filter needs a date, not {value!r:.60}")
    return format_date(value, str(context.get("language", "en")))


def _cut_filter(value: object, length: int = DEFAULT_SUMMARY_LENGTH) -> str:
    """``{{ content | cut(300) }}``: the text, cut at a word boundary with '…'."""
    if value is None:
        return ""
    source = html_to_text(str(value)) if isinstance(value, Markup) else str(value)
    return _bounded(source, max(int(length), 1))


@pass_context
def _translate(context: Context, key: str, **values: object) -> str:
    """``{{ t("read_more") }}``: one of the bot's sentences in the room's language."""
    if key not in MESSAGES:
        raise TemplateRuntimeError(f"t() knows no sentence named {key!r}")
    try:
        return text(key, str(context.get("language", "en")), **values)
    except (KeyError, IndexError) as exc:
        raise TemplateRuntimeError(f"t({key!r}) needs a value for {exc}") from None


_ENGINE = TemplateEngine(fields=FIELDS, filters={"date": _date_filter, "cut": _cut_filter},
                         globals={"t": _translate})


@lru_cache(maxsize=64)
def compile_template(template: str) -> CompiledTemplate:
    """A built-in template by name (default, compact, full), or Jinja2 source.

    Raises TemplateProblem (with the template line) for a template that cannot work.
    """
    if template in BUILTIN_TEMPLATES:
        return _ENGINE.compile(BUILTIN_TEMPLATES[template], name=template)
    return _ENGINE.compile(template)


_SAMPLES: tuple[tuple[Entry, str], ...] = (
    (Entry(entry_id="sample", title="Goupile : nouvelle version",
           link="https://example.org/2025/12/22/goupile",
           summary_html='<p>InterHop publie <a href="/goupile">Goupile</a> 3.0.</p>',
           content_html="<h2>Nouveautés</h2><ul><li>un</li><li>deux</li></ul>",
           author="Alice", published=datetime(2025, 12, 22, 9, 30, tzinfo=UTC),
           updated=datetime(2025, 12, 23, tzinfo=UTC), categories=("santé", "logiciel")),
     "a complete entry"),
    (Entry(entry_id="bare", title="", link=None, summary_html="", content_html=""),
     "an entry with no title, link, date, author or text"),
)


def check_template(template: str) -> TemplateProblem | None:
    """Why ``template`` cannot be used, or None: a syntax error, an unknown field or
    filter, or a failure while rendering sample entries (complete and bare ones, in
    both languages, with either content setting)."""
    try:
        compiled = compile_template(template)
    except TemplateProblem as invalid:
        return invalid
    for entry, what in _SAMPLES:
        for language in LANGUAGES:
            for full in (False, True):
                fields = entry_fields(entry, feed_title="Flux", language=language, full=full)
                try:
                    output, _ = compiled.render(fields, max_chars=_max_output(MAX_MESSAGE_BYTES))
                except Exception as exc:  # any failure of the template is its problem
                    problem = describe_failure(exc)
                    return TemplateProblem(f"{problem.detail} (when rendering {what})",
                                           problem.line)
                if entry.link and not message_text(output, page=entry.link):
                    return TemplateProblem(f"the message is empty for {what}")
    return None


# --- messages -------------------------------------------------------------------------

def message_size(message: Message) -> int:
    """Bytes that body + formatted_body take in the event's JSON (ASCII-escaped)."""
    return len(json.dumps(message.body)) + len(json.dumps(message.html))


def _max_output(budget: int) -> int:
    # A template's output past this is beyond any budget: stop writing it.
    return 4 * budget


def render_entry(entry: Entry, *, feed_title: str | None = None, language: str = "en",
                 summary_chars: int = DEFAULT_SUMMARY_LENGTH, template: str = "default",
                 content: str = "summary", max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 feed: str | None = None) -> Message:
    """The message announcing ``entry``, as the feed's template writes it.

    The template's HTML is sanitised, the plain body derived from it, and the message
    cut to ``max_bytes`` if over (see ``message_size``). ``summary_chars`` caps the
    summary's plain-text length (0: no summary); ``content="full"`` shows the whole
    entry in the default template. A template that fails on this entry does not lose
    it: the default template is used and a warning names the feed (``feed``).
    """
    lang = _lang(language)
    try:
        compiled = compile_template(template)
        fields = entry_fields(entry, feed_title=feed_title, language=lang,
                              summary_chars=summary_chars, full=content == "full",
                              only=compiled.fields)
        output, stopped = compiled.render(fields, max_chars=_max_output(max_bytes))
        link = fields["link"]
        assert link is None or isinstance(link, str)
        message = fit_message(output, page=link, language=lang, max_bytes=max_bytes,
                              cut=stopped)
        if not message.body.strip():
            raise TemplateProblem("the template gave an empty message")
        return message
    except Exception as exc:  # a broken template must not lose the item
        if template == "default":
            raise
        problem = describe_failure(exc)
        where = f"line {problem.line}: " if problem.line else ""
        log.warning("feed %s: its template failed on entry %s (%s%s); posted with the "
                    "default template instead", feed or "?", entry.entry_id, where,
                    problem.detail)
        return render_entry(entry, feed_title=feed_title, language=lang,
                            summary_chars=summary_chars, content=content,
                            max_bytes=max_bytes, feed=feed)


def fit_message(markup: str, *, page: str | None, language: str, max_bytes: int,
                cut: bool = False) -> Message:
    """A message from a template's HTML: sanitised, its plain body derived, and within
    ``max_bytes`` (cut at a block boundary, ending with a "read more" link to ``page``,
    when over it or when ``cut`` says the HTML is already incomplete)."""
    markup = sanitize_html(markup, base_url=page)
    if not cut and len(json.dumps(markup)) < max_bytes:
        message = Message(message_text(markup, page=page), markup)
        if message_size(message) <= max_bytes:
            return message
    return _shorten(markup, page=page, language=_lang(language), max_bytes=max_bytes)


# --- cutting a message to its budget ----------------------------------------------------

# Blocks that hold other blocks: a cut may fall between their children. Every other
# block (a paragraph, a heading, a table row, a <pre>) is kept whole or not at all.
_CONTAINERS = {"div", "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "details"}


@dataclass
class _Part:
    """A unit (a block kept whole, or a run of inline content) or a container of parts."""

    index: int                                  # the first unit's position in the document
    markup: str = ""                            # a unit's HTML
    node: _Node | None = None                   # a container's element
    parts: list[_Part] = field(default_factory=list)


def _serialize(node: _Node | str) -> str:
    if isinstance(node, str):
        return _esc(node)
    attrs = "".join(f' {name}="{_esc_attr(value)}"' for name, value in node.attrs.items())
    if node.tag in _VOID_TAGS:
        return f"<{node.tag}{attrs}>"
    inner = "".join(_serialize(child) for child in node.children)
    return f"<{node.tag}{attrs}>{inner}</{node.tag}>"


def _units(node: _Node, units: list[_Part]) -> _Part:
    part = _Part(len(units), node=node)
    run: list[_Node | str] = []

    def unit(markup: str) -> None:
        leaf = _Part(len(units), markup=markup)
        units.append(leaf)
        part.parts.append(leaf)

    def flush() -> None:
        if any(isinstance(c, _Node) or c.strip(_ASCII_WS) for c in run):
            unit("".join(_serialize(c) for c in run))
        run.clear()

    for child in node.children:
        if isinstance(child, str) or child.tag not in _BLOCK_TAGS:
            run.append(child)
            continue
        flush()
        if child.tag in _CONTAINERS and any(
                isinstance(c, _Node) and c.tag in _BLOCK_TAGS for c in child.children):
            part.parts.append(_units(child, units))
        else:
            unit(_serialize(child))
    flush()
    return part


def _prefix(part: _Part, count: int) -> str:
    """The document's first ``count`` units, in their (closed) containers."""
    if part.node is None:
        return part.markup if part.index < count else ""
    inner = "".join(_prefix(p, count) for p in part.parts if p.index < count)
    if not inner or part.node.tag == "#root":
        return inner
    attrs = "".join(f' {name}="{_esc_attr(value)}"' for name, value in part.node.attrs.items())
    return f"<{part.node.tag}{attrs}>{inner}</{part.node.tag}>"


def _shorten(markup: str, *, page: str | None, language: str, max_bytes: int) -> Message:
    if page:
        tail = f'<p><a href="{_esc_attr(page)}">{_esc(text("read_more", language))}</a></p>'
    else:
        tail = "<p>…</p>"

    def attempt(head: str, end: str = tail) -> Message | None:
        html = sanitize_html(head + end, base_url=page)
        message = Message(message_text(html, page=page), html)
        return message if message_size(message) <= max_bytes else None

    units: list[_Part] = []
    root = _units(_parse(markup), units)
    # A prefix whose markup alone is over the budget cannot fit: search below it.
    high, total = 0, len(json.dumps(tail))
    for unit in units:
        total += len(json.dumps(unit.markup))
        if total > max_bytes:
            break
        high += 1
    best, kept = attempt(""), 0
    low = 1
    while low <= high:
        middle = (low + high) // 2
        message = attempt(_prefix(root, middle))
        if message is None:
            high = middle - 1
        else:
            best, kept, low = message, middle, middle + 1

    # Little kept (a huge paragraph came next): add that block's beginning as text,
    # cut at a word boundary, rather than leaving the message nearly empty.
    if kept < len(units) and (best is None or message_size(best) < max_bytes // 2):
        head = _prefix(root, kept)
        words = html_to_text(units[kept].markup)[:max_bytes]
        low, high = 1, len(words)
        while low <= high:
            middle = (low + high) // 2
            piece = _esc(_cut(words, middle)).replace("\n", "<br>")
            message = attempt(f"{head}<p>{piece}</p>")
            if message is None:
                high = middle - 1
            else:
                best, low = message, middle + 1
    if best is not None:
        return best
    # Only a very long address with a very small budget gets here.
    return attempt("", "<p>…</p>") or Message("…", "…")
