"""Pure rendering: a feed Entry becomes a Matrix Message (plain body + sanitised HTML).

The pipeline, the same for the poller and ``newsbot preview``:
1. ``entry_fields``: the entry's values for a template, text bounded, HTML sanitised;
2. the feed's template (``bot.templates``: Jinja2, sandboxed, autoescaped) writes HTML;
3. that HTML is sanitised again (a template cannot smuggle anything in) and the plain
   body is derived from it (``message_text``), never written separately;
4. a message over the feed's byte budget is cut at a block boundary and ends with a
   "read more" link (``fit_message``).

Feed HTML is untrusted. Everything that reaches a room goes through ``sanitize_html``
(an allow-list taken from the Matrix spec's suggestion for a message's HTML); nothing
here performs I/O.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Literal

from markupsafe import Markup

from .clean import TITLE_CHARS, TRAILING_PUNCT, bounded_title, clean_link, defang_text
from .clean import cut_text as _cut
from .i18n import LANGUAGES, MESSAGES, format_time, text
from .model import Entry, Message
from .template_sources import BUILTIN_TEMPLATES, TemplateProblem

if TYPE_CHECKING:
    # Jinja2 (bot.templates) and nh3 are loaded with the first template compiled and the
    # first HTML sanitised (about 3 MiB): an idle bot that has posted nothing never does.
    import nh3
    from jinja2.runtime import Context

    from .templates import CompiledTemplate, TemplateEngine

__all__ = [
    "CONTENT_MODES", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_SUMMARY_LENGTH", "FIELDS",
    "MAX_DEPTH", "MAX_MESSAGE_BYTES", "MIN_MESSAGE_BYTES", "TITLE_CHARS", "bounded_title",
    "check_template", "clean_link", "compile_template", "entry_fields", "entry_line", "fit_message",
    "format_date", "html_to_text", "link_markup", "message_size", "message_text",
    "render_entry", "safe_state_content", "sanitize_html",
]

log = logging.getLogger(__name__)

# The Matrix client-server spec's suggested subset of HTML for a room message.
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


# What an outgoing message may show besides: an image from the homeserver's media
# repository (mxc:// only; images: inline puts one after the title).
_IMAGE_ATTRIBUTES = {"src", "alt", "title", "width", "height"}
_WEB_SCHEME_RE = re.compile(r"[\x00-\x20]*https?:", re.IGNORECASE)


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    # Colours are spec'd as #RRGGBB; anything else is at best ignored by clients.
    if attr in ("data-mx-color", "data-mx-bg-color", "color"):
        return value if _COLOR_RE.fullmatch(value.strip()) else None
    if tag == "code" and attr == "class":
        kept = [c for c in value.split() if _CODE_CLASS_RE.fullmatch(c)]
        return " ".join(kept) or None
    if tag == "ol" and attr == "start":
        return value.strip() if value.strip().isdigit() else None
    if tag == "img":
        if attr == "src":
            return value if value.startswith("mxc://") else None
        if attr in ("width", "height"):
            return value if value.isdigit() and len(value) <= 5 else None
        return value
    if attr == "href" and _WEB_SCHEME_RE.match(value):
        # nh3 has checked the scheme; the one link cleaner has the last word on web
        # addresses (encoding, length). Relative ones are resolved by nh3 afterwards.
        return clean_link(value)
    return value


def _is_web_url(url: str | None) -> bool:
    return clean_link(url) is not None


# Keyed by base URL, which is mostly each entry's own link: a small cache is enough
# (the no-base cleaners are the ones reused) and keeps memory flat over months.
@lru_cache(maxsize=16)
def _cleaner(base_url: str | None, images: bool = False) -> nh3.Cleaner:
    relative: Literal["deny"] | tuple[Literal["rewrite_with_base"], str] = "deny"
    if base_url is not None and _is_web_url(base_url):
        relative = ("rewrite_with_base", base_url)
    attributes = dict(_ALLOWED_ATTRIBUTES)
    if images:
        attributes["img"] = _IMAGE_ATTRIBUTES
    import nh3  # with the first HTML sanitised (see TYPE_CHECKING above)
    try:
        return nh3.Cleaner(
            tags=set(ALLOWED_TAGS | {"img"} if images else ALLOWED_TAGS),
            clean_content_tags=_CLEAN_CONTENT_TAGS,
            attributes=attributes,
            attribute_filter=_filter_attribute,
            url_schemes=_URL_SCHEMES,
            link_rel=None,
            url_relative=relative,
        )
    except ValueError:
        # A base URL that only looks valid to urlsplit: drop relative links instead.
        return _cleaner(None, images)


def sanitize_html(html: str, *, base_url: str | None = None, images: bool = False) -> str:
    """Keep only the Matrix-suggested tags/attributes and safe links: the one sanitiser,
    for feed HTML, templates' output and, at sending, every message (``images``: that
    message may show an mxc:// image).

    Relative links are resolved against ``base_url`` (an http(s) URL), else removed.
    Elements nested deeper than ``MAX_DEPTH`` are flattened (their text kept).
    """
    if html.count("<") > MAX_DEPTH and _raw_depth(html) > MAX_DEPTH:
        html = _flatten_raw(html)
    return _flatten_clean(_cleaner(base_url, images).clean(html).strip())


# --- nesting depth ------------------------------------------------------------------------
#
# Deeper than any article's structure. Past it, elements are flattened (their text kept):
# html5ever (inside nh3) spends time quadratic in the depth (100,000 nested <div>: 80 s),
# clients render nested tags recursively, and so do the walks below (a few frames a level).
MAX_DEPTH = 100

# A tokenizer for feed HTML as html5ever reads it, for one purpose: an upper bound of the
# depth html5ever would build, in one linear pass, so that only deep documents are
# rewritten (what html5ever sees of an ordinary one stays byte for byte the same).
_RAW_TOKEN_RE = re.compile(r"""
    <!--(?:-?>|.*?--!?>|.*)                                 # a comment, ended as html5ever does
  | <([A-Za-z][^\s/>]*)                                    # a start tag, its attributes:
    (?:[^>"'=]|=\s*+(?:"[^"]*+"?|'[^']*+'?|[^\s>]*+)|["'])*+>?   # a quoted value may hold ">"
  | </([A-Za-z][^\s/>]*)[^>]*+>?                            # an end tag
  | <[!?/][^>]*+>?                                          # a doctype, a bogus comment
