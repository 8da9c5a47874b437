"""Keyword filters a moderator sets per feed and room: pure matching, no I/O.

Matching ignores case and accents ("Santé" matches "sante"), looks at the title, the
summary's text and the categories, and matches whole words or phrases.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from bot.model import Entry
from bot.render import html_to_text
from bot.store.types import RoomFeedSettings


def normalize(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


@lru_cache(maxsize=512)
def _pattern(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(normalize(word)) + r"(?!\w)")


def entry_text(entry: Entry) -> str:
    summary = entry.summary_html or entry.content_html
    return normalize(" ".join([entry.title, html_to_text(summary), *entry.categories]))


def wanted(entry: Entry, settings: RoomFeedSettings, *, text: str | None = None) -> bool:
    """Does this room want this entry? Paused rooms want nothing."""
    if settings.paused:
        return False
    if not settings.include and not settings.exclude:
        return True
    haystack = entry_text(entry) if text is None else text
    if settings.include and not any(_pattern(w).search(haystack) for w in settings.include):
        return False
    return not any(_pattern(w).search(haystack) for w in settings.exclude)
