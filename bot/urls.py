"""Feed URLs as each audience may see them.

A feed URL may carry credentials: ``https://user:secret@host/feed?token=abc``. Members see
``https://host/feed`` (no userinfo, query or fragment), moderators see the URL without its
userinfo, and log lines show ``https://***@host/feed?token=abc`` (the operator needs the
rest to recognise the feed). Free text (an error message naming a URL) is cleaned the same
way, URL by URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# A URL inside free text; quotes and angle brackets end it (repr() and <URL> spellings).
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s<>\"'`]+")
# Punctuation that ends a sentence, not the URL.
_TRAILING = ".,:;!?)]}"
# scheme:// then userinfo: everything up to the last "@" before the path, query or fragment
# (a raw "@" inside a password is common enough).
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#<>\"'`]*@")


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, \
        parts.fragment


def url_for_members(url: str) -> str:
    """``scheme://host[:port]/path``: no userinfo, no query, no fragment."""
    parts = _split(url)
    if parts is None:
        return mask_userinfo(url).split("?", 1)[0].split("#", 1)[0]
    scheme, host, path, _, _ = parts
    return urlunsplit((scheme, host, path, "", ""))


def url_for_moderators(url: str) -> str:
    """The URL without its userinfo."""
    parts = _split(url)
    if parts is None:
        return mask_userinfo(url)
    return urlunsplit(parts)


def mask_userinfo(text: str) -> str:
    """Every ``scheme://user:pass@`` in ``text`` becomes ``scheme://***@``."""
    if "@" not in text:         # the common case costs one scan
        return text
    return _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def _each_url(text: str, show: Callable[[str], str]) -> str:
    def one(match: re.Match[str]) -> str:
        found = match.group(0)
        core = found.rstrip(_TRAILING)
        return show(core) + found[len(core):]

    return _URL_IN_TEXT.sub(one, text)


def text_for_members(text: str) -> str:
    """Free text (an error message) with every URL in it as members may see it."""
    return _each_url(text, url_for_members)


def text_for_moderators(text: str) -> str:
    """Free text with every URL in it as moderators may see it."""
    return _each_url(text, url_for_moderators)
