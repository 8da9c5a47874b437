"""Pure rendering: a feed Entry becomes a Matrix Message (plain body + sanitised HTML).

Feed HTML is untrusted. Everything that reaches a room goes through ``sanitize_html``
(an allow-list taken from the Matrix spec's suggestion for ``formatted_body``) or through
``html.escape``; nothing here performs I/O.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import urlsplit

import nh3

from .i18n import text
from .model import Entry, Message

__all__ = ["format_date", "html_to_text", "render_entry", "sanitize_html"]

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


@lru_cache(maxsize=256)
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

    def __init__(self, *, preformatted: bool = False) -> None:
        self.blocks: list[str] = []
        self.inline: list[str] = []
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


def _sub_text(node: _Node, *, preformatted: bool = False, sep: str = "\n\n") -> str:
    sub = _Flow(preformatted=preformatted)
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
        start_blocks, start = len(flow.blocks), len(flow.inline)
        _walk_children(node, flow)
        href = node.attrs.get("href", "")
        text = "".join(flow.inline[start:]) if len(flow.blocks) == start_blocks else ""
        if href and not _same_target(text, href):
            flow.inline.append(f" ({href})" if text.strip() else href)
    elif tag not in _BLOCK_TAGS:
        _walk_children(node, flow)  # inline formatting, unknown tags: keep the text
    else:
        flow.flush()
        flow.blocks.extend(b for b in [_block_text(node)] if b)


def _block_text(node: _Node) -> str:
    tag = node.tag
    if tag == "hr":
        return "———"
    if tag == "pre":
        return _sub_text(node, preformatted=True)
    if tag == "blockquote":
        return _indent(_sub_text(node), "> ", "> ", ">")
    if tag in ("ul", "ol"):
        items: list[str] = []
        number = int(node.attrs.get("start", "1") or 1) if tag == "ol" else 0
        for child in node.children:
            if isinstance(child, str):
                if child.strip(_ASCII_WS):
                    items.append("• " + _WS_RE.sub(" ", child).strip(_ASCII_WS))
                continue
            # Blocks inside an item (nested list, paragraphs) stay visually attached.
            text = _sub_text(child, sep="\n") if child.tag == "li" else _block_text(child)
            if not text:
                continue
            bullet = f"{number}. " if tag == "ol" else "• "
            number += 1
            items.append(_indent(text, bullet, " " * len(bullet)))
        return "\n".join(items)
    if tag == "li":
        text = _sub_text(node, sep="\n")
        return _indent(text, "• ", "  ") if text else ""
    if tag in ("table", "thead", "tbody"):
        rows = [_block_text(c) if isinstance(c, _Node) else "" for c in node.children]
        return "\n".join(r for r in rows if r)
    if tag == "tr":
        cells = [_sub_text(c).replace("\n", " ") for c in node.children if isinstance(c, _Node)]
        return " | ".join(c for c in cells if c)
    return _sub_text(node)


def html_to_text(html: str) -> str:
    """Readable plain text: paragraphs, bullets, quotes, links as "text (url)"."""
    builder = _TreeBuilder()
    # Sanitising first drops script/style content and unsafe links, and gives the
    # tree builder well-formed markup (implicitly closed <p>, <li>...).
    builder.feed(sanitize_html(html))
    builder.close()
    flow = _Flow()
    _walk_children(builder.root, flow)
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


# --- messages -------------------------------------------------------------------------

_HAS_TAG_RE = re.compile(r"<[A-Za-z!/]")
_TRAILING_PUNCT = " \t\n\r\f,;:.-–—(«\u00a0\u202f"

# Homeservers refuse events over 64 KiB (M_TOO_LARGE), and an item that can never be
# sent would hold up its rooms' queues, since deliveries go out in order. Feeds can send
# anything, so every part of a message is bounded. Worst case with these bounds, every
# character non-ASCII and escaped as "\uXXXX" by the JSON encoder: under 48 KiB.
_MAX_TITLE_CHARS = 250
_MAX_FEED_TITLE_CHARS = 100
_MAX_LINK_CHARS = 1500          # used three times: title link, "read more", plain body
_MAX_SUMMARY_HTML_CHARS = 2000  # richer than this (long attributes...): plain text instead


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


def render_entry(entry: Entry, *, feed_title: str | None = None, language: str = "en",
                 summary_chars: int = 400) -> Message:
    """Build the message announcing ``entry``; every piece of text is escaped.

    ``summary_chars`` caps the summary's plain-text length (0: no summary at all).
    """
    lang = _lang(language)
    title = _bounded(_one_line(entry.title), _MAX_TITLE_CHARS) or text("untitled", lang)
    link = _clean_link(entry.link)
    when = entry.published or entry.updated
    date = format_date(when, language) if when else ""
    meta = [p for p in (_bounded(_one_line(feed_title or ""), _MAX_FEED_TITLE_CHARS), date) if p]

    head = f"<strong>{_esc(title)}</strong>"
    if link:
        head = f'<strong><a href="{_esc_attr(link)}">{_esc(title)}</a></strong>'
    if meta:
        head += f"<br><em>{_esc(' · '.join(meta))}</em>"
    parts_html = [f"<p>{head}</p>"]
    parts_text = ["\n".join([title, *([" · ".join(meta)] if meta else [])])]

    source = entry.summary_html if entry.summary_html.strip() else entry.content_html
    if source.strip() and not _HAS_TAG_RE.search(source):
        source = _plain_to_html(source)
    summary_html = sanitize_html(source, base_url=link)
    summary_text = html_to_text(summary_html)
    if (summary_text and summary_chars > 0
            and _one_line(summary_text).casefold() != title.casefold()):
        if len(summary_text) > summary_chars or len(summary_html) > _MAX_SUMMARY_HTML_CHARS:
            if len(summary_text) > summary_chars:
                summary_text = _cut(summary_text, summary_chars)
            summary_html = f"<p>{_esc(summary_text).replace(chr(10), '<br>')}</p>"
        parts_html.append(summary_html)
        parts_text.append(summary_text)

    if link:
        parts_html.append(f'<p><a href="{_esc_attr(link)}">{text("read_more", lang)}</a></p>')
        parts_text.append(link)
    return Message(body="\n\n".join(parts_text), html="".join(parts_html))
