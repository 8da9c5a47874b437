"""What a feed controls, made safe to show: the one link cleaner, bounded titles, and
plain text whose hostile addresses no client can make clickable.

Pure and dependency-free, so that parsing (``bot.feeds.parse``), rendering
(``bot.render``) and every feature that writes a message use the same rules.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

__all__ = ["MAX_LINK_CHARS", "TITLE_CHARS", "bounded_title", "clean_link", "cut_text",
           "defang_text"]

# Longer than any address meant for people: no link rather than an oversized event
# (a message may write its link three times: title, "read more", plain body).
MAX_LINK_CHARS = 1500
# What is kept of a feed's or an entry's title, stored and shown alike. Rendering cuts
# items' titles a little shorter (250), so a stored title never changes what an item
# shows; digests, archive, latest and welcome use this bound.
TITLE_CHARS = 300

# Browsers (WHATWG URL) drop leading and trailing C0 controls and spaces, and tabs and
# line breaks anywhere: "java\tscript:" is javascript:. Do the same before judging.
_EDGES = "".join(chr(c) for c in range(0x21))
_TAB_OR_NEWLINE_RE = re.compile(r"[\t\n\r]")
_WEB_URL_RE = re.compile(r"https?://", re.IGNORECASE)
# Characters no URL holds raw: they would only confuse linkifiers and attribute quoting.
_URL_UNSAFE_RE = re.compile(r'[\x00-\x20\x7f"<>\\^`{|}]')


def _percent_encode(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def _invisible(char: str) -> bool:
    # Controls, bidi overrides, zero-width and odd spaces: they make an address read
    # as another one. Non-ASCII letters stay readable (French paths).
    return unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn")


def clean_link(link: str | None) -> str | None:
    """``link`` if it is an http(s) URL with a host, in a form safe in an href and in
    plain text; else None (``javascript:``, ``data:``, any spelling of them, relative
    or broken addresses, and addresses over ``MAX_LINK_CHARS``).

    The one link cleaner: entry, feed and image links at parse time, links in every
    message the bot writes. Idempotent.
    """
    if not link:
        return None
    link = _TAB_OR_NEWLINE_RE.sub("", link.strip(_EDGES))
    if not _WEB_URL_RE.match(link):
        return None                     # an allow-list: no scheme spelling to foresee
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    if not parts.hostname:              # the scheme is http(s): _WEB_URL_RE matched
        return None
    link = _URL_UNSAFE_RE.sub(lambda m: _percent_encode(m.group(0)), link)
    if not link.isascii():
        link = "".join(_percent_encode(c) if _invisible(c) else c for c in link)
    return link if len(link) <= MAX_LINK_CHARS else None


TRAILING_PUNCT = " \t\n\r\f,;:.-–—(«…\u00a0\u202f"


def cut_text(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text`` ending on a word boundary, plus '…'."""
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\n"))
    # A single enormous "word" (a URL) is cut hard rather than dropped entirely.
    if space > limit // 2 and text[limit:limit + 1] not in ("", " ", "\n"):
        head = head[:space]
    return head.rstrip(TRAILING_PUNCT) + "…"


# Only ASCII whitespace collapses: U+00A0 / U+202F are typographic in French.
_WS_RE = re.compile(r"[ \t\n\r\f\v]+")


def bounded_title(title: str, limit: int = TITLE_CHARS) -> str:
    """A title on one line and at most ``limit`` characters (+ '…'), cut at a word."""
    title = _WS_RE.sub(" ", title).strip(" ")
    return cut_text(title, limit) if len(title) > limit else title


# A scheme that runs code or carries a document, written where an address starts (not
# inside one: "?q=data:x" stays). Text is never a link by itself, but clients linkify
# what looks like one.
_HOSTILE_SCHEME_RE = re.compile(
    r"""(?<![^\s(<\[{"'«>])(javascript|vbscript|livescript|data)(?=:\S)""", re.IGNORECASE)


def defang_text(text: str) -> str:
    """Plain text with hostile addresses broken for linkifiers: a word joiner (U+2060,
    invisible) goes between ``javascript`` and its colon. Other text is unchanged."""
    return _HOSTILE_SCHEME_RE.sub("\\1\u2060", text)
