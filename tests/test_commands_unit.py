"""Pure parts of the commands: parsing, names, the rate limiter, filters, translations."""

from __future__ import annotations

import string

import pytest

from bot.commands import RateLimiter, parse_command, slug
from bot.filters import wanted
from bot.i18n import MESSAGES, format_duration, format_time
from bot.model import Entry
from bot.store import RoomFeedSettings
from tests.support.clock import FakeClock


@pytest.mark.parametrize(("body", "expected"), [
    ("!news", ("help", [])),
    ("  !NEWS List ", ("list", [])),
    ('!news filter actus include "données de santé" hôpital',
     ("filter", ["actus", "include", "données de santé", "hôpital"])),
    ('!news filter actus include "unbalanced', ("filter", ["actus", "include", '"unbalanced'])),
])
def test_commands_are_parsed(body: str, expected: tuple[str, list[str]]) -> None:
    command = parse_command(body, "!news")
    assert command is not None
    assert (command.name, command.args) == expected


@pytest.mark.parametrize("body", ["hello", "!newsletter list", "news list", " !new list"])
def test_other_messages_are_not_commands(body: str) -> None:
    assert parse_command(body, "!news") is None


def test_slug_makes_a_valid_feed_name() -> None:
    assert slug("Actualités d'InterHop — Santé") == "actualites-d-interhop-sante"
    assert slug("   ") == "feed"
    assert len(slug("x" * 100)) <= 40


def test_rate_limiter_allows_a_burst_then_tells_once_per_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock)
    assert [limiter.allow("@a:x") for _ in range(3)] == [(True, False)] * 3
    assert limiter.allow("@a:x") == (False, True)
    assert limiter.allow("@a:x") == (False, False)
    assert limiter.allow("@b:x") == (True, False)        # per user
    clock.t += 10.0
    assert limiter.allow("@a:x") == (True, False)


def entry(title: str, summary: str = "", categories: tuple[str, ...] = ()) -> Entry:
    return Entry(entry_id="x", title=title, link=None, summary_html=summary,
                 content_html="", categories=categories)


def test_filters_ignore_case_and_accents_and_match_whole_words() -> None:
    include = RoomFeedSettings(include=("sante", "données de santé"))
    assert wanted(entry("La SANTÉ numérique"), include)
    assert wanted(entry("Rien", "<p>Les <b>donnees de sante</b></p>"), include)
    assert not wanted(entry("Santeuil, un village"), include)     # not a whole word
    assert wanted(entry("Autre", categories=("Santé",)), include)
    exclude = RoomFeedSettings(exclude=("comité",))
    assert not wanted(entry("Réunion du Comite"), exclude)
    assert wanted(entry("Réunion du bureau"), exclude)
    assert not wanted(entry("Santé"), RoomFeedSettings(paused=True))


def test_every_message_exists_in_both_languages_with_the_same_fields() -> None:
    for key, table in MESSAGES.items():
        assert set(table) == {"en", "fr"}, key
        fields = [{name for _, name, _, _ in string.Formatter().parse(t) if name}
                  for t in table.values()]
        assert fields[0] == fields[1], key


def test_durations_and_times_read_well() -> None:
    assert format_duration(900, "fr") == "15 min"
    assert format_duration(5400, "en") == "1 h 30 min"
    assert format_duration(86400, "fr") == "1 j"
    assert format_duration(30, "en") == "30 s"
    assert format_time(0, "fr") == "01/01/1970 00:00 UTC"
    assert format_time(None, "fr") == "jamais"