""", re.VERBOSE | re.DOTALL)
_RAW_TEXT_TAGS = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes",
                            "noscript", "textarea", "title", "plaintext"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr", "basefont", "bgsound", "frame",
                   "keygen", "image"})
_FORMATTING = frozenset({"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small",
                         "strike", "strong", "tt", "u"})
# html5ever's "special" elements: an end tag never closes past them, except its own.
_SPECIAL = frozenset({
    "address", "applet", "article", "aside", "blockquote", "body", "button", "caption",
    "center", "colgroup", "dd", "details", "dir", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "frameset", "h1", "h2", "h3", "h4", "h5", "h6",
    "head", "header", "hgroup", "html", "iframe", "li", "listing", "main", "marquee", "menu",
    "nav", "noembed", "noframes", "noscript", "object", "ol", "p", "plaintext", "pre",
    "script", "search", "section", "select", "style", "summary", "table", "tbody", "td",
    "template", "textarea", "tfoot", "th", "thead", "title", "tr", "ul", "xmp", "svg",
    "math",
})
# Start tags that close an open <p> (and so never nest in one).
_CLOSES_P = frozenset({
    "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir",
    "div", "dl", "fieldset", "figcaption", "figure", "footer", "header", "hgroup", "main",
    "menu", "nav", "ol", "p", "search", "section", "summary", "ul", "h1", "h2", "h3", "h4",
    "h5", "h6", "pre", "listing", "form", "hr", "table", "xmp", "li", "dd", "dt",
})
_SIBLINGS = {"li": ("li",), "dt": ("dt", "dd"), "dd": ("dt", "dd"), "td": ("td", "th"),
             "th": ("td", "th"), "tr": ("tr", "td", "th"), "option": ("option",)}


class _DepthTracker:
    """html5ever's stack of open elements, over-estimated: it pops only where html5ever
    surely does (a misnested end tag closes nothing here), so its depth is an upper bound."""

    def __init__(self) -> None:
        self.stack: list[str] = []

    def start(self, name: str) -> bool:
        """True when the element stays open (it is not void)."""
        stack = self.stack
        if stack and stack[-1] == "p" and name in _CLOSES_P:
            stack.pop()
        siblings = _SIBLINGS.get(name)
        while siblings and stack and stack[-1] in siblings:
            stack.pop()
        if name in _VOID:
            return False
        stack.append(name)
        return True

    def end(self, name: str) -> None:
        stack = self.stack
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] == name:
                if name in _FORMATTING and i != len(stack) - 1 and \
                        any(tag in _SPECIAL for tag in stack[i + 1:]):
                    return  # the adoption agency keeps those blocks open
                del stack[i:]
                return
            if stack[i] in _SPECIAL:
                return


def _raw_tokens(html: str) -> Iterator[tuple[re.Match[str], str | None, str | None]]:
    """(match, start tag name, end tag name) for each tag of raw HTML, in order."""
    pos = 0
    while (match := _RAW_TOKEN_RE.search(html, pos)) is not None:
        pos = match.end()
        start, end = match.group(1), match.group(2)
        yield match, start.lower() if start else None, end.lower() if end else None
        if start and start.lower() in _RAW_TEXT_TAGS:
            # Its text is no markup: go on after its end tag (or to the end).
            close = re.compile(rf"</{re.escape(start)}[\s/>]", re.IGNORECASE).search(html, pos)
            pos = close.start() if close else len(html)


def _raw_depth(html: str) -> int:
    """An upper bound of the depth of ``html``, or ``MAX_DEPTH + 1`` once it is over."""
    tracker = _DepthTracker()
    for _, start, end in _raw_tokens(html):
        if start:
            tracker.start(start)
            if len(tracker.stack) > MAX_DEPTH:
                return MAX_DEPTH + 1
        elif end:
            tracker.end(end)
    return len(tracker.stack)


def _flatten_raw(html: str) -> str:
    """``html`` without the tags that would open an element past ``MAX_DEPTH`` (and
    their end tags); a block dropped so leaves a line break."""
    tracker = _DepthTracker()
    dropped: dict[str, int] = {}
    out = _Splicer(html)
    for match, start, end in _raw_tokens(html):
        if start and start not in _VOID and len(tracker.stack) >= MAX_DEPTH:
            dropped[start] = dropped.get(start, 0) + 1
        elif end and dropped.get(end):
            dropped[end] -= 1
        else:
            if start:
                tracker.start(start)
            elif end:
                tracker.end(end)
            continue
        out.drop(match, start or end or "")
    return out.result()


class _Splicer:
    """``html`` with some tags taken out: a block's leaves one line break per run."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.parts: list[str] = []
        self.pos = 0
        self.broken_at = -1         # where the last line break put in for a block ends

    def drop(self, match: re.Match[str], tag: str) -> None:
        between = self.html[self.pos:match.start()]
        self.parts.append(between)
        if tag in _BLOCK_TAGS and not (self.broken_at == self.pos
                                       and not between.strip(_ASCII_WS)):
            self.parts.append("<br>")
            self.broken_at = match.end()
        elif self.broken_at == self.pos:
            self.broken_at = match.end()
        self.pos = match.end()

    def result(self) -> str:
        return "".join(self.parts) + self.html[self.pos:]


