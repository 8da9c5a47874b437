"""Feed URLs with credentials: what members, moderators and log lines see (pure parts)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bot.logs import make_handler
from bot.urls import (
    mask_userinfo,
    text_for_members,
    text_for_moderators,
    url_for_members,
    url_for_moderators,
)

SECRET_URL = "https://user:secret@intranet.example/feed?token=abc"


@pytest.mark.parametrize(("url", "members", "moderators"), [
    (SECRET_URL, "https://intranet.example/feed", "https://intranet.example/feed?token=abc"),
    ("https://u:p@ss@h.example:8443/x;p?y=1#z", "https://h.example:8443/x;p",
     "https://h.example:8443/x;p?y=1#z"),
    ("https://tokenonly@h.example/f", "https://h.example/f", "https://h.example/f"),
    ("http://[::1]:8080/a?b=c", "http://[::1]:8080/a", "http://[::1]:8080/a?b=c"),
    ("https://plain.example/feed.xml", "https://plain.example/feed.xml",
     "https://plain.example/feed.xml"),
])
def test_each_audience_sees_its_part_of_the_url(url: str, members: str,
                                                moderators: str) -> None:
    assert url_for_members(url) == members
    assert url_for_moderators(url) == moderators


def test_urls_inside_free_text_are_cleaned_one_by_one() -> None:
    message = f"HTTP 410 Gone at {SECRET_URL}. Before: 'https://a:b@old.example/x?k=v'"
    assert text_for_members(message) == (
        "HTTP 410 Gone at https://intranet.example/feed. Before: 'https://old.example/x'")
    assert text_for_moderators(message) == (
        "HTTP 410 Gone at https://intranet.example/feed?token=abc. "
        "Before: 'https://old.example/x?k=v'")


def test_userinfo_is_masked_and_nothing_else() -> None:
    assert mask_userinfo(SECRET_URL) == "https://***@intranet.example/feed?token=abc"
    untouched = "https://h.example/x by @bob:example.org, write to a@b.example"
    assert mask_userinfo(untouched) == untouched


def _emit(fmt: str, *records: logging.LogRecord) -> str:
    stream = io.StringIO()
    handler = make_handler(stream, fmt=fmt)
    for record in records:
        handler.handle(record)
    return stream.getvalue()


def _records() -> list[logging.LogRecord]:
    logger = logging.getLogger("test.urls")
    try:
        raise ValueError(f"cannot fetch {SECRET_URL}")
    except ValueError as exc:
        failed = logger.makeRecord("test.urls", logging.ERROR, __file__, 1,
                                   "poll of %s failed", (SECRET_URL,), (type(exc), exc,
                                                                        exc.__traceback__))
    direct = logger.makeRecord("test.urls", logging.INFO, __file__, 1,
                               f"feed added: {SECRET_URL}", None, None)
    redirect = logger.makeRecord("test.urls", logging.DEBUG, __file__, 1,
                                 "redirect from %s to %s",
                                 ("http://x:y@a.example/", "https://tok@b.example/"), None)
    return [failed, direct, redirect]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_log_line_masks_userinfo(fmt: str) -> None:
    output = _emit(fmt, *_records())
    assert "secret" not in output and "user:" not in output
    assert "x:y@" not in output and "tok@" not in output
    assert output.count("https://***@intranet.example/feed?token=abc") >= 3   # msg and traceback
    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines()]
        assert len(lines) == 3
        assert "ValueError: cannot fetch https://***@intranet.example" in lines[0]["exc"]
        assert lines[2]["msg"] == "redirect from http://***@a.example/ to https://***@b.example/"