# The sanitiser's own output is canonical: attributes double-quoted, "<" escaped in text.
_CLEAN_TAG_RE = re.compile(r'<(/?)([a-z][a-z0-9]*)(?:\s[^\s"=>]+(?:="[^"]*")?)*\s*/?>')


def _flatten_clean(html: str) -> str:
    """Sanitised HTML with no element deeper than ``MAX_DEPTH`` (exact: it is well formed)."""
    if html.count("<") <= 2 * MAX_DEPTH:
        return html
    depth = deepest = 0
    for match in _CLEAN_TAG_RE.finditer(html):
        if match.group(1):
            depth -= 1
        elif match.group(2) not in _VOID:
            depth += 1
            deepest = max(deepest, depth)
    if deepest <= MAX_DEPTH:
        return html
    kept: list[bool] = []          # per open element: written or dropped
    out = _Splicer(html)
    for match in _CLEAN_TAG_RE.finditer(html):
        closing, tag = match.group(1), match.group(2)
        if closing:
            if not kept or kept.pop():
                continue
        elif tag in _VOID:
            continue
        elif len(kept) < MAX_DEPTH:
            kept.append(True)
            continue
        else:
            kept.append(False)
        out.drop(match, tag)
    return out.result()


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
        self._flattened: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _VOID_TAGS and len(self._stack) > MAX_DEPTH:
            # The walks below recurse by level: past the bound, keep only the text
            # (sanitize_html already flattened its output; this is for any other input).
            self._flattened[tag] = self._flattened.get(tag, 0) + 1
            return
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID_TAGS:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(_Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if self._flattened.get(tag):
            self._flattened[tag] -= 1
            return
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
    parts: list[str] = []
    pending: list[_Node | str] = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, str):
            parts.append(current)
        else:
            pending.extend(reversed(current.children))
    return "".join(parts)


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

# Homeservers refuse events over 64 KiB (M_TOO_LARGE), and an item that can never be
# sent would hold up its rooms' queues, since deliveries go out in order. Each field is
# bounded so that a message usually fits, and the finished message is measured against
# the feed's budget (max_message_bytes) and cut at a block boundary when over it.
_MAX_TITLE_CHARS = 250
_MAX_FEED_TITLE_CHARS = 100
_MAX_AUTHOR_CHARS = 200
_MAX_CATEGORIES = 30
_MAX_CATEGORY_CHARS = 100
_MAX_SUMMARY_HTML_CHARS = 2000  # richer than this (long attributes...): plain text instead

DEFAULT_SUMMARY_LENGTH = 400
# Counted as the JSON-encoded plain and HTML bodies (ASCII-escaped, as client libraries
# send them): 40 KiB leaves ample room under 64 KiB for the rest of the event (its type,
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


def _bounded(text: str, limit: int) -> str:
    return _cut(text, limit) if len(text) > limit else text


def entry_line(title: str, published: float | None, link: str | None, language: str, *,
               bullet: str = "• ") -> str:
    """An entry as one line of a plain-text answer (``latest``, ``archive``, a welcome):
    its bounded title, when, and its link if it is a clean web link."""
    when = format_time(published, language) if published else ""
    parts = (bounded_title(title) or text("untitled", language), when, clean_link(link) or "")
    return bullet + " — ".join(p for p in parts if p)


def link_markup(title: str, link: str | None) -> str:
    """``title`` as HTML text, a link to ``link`` when it passes ``clean_link``: the way
    to write an item's line by hand (digests, archive, latest) without an unsafe href."""
    safe = clean_link(link)
    if safe is None:
        return _esc(title)
    return f'<a href="{_esc_attr(safe)}">{_esc(title)}</a>'


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
            summary_text = summary_text.rstrip(TRAILING_PUNCT) + "…"
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
    link = clean_link(entry.link)
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

def _date_filter(context: Context, value: datetime | None) -> str:
    """``{{ published | date }}``: '22 décembre 2025' in the room's language."""
    from jinja2 import TemplateRuntimeError  # loaded: a template is rendering

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


def _translate(context: Context, key: str, **values: object) -> str:
    """``{{ t("read_more") }}``: one of the bot's sentences in the room's language."""
    from jinja2 import TemplateRuntimeError  # loaded: a template is rendering

    if key not in MESSAGES:
        raise TemplateRuntimeError(f"t() knows no sentence named {key!r}")
    try:
        return text(key, str(context.get("language", "en")), **values)
    except (KeyError, IndexError) as exc:
        raise TemplateRuntimeError(f"t({key!r}) needs a value for {exc}") from None


@lru_cache(maxsize=1)
def _engine() -> TemplateEngine:
    """The sandbox every template compiles in, made with the first one."""
    from jinja2 import pass_context

    from .templates import TemplateEngine

    return TemplateEngine(fields=FIELDS, filters={"date": pass_context(_date_filter),
                                                  "cut": _cut_filter},
                          globals={"t": pass_context(_translate)})


@lru_cache(maxsize=64)
def compile_template(template: str) -> CompiledTemplate:
    """A built-in template by name (default, compact, full), or Jinja2 source.

    Raises TemplateProblem (with the template line) for a template that cannot work.
    """
    if template in BUILTIN_TEMPLATES:
        return _engine().compile(BUILTIN_TEMPLATES[template], name=template)
    return _engine().compile(template)


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
                    from .templates import describe_failure  # loaded by the compile above
                    problem = describe_failure(exc)
                    return TemplateProblem(f"{problem.detail} (when rendering {what})",
                                           problem.line)
                if entry.link and not message_text(output, page=entry.link):
                    return TemplateProblem(f"the message is empty for {what}")
    return None


# --- messages -------------------------------------------------------------------------

def safe_state_content(event_type: str, content: dict[str, object]) -> dict[str, object]:
    """A state event's content as it may leave the bot: a room topic is plain text
    (``defang_text``), its rich form (``m.topic``) sanitised or defanged per part."""
    if event_type != "m.room.topic":
        return content
    safe = dict(content)
    topic = safe.get("topic")
    if isinstance(topic, str):
        safe["topic"] = defang_text(topic)
    rich = safe.get("m.topic")
    if isinstance(rich, dict) and isinstance(rich.get("m.text"), list):
        parts: list[object] = []
        for part in rich["m.text"]:
            if isinstance(part, dict) and isinstance(part.get("body"), str):
                part = dict(part)
                part["body"] = (defang_text(sanitize_html(part["body"]))
                                if part.get("mimetype") == "text/html"
                                else defang_text(part["body"]))
            parts.append(part)
        safe["m.topic"] = {**rich, "m.text": parts}
    return safe


def message_size(message: Message) -> int:
    """Bytes that the plain and HTML bodies take in the event's JSON (ASCII-escaped), as
    they are sent: after the transport broke hostile addresses (a word joiner
    costs 6 bytes), so a budget checked here holds for what leaves the bot."""
    return len(json.dumps(defang_text(message.body))) + \
        len(json.dumps(defang_text(message.html)))


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
        from .templates import describe_failure  # loaded by compile_template
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
    parts: list[str] = []
    # Without recursion: a node, or the end tag still to write once its children are.
    pending: list[_Node | str | tuple[str]] = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, tuple):
            parts.append(current[0])
        elif isinstance(current, str):
            parts.append(_esc(current))
        else:
            attrs = "".join(f' {name}="{_esc_attr(value)}"'
                            for name, value in current.attrs.items())
            parts.append(f"<{current.tag}{attrs}>")
            if current.tag not in _VOID_TAGS:
                pending.append((f"</{current.tag}>",))
                pending.extend(reversed(current.children))
    return "".join(parts)


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
