"""Message templates, full issues and the size limit: what members read, compared exactly.

Golden files: real-world-shaped feeds in tests/data/golden/ (WordPress, Jekyll, Mastodon,
PeerTube, JSON Feed, a long French newsletter), each rendered through the same call the
poller makes and compared byte for byte with the expected HTML and plain text next to
them. After a deliberate change, regenerate them with

    NEWSBOT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_templates.py -k golden

and review the diff; without that variable any difference fails.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
import pytest_asyncio
import yaml

from bot.config import FeedConfig
from bot.feeds.fetch import Fetcher
from bot.feeds.parse import parse_feed
from bot.model import Entry, Message
from bot.render import (
    ALLOWED_TAGS,
    DEFAULT_MAX_MESSAGE_BYTES,
    FIELDS,
    MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
    check_template,
    compile_template,
    message_size,
    message_text,
    render_entry,
    sanitize_html,
)
from bot.store import SqliteStore, Store
from bot.templates import BUILTIN_TEMPLATES, TemplateLimitError
from tests.support import FeedServer
from tests.support.pollers import feed_poller
from tests.support.rows import content_of

GOLDEN = Path(__file__).parent / "data" / "golden"
UPDATE = os.environ.get("NEWSBOT_UPDATE_GOLDEN") == "1"

NBSP, NNBSP = "\u00a0", "\u202f"
LINK = "https://interhop.org/lettres/2025-12/"
RSS = "application/rss+xml; charset=utf-8"


def entry(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "entry_id": "urn:1", "title": f"Goupile{NBSP}: nouvelle version",
        "link": "https://interhop.org/2025/12/22/goupile",
        "summary_html": "<p>L'association <strong>InterHop</strong> publie la version 3.0 "
                        'de <a href="/goupile">Goupile</a>.</p>',
        "content_html": "<h2>Nouveautés</h2><ul><li>hors ligne</li><li>chiffrement</li></ul>"
                        '<p>Voir <a href="/docs">la documentation</a>.</p>',
        "author": "Alice Martin", "published": datetime(2025, 12, 22, 9, 30, tzinfo=UTC),
        "categories": ("santé", "logiciel libre"),
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


class _Balance(HTMLParser):
    """Every element closed, in order: what "well-formed" means for a cut message."""

    VOID = {"br", "hr", "img", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"</{tag}>")


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            self.attributes.add(name)
            if name == "href":
                self.hrefs.append(value or "")


def assert_well_formed(markup: str) -> None:
    checker = _Balance()
    checker.feed(markup)
    checker.close()
    assert checker.errors == [] and checker.stack == [], (checker.errors, checker.stack)
    assert sanitize_html(markup) == markup  # canonical: the sanitiser changes nothing


# --- golden files -----------------------------------------------------------------------

@dataclass(frozen=True)
class Golden:
    name: str               # expected output: <name>.html and <name>.txt
    feed: str               # the feed file
    url: str                # where it was "fetched" from (base for relative links)
    content_type: str
    language: str
    template: str = "default"
    content: str = "summary"


GOLDENS = [
    Golden("wordpress.default", "wordpress.rss.xml", "https://sante-libre.example/feed/",
           RSS, "fr"),
    Golden("wordpress.compact", "wordpress.rss.xml", "https://sante-libre.example/feed/",
           RSS, "fr", template="compact"),
    Golden("jekyll.default", "jekyll.atom", "https://notes.example.net/feed.xml",
           "application/atom+xml", "en"),
    Golden("mastodon.default", "mastodon.rss.xml", "https://mastodon.example/@interhop.rss",
           RSS, "fr"),
    Golden("peertube.default", "peertube.rss.xml",
           "https://videos.example.org/feeds/videos.xml?videoChannelId=12", RSS, "fr"),
    Golden("jsonfeed.default", "jsonfeed.json", "https://lou.example.fr/feed.json",
           "application/feed+json", "fr"),
    Golden("newsletter.default", "newsletter.rss.xml", "https://interhop.org/lettres/feed.xml",
           RSS, "fr"),
    Golden("newsletter.full", "newsletter.rss.xml", "https://interhop.org/lettres/feed.xml",
           RSS, "fr", content="full"),
]


def render_golden(case: Golden) -> list[tuple[str, Message]]:
    parsed = parse_feed((GOLDEN / case.feed).read_bytes(), content_type=case.content_type,
                        url=case.url)
    assert parsed.warnings == ()
    return [(e.entry_id, render_entry(e, feed_title=parsed.title or None,
                                      language=case.language, template=case.template,
                                      content=case.content, feed=case.name))
            for e in parsed.entries]


def golden_document(messages: list[tuple[str, Message]], part: str) -> str:
    return "".join(f"===== {entry_id} =====\n{getattr(message, part)}\n"
                   for entry_id, message in messages)


@pytest.mark.parametrize("case", GOLDENS, ids=[g.name for g in GOLDENS])
def test_golden(case: Golden) -> None:
    messages = render_golden(case)
    for _, message in messages:
        assert_well_formed(message.html)
        assert message_size(message) <= DEFAULT_MAX_MESSAGE_BYTES
        # The plain body is the HTML's own text, never written separately.
        assert message.body == message_text(message.html, page=message.body.split("\n")[-1]
                                            if message.body.split("\n")[-1].startswith("http")
                                            else None)
    stale = []
    for suffix, part in ((".html", "html"), (".txt", "body")):
        path = GOLDEN / f"{case.name}{suffix}"
        actual = golden_document(messages, part)
        if UPDATE:
            path.write_text(actual, encoding="utf-8")
            continue
        assert path.exists(), f"{path.name} is missing: run with NEWSBOT_UPDATE_GOLDEN=1"
        if path.read_text(encoding="utf-8") != actual:
            stale.append(path.name)
    if UPDATE:
        pytest.skip("golden files rewritten: review the diff")
    for name in stale:  # the exact comparison, shown as a diff by pytest
        assert golden_document(messages, "html" if name.endswith(".html") else "body") == \
            (GOLDEN / name).read_text(encoding="utf-8"), name


def test_every_golden_file_is_checked() -> None:
    expected = {f"{g.name}{suffix}" for g in GOLDENS for suffix in (".html", ".txt")}
    feeds = {g.feed for g in GOLDENS}
    present = {p.name for p in GOLDEN.iterdir()} - {"README.md"}
    assert present - feeds == expected, "a golden file no test compares (or one missing)"


def test_golden_newsletter_keeps_french_typography_and_resolves_links() -> None:
    [(_, message)] = render_golden(GOLDENS[-1])
    # U+00A0 as &nbsp; in HTML (how the sanitiser writes it), U+202F as is; both in text.
    assert "Lettre n°&nbsp;42" in message.html and f"Lettre n°{NBSP}42" in message.body
    assert f"38{NNBSP}%" in message.html and f"38{NNBSP}%" in message.body
    assert f"«{NBSP}Goupile pour les nuls{NBSP}»" in message.body
    assert "&rsquo;" not in message.html and "l’année" in message.body.lower()
    assert 'href="https://interhop.org/lettres/manifeste/"' in message.html
    assert 'href="https://interhop.org/adherer"' in message.html
    assert 'href="https://interhop.org/lettres/2025-12/agenda.html#janvier"' in message.html
    for kept in ("<h2>", "<ul>", "<ol start=\"3\">", "<blockquote>", "<table>", "<th>",
                 '<code class="language-bash">', "<hr>", "<sup>"):
        assert kept in message.html, kept
    for dropped in ("<img", "<iframe", "<script", "style=", "stats.example.net", "trackOpen"):
        assert dropped not in message.html and dropped not in message.body, dropped
    # The issue's own <h1> repeats its title: shown once.
    assert message.body.count("Lettre n°") == 1


# --- built-in templates ----------------------------------------------------------------

def test_default_template_shows_author_unless_it_is_the_feed() -> None:
    message = render_entry(entry(), feed_title="InterHop", language="fr")
    assert message.html.startswith(
        '<p><strong><a href="https://interhop.org/2025/12/22/goupile">Goupile&nbsp;: '
        "nouvelle version</a></strong><br><em>InterHop · 22 décembre 2025</em> · "
        "<em>par Alice Martin</em></p>")
    assert message.body.split("\n")[1] == "InterHop · 22 décembre 2025 · par Alice Martin"
    english = render_entry(entry(), feed_title="InterHop", language="en")
    assert english.body.split("\n")[1] == "InterHop · 22 December 2025 · by Alice Martin"
    same = render_entry(entry(author="interhop"), feed_title="InterHop", language="fr")
    assert same.body.split("\n")[1] == "InterHop · 22 décembre 2025"
    alone = render_entry(entry(published=None), language="fr")
    assert "<br><em>par Alice Martin</em></p>" in alone.html


def test_compact_is_one_line() -> None:
    message = render_entry(entry(), feed_title="InterHop", language="fr", template="compact")
    assert message == Message(
        body=f"Goupile{NBSP}: nouvelle version (https://interhop.org/2025/12/22/goupile)"
             " · 22 décembre 2025",
        html='<a href="https://interhop.org/2025/12/22/goupile">Goupile&nbsp;: nouvelle '
             "version</a> · 22 décembre 2025")
    bare = render_entry(entry(link=None, published=None), template="compact", language="en")
    assert bare == Message(f"Goupile{NBSP}: nouvelle version", "Goupile&nbsp;: nouvelle version")


def test_full_template_and_content_full_show_the_whole_entry() -> None:
    full = render_entry(entry(), feed_title="InterHop", language="fr", template="full")
    assert full == render_entry(entry(), feed_title="InterHop", language="fr", content="full")
    assert ("<h2>Nouveautés</h2><ul><li>hors ligne</li><li>chiffrement</li></ul>"
            '<p>Voir <a href="https://interhop.org/docs">la documentation</a>.</p>') in full.html
    assert full.body.endswith("Nouveautés\n\n• hors ligne\n• chiffrement\n\n"
                              "Voir la documentation (https://interhop.org/docs).\n\n"
                              "https://interhop.org/2025/12/22/goupile")
    # The default template with the default content: the summary, not the content.
    summary = render_entry(entry(), feed_title="InterHop", language="fr")
    assert "Nouveautés" not in summary.body and "publie la version 3.0" in summary.body


def test_full_content_falls_back_to_the_summary() -> None:
    message = render_entry(entry(content_html=""), language="fr", content="full")
    assert "publie la version 3.0 de Goupile (https://interhop.org/goupile)." in message.body


def test_summary_length_is_a_setting() -> None:
    words = "Les données de santé sont un bien commun à protéger ensemble. " * 20
    short = render_entry(entry(summary_html=f"<p>{words}</p>"), language="fr",
                         summary_chars=60)
    assert short.body.split("\n\n")[1] == "Les données de santé sont un bien commun à protéger…"
    none = render_entry(entry(), language="fr", summary_chars=0)
    assert none.body.count("\n\n") == 1  # header, link


# --- templates of one's own ------------------------------------------------------------

def test_own_template_sees_every_field() -> None:
    source = ("<p>{{ title }}|{{ link }}|{{ author }}|{{ published.year if published }}|"
              "{{ updated }}|"
              "{{ date }}|{{ published | date }}|{{ categories | join(', ') }}|{{ feed_title }}|"
              "{{ image }}|{{ language }}|{{ full }}|{{ t('read_more') }}</p>{{ summary }}"
              "{{ content }}<p>{{ content | cut(12) }}</p>")
    assert check_template(source) is None
    message = render_entry(entry(), feed_title="InterHop", language="fr", template=source)
    assert message.body.split("\n\n")[0] == (
        f"Goupile{NBSP}: nouvelle version|https://interhop.org/2025/12/22/goupile|Alice Martin|"
        "2025||22 décembre 2025|22 décembre 2025|santé, logiciel libre|InterHop||fr|False|"
        "Lire la suite")
    assert "<strong>InterHop</strong>" in message.html        # summary: HTML, not escaped
    assert "<li>hors ligne</li>" in message.html                # content: HTML too
    assert message.body.endswith("Nouveautés…")                 # cut: text
    assert set(FIELDS) == {"title", "link", "summary", "content", "author", "published",
                           "updated", "date", "categories", "feed_title", "image",
                           "language", "full"}


def test_feed_values_are_escaped_in_own_templates() -> None:
    message = render_entry(entry(title="<b>gras</b> & <i>x</i>", author="<script>x</script>"),
                           template="<p>{{ title }} {{ author }}</p>", language="en")
    assert message.html == "<p>&lt;b&gt;gras&lt;/b&gt; &amp; &lt;i&gt;x&lt;/i&gt; " \
                           "&lt;script&gt;x&lt;/script&gt;</p>"
    assert message.body == "<b>gras</b> & <i>x</i> <script>x</script>"


HOSTILE_TEMPLATE = """\
<script>alert(1)</script><style>p { color: red }</style>
<a href="javascript:alert(2)">clic</a> <a href="{{ 'java' ~ 'script:alert(3)' }}">clic</a>
<img src="https://tracker.example/p.gif" onerror="alert(4)">
<p onclick="steal()" style="position:fixed">{{ title | safe }}</p>
<iframe src="https://evil.example/"></iframe>
{{ summary }}"""


@pytest.mark.parametrize("template", [*BUILTIN_TEMPLATES, HOSTILE_TEMPLATE])
@pytest.mark.parametrize("content", ["summary", "full"])
def test_sanitising_holds_under_every_template(template: str, content: str) -> None:
    hostile_html = ('<script>alert("x")</script><p onclick="x">Texte '
                    '<a href="javascript:alert(1)">lien</a><img src=x onerror=alert(1)></p>'
                    '<iframe src="https://evil.example/"></iframe>')
    item = entry(title="<script>alert(5)</script>Titre", summary_html=hostile_html,
                 content_html=hostile_html, link='https://example.org/"><script>x</script>')
    assert check_template(template) is None
    message = render_entry(item, feed_title="<img src=x onerror=alert(6)>", language="fr",
                           template=template, content=content)
    assert_well_formed(message.html)
    audit = _Audit()
    audit.feed(message.html)
    assert audit.tags <= ALLOWED_TAGS, audit.tags - ALLOWED_TAGS
    assert audit.attributes <= {"href", "target", "start", "class"}, audit.attributes
    assert all(href.startswith("https://") for href in audit.hrefs), audit.hrefs
    for bad in ("tracker.example", "evil.example", "alert(1)", "alert(2)", "alert(3)",
                "alert(4)", "color: red"):
        assert bad not in message.html, bad
    # The plain body shows titles as text (its job), but nothing the sanitiser removed.
    for bad in ("javascript:", "alert(1)", "alert(2)", "alert(3)", "evil.example",
                "color: red"):
        assert bad not in message.body, bad


def test_date_helper_speaks_the_room_language() -> None:
    source = "{{ published | date }} / {{ updated | date }} / {{ date }}"
    item = entry(published=datetime(2026, 1, 1, tzinfo=UTC), updated=None)
    # (HTML collapses the two spaces around the missing date.)
    assert render_entry(item, template=source, language="fr").body == \
        "1er janvier 2026 / / 1er janvier 2026"
    assert render_entry(item, template=source, language="en").body == \
        "1 January 2026 / / 1 January 2026"


@pytest.mark.parametrize(("source", "line", "detail"), [
    ("<b>{{ title }}</b>\n{{ link }\n", 2, "unexpected '}'"),
    ("{% if title %}\n<b>{{ title }}</b>\n", 2, "Unexpected end of template. Jinja was "
                                                "looking for the following tags: 'elif' or "
                                                "'else' or 'endif'"),
    ("{{ titel }}", 1, "unknown field 'titel' (did you mean 'title'?)"),
    ("<p>\n{% if author %}{{ author | uper }}{% endif %}</p>", 2,
     "unknown filter 'uper' (did you mean 'upper'?)"),
    ("{% if link is wbe %}x{% endif %}{{ title }}", 1, "unknown test 'wbe'"),
    ("{% include 'header.html' %}", 1, "{% include %} is not available"),
    ("{% extends 'base.html' %}", 1, "{% extends %} is not available"),
    ("{{ title }}\n{{ author.upper() }}", 2,
     "'None' has no attribute 'upper' (when rendering an entry with no title, link, date, "
     "author or text)"),
    ("{{ title }}{{ categories[0] }}", 1, "tuple object has no element 0"),
    ("{{ title }} {{ published.year }}", 1, "'None' has no attribute 'year'"),
    ("{{ ''.__class__.__mro__ }}", 1, "access to attribute '__class__' of 'str' object is "
                                      "unsafe"),
    ("{{ title.__init__.__globals__ }}", 1, "is unsafe"),
    ("{{ t('nope') }}", 1, "t() knows no sentence named 'nope'"),
    ("{{ t('by_author') }}", 1, "t('by_author') needs a value for 'author'"),
    ("{{ title | date }}", 1, "the date filter needs a date"),
    ("{% if false %}{{ title }}{% endif %}", None, "the message is empty for a complete entry"),
])
def test_template_problems_name_their_line(source: str, line: int | None,
                                           detail: str) -> None:
    problem = check_template(source)
    assert problem is not None
    assert problem.line == line
    assert detail in problem.detail, problem.detail


def test_a_template_failing_at_post_time_falls_back_to_default(
        caplog: pytest.LogCaptureFixture) -> None:
    # Valid, and fine with the sample entries; breaks on one real title only.
    source = '<p>{{ title }}</p>\n{% if "Boom" in title %}{{ 1 // 0 }}{% endif %}'
    assert check_template(source) is None
    caplog.set_level(logging.WARNING, logger="bot")
    boom = entry(title="Boom")
    message = render_entry(boom, feed_title="InterHop", language="fr", template=source,
                           feed="lettre")
    assert message == render_entry(boom, feed_title="InterHop", language="fr")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("feed lettre: its template failed on entry urn:1 (line 2: ")
    assert warning.endswith("posted with the default template instead")
    caplog.clear()
    assert render_entry(entry(), template=source, language="fr").body == \
        f"Goupile{NBSP}: nouvelle version"
    assert caplog.records == []


def test_a_template_writing_nothing_for_an_entry_falls_back(
        caplog: pytest.LogCaptureFixture) -> None:
    source = "{% if author %}<p>{{ author }} : {{ title }}</p>{% endif %}"
    assert check_template(source) is None
    caplog.set_level(logging.WARNING, logger="bot")
    message = render_entry(entry(author=None), template=source, language="fr", feed="blog")
    assert message.body.startswith(f"Goupile{NBSP}: nouvelle version\n22 décembre 2025")
    assert "empty message" in caplog.text


def test_a_runaway_template_is_stopped_and_cut() -> None:
    source = "{% for i in range(10000) %}<p>{{ content }}</p>{% endfor %}"
    started = time.perf_counter()
    message = render_entry(entry(), template=source, language="fr")
    assert time.perf_counter() - started < 5
    assert message_size(message) <= DEFAULT_MAX_MESSAGE_BYTES
    assert message.body.endswith("\n\nhttps://interhop.org/2025/12/22/goupile")
    assert_well_formed(message.html)


# --- templates that would eat the machine (issue 10, case 6) -------------------------------

# Each one is refused by check-config, quickly and in little memory, with the reason.
HOSTILE_TEMPLATES = {
    "multiply": ("{{ 'a' * 10**8 }}", "'*' would make a value of 100,000,000 characters"),
    "power": ("{{ 10 ** 1000000 }}", "'**' would make a number of about"),
    "ranges": ("{% for i in range(100000) %}{% for j in range(100000) %}{{ title }}"
               "{% endfor %}{% endfor %}", "range() of 100,000 numbers; the limit is 10,000"),
    "loops": ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}"
              "{% endfor %}{{ title }}", "the template took more than 1 s to render"),
    "calls": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
              "{{ f(40) }}{{ title }}", "the template took more than 1 s to render"),
    "doubling": ("{% set s = 'a' * 1000000 %}{% set s = s ~ s %}{% set s = s ~ s %}"
                 "{{ title }}", "'~' would make a value of 2,000,000 characters"),
    "width": ("{{ '%1000000000s' | format(title) }}", "has a width over 1,000,000"),
    "centre": ("{{ title.center(1000000000) }}", "the number 1,000,000,000 is over"),
}

# Small arguments, a large result built in one C call that no time budget interrupts:
# each one is refused before the call, from the size its arguments give. (Before, the
# first one passed check-config after 5 s and 400 MiB.)
STRING_BOMBS = {
    "replace_method": ("{% set x = 'a' * 1000 %}{% set y = x.replace('a', x) %}"
                       "{{ y.replace('a', x[:400])|length }}{{ title }}",
                       "str.replace() would make a value of 400,000,000 characters"),
    "replace_filter": ("{% set x = 'a' * 1000 %}{% set y = x|replace('a', x) %}"
                       "{{ y|replace('a', x[:400])|length }}{{ title }}",
                       "the filter 'replace' would make a value of 400,000,000 characters"),
    "join_filter": ("{% set x = 'a' * 20000 %}{{ x|join(x)|length }}{{ title }}",
                    "the filter 'join' would make a value of"),
    "join_method": ("{% set x = 'a' * 20000 %}{{ x.join(x)|length }}{{ title }}",
                    "str.join() would make a value of"),
    "format_fields": ("{% set x = 'a' * 100000 %}{{ ('{0}' * 200).format(x)|length }}"
                      "{{ title }}", "str.format() would make a value of"),
    "format_widths": ("{{ ('{0:900000}' * 50).format(1)|length }}{{ title }}",
                      "str.format() would make a value of"),
    "printf_mapping": ("{% set x = 'a' * 100000 %}{{ (('%(a)s' * 200) % {'a': x})|length }}"
                       "{{ title }}", "'%' would make a value of"),
    "format_filter": ("{% set x = 'a' * 100000 %}{{ ('%(a)s' * 200)|format(a=x)|length }}"
                      "{{ title }}", "the filter 'format' would make a value of"),
    "indent": ("{{ ('\\n' * 100000)|indent(1000)|length }}{{ title }}",
               "the filter 'indent' would make a value of"),
    "wordwrap": ("{% set x = 'a' * 100000 %}{{ ('a ' * 10000)|wordwrap(1, wrapstring=x)"
                 "|length }}{{ title }}", "the filter 'wordwrap' would make a value of"),
    "list_times": ("{% set x = 'a' * 100000 %}{% set l = [x] * 1000 %}{{ l|length }}"
                   "{{ l|string|length }}{{ title }}", "'*' would make a value of"),
    "nested_lists": ("{% set x = 'a' * 10000 %}{% set a = [x, x, x, x, x, x, x, x, x, x] %}"
                     "{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
                     "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c|string|length }}"
                     "{{ title }}", "a list, tuple or dict would make a value of"),
    "macro_output": ("{% set x = ('a' * 100000)|safe %}{% macro m() %}"
                     "{% for i in range(2000) %}{{ x }}{% endfor %}{% endmacro %}"
                     "{{ m()|length }}{{ title }}", "the template wrote more than 2,000,000"),
}
HOSTILE_TEMPLATES |= STRING_BOMBS

# check-config in a process of its own, which reports its peak memory.
_MEASURED_CHECK = """\
import resource, sys
from bot.cli import main
try:
    code = main(["check-config", "-c", sys.argv[1]])
finally:
    print(f"maxrss={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def _check_config(path: Path) -> tuple[int, str, float, int]:
    """Exit code, stderr, seconds and peak RSS (KiB) of ``newsbot check-config``."""
    started = time.monotonic()
    # The deadline is generous for a busy machine; before the limits the nested loops
    # ran for hours, so the deadline is what makes such a run fail instead of hang.
    proc = subprocess.run([sys.executable, "-c", _MEASURED_CHECK, str(path)],
                          cwd=Path(__file__).parent.parent, capture_output=True,
                          timeout=120, check=False)
    elapsed = time.monotonic() - started
    err = proc.stderr.decode("utf-8")
    [rss] = re.findall(r"^maxrss=(\d+)$", err, re.MULTILINE)
    return proc.returncode, err, elapsed, int(rss)


def _config(tmp_path: Path, templates: dict[str, str]) -> Path:
    feeds = [{"name": name, "url": f"https://example.org/{name}.xml",
              "rooms": ["#news:example.org"], "template": source}
             for name, source in templates.items()]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "matrix": {"homeserver": "https://matrix.example.org",
                   "user_id": "@newsbot:example.org", "access_token": "syt_x",
                   "device_id": "NEWSBOT"},
        "storage": {"path": str(tmp_path / "state")},
        "feeds": [{"name": "fine", "url": "https://example.org/fine.xml",
                   "rooms": ["#news:example.org"],
                   "template": "<p>{{ title }} {{ 'x' * 3 }} {{ 2 ** 10 }}</p>"}, *feeds],
    }, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def test_check_config_refuses_templates_that_eat_the_machine(tmp_path: Path) -> None:
    good_code, good_err, _, baseline = _check_config(_config(tmp_path, {}))
    assert good_code == 0, good_err
    code, err, elapsed, rss = _check_config(
        _config(tmp_path, {name: source for name, (source, _) in HOSTILE_TEMPLATES.items()}))
    assert code == 2, err
    problems = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert len(problems) == len(HOSTILE_TEMPLATES), problems
    for (name, (_, detail)), problem in zip(HOSTILE_TEMPLATES.items(), problems, strict=True):
        index = list(HOSTILE_TEMPLATES).index(name) + 1  # feeds[0] is the fine one
        assert f": feeds[{index}].template: line 1 of the template: " in problem, problem
        assert detail in problem, problem
    # Bounds for a busy machine: the two time budgets are 1 s each; 'a' * 10**8 alone
    # took 4 s and 380 MiB when it was computed at compile time.
    assert elapsed < 60
    assert rss - baseline < 64 * 1024, (rss, baseline)


# "ranges" and "calls" ran for hours without the limits: in-process, such a test could
# only hang, so the check-config test above (a process with a deadline) covers them.
@pytest.mark.parametrize("name", [n for n in HOSTILE_TEMPLATES if n not in ("ranges", "calls")])
def test_hostile_templates_are_stopped_at_post_time_too(
        name: str, caplog: pytest.LogCaptureFixture) -> None:
    # A template that passed an older check must not take the bot down when it runs:
    # it stops at its limit and the item goes out with the default template.
    source, detail = HOSTILE_TEMPLATES[name]
    caplog.set_level(logging.WARNING, logger="bot")
    started = time.monotonic()
    message = render_entry(entry(), template=source, language="fr", feed="hostile")
    assert time.monotonic() - started < 30
    assert message == render_entry(entry(), language="fr")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("feed hostile: its template failed on entry urn:1 (line 1: ")
    assert detail in warning


@pytest.mark.parametrize("name", list(STRING_BOMBS))
def test_string_bombs_are_refused_quickly_by_check_template(name: str) -> None:
    source, detail = STRING_BOMBS[name]
    started = time.monotonic()
    problem = check_template(source)
    assert time.monotonic() - started < 10    # refused before the call, not after it
    assert problem is not None
    assert problem.line == 1
    assert detail in str(problem), problem


@pytest.mark.parametrize("name", list(STRING_BOMBS))
def test_string_bombs_stop_the_render(name: str) -> None:
    source, detail = STRING_BOMBS[name]
    with pytest.raises(TemplateLimitError, match=re.escape(detail)):
        compile_template(source).render({"title": "t"}, max_chars=10_000)


def test_a_render_stops_at_its_budget() -> None:
    compiled = compile_template("{% for i in range(10000) %}{% for j in range(10000) %}"
                                "{% endfor %}{% endfor %}{{ title }}")
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match="more than 0.2 s to render"):
        compiled.render({"title": "t"}, max_chars=1000, seconds=0.2)
    assert time.monotonic() - started < 20     # stopped, not run to its end (minutes)


@pytest.mark.parametrize("source", [
    "{{ 'ab' * 3 }}{{ 3 * 'ab' }}{{ 2 ** 64 }}{{ 2.5 ** 2 }}{{ [1] * 3 }}{{ 7 * 6 }}",
    "{{ title + '!' }}{{ [1, 2] + [3] }}{{ 1 + 2 }}{{ '%05d|%-4s|%.2f' % (7, 'x', 1.5) }}",
    "{{ '{:>6}|{:.1f}'.format('x', 2.25) }}{{ '%s, %s' | format('a', 'b') }}",
    "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}.{% endif %}"
    "{% else %}none{% endfor %}{{ [1, 2, 3] | sum }}{{ title | center(30) }}",
    "{% for c in categories | sort %}{{ c ~ ';' }}{% endfor %}{{ summary | truncate(50) }}",
])
def test_ordinary_operations_are_unaffected(source: str) -> None:
    assert check_template(source) is None
    fields = {"title": "T", "categories": ("b", "a"), "summary": "s"}
    output, cut = compile_template(source).render(fields, max_chars=10_000)
    reference = jinja2.Environment().from_string(source).render(fields)
    assert (output, cut) == (reference, False)


@pytest.mark.parametrize("source", [
    "{{ 'a-b-c'.replace('-', ', ') }}|{{ title|replace('T', 'tt') }}|{{ 'xy'|replace('', '.') }}"
    "|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'abc'.translate({97: 'xyz'}) }}",
    "{{ ', '.join(categories) }}|{{ categories|join(' / ') }}|{{ [1, 2, 3]|join }}"
    "|{{ '-'.join(categories|map('upper')) }}|{{ categories|map('upper')|join('+') }}",
    "{{ title.center(11, '*') }}|{{ title|center(9) }}|{{ '7'.zfill(3) }}"
    "{{ 'ab'.ljust(4, '.') }}{{ 'ab'.rjust(4) }}|{{ '{0}-{0}:{1!s}'.format(title, 2) }}"
    "{{ '{a:>4}'.format_map({'a': 1}) }}|{{ '%(a)s %(a)s' % {'a': title} }}"
    "{{ '%s'|format(title) }}",
    "{{ ((summary ~ ' ') * 5)|wordwrap(7) }}|{{ 'a\nb'|indent(2, true) }}|{{ [1, [2, 3]]|tojson }}"
    "|{{ [1, 2, 3, 4, 5]|batch(2, 0)|list }}|{{ [1, 2, 3]|slice(2)|list }}"
    "|{{ [[1] * 3] + [[2]] }}|{{ [1, (2, 3)]|pprint }}{{ {'k': [1, 2]}|length }}",
    "{% macro m(n) %}{% for i in range(n) %}{{ i }},{% endfor %}{% endmacro %}{{ m(20) }}"
    "{% set block %}{{ title }} and {{ summary }}{% endset %}{{ block|upper }}",
])
def test_ordinary_string_operations_are_unaffected(source: str) -> None:
    assert check_template(source) is None
    fields = {"title": "T", "categories": ("b", "a"), "summary": "sum"}
    output, cut = compile_template(source).render(fields, max_chars=10_000)
    reference = jinja2.Environment().from_string(source).render(fields)
    assert (output, cut) == (reference, False)


def test_large_values_under_the_limit_are_still_allowed() -> None:
    # The bounds are sizes, not guesses: 800,000 characters is under 1,000,000.
    source = ("{{ summary.replace('a', 'bb')|length }} {{ summary|join(',')|length }} "
              "{{ summary|replace('a', 'bb')|length }} {{ [summary, summary]|length }} "
              "{{ summary.center(900000)|length }}")
    output, _ = compile_template(source).render({"summary": "a" * 400_000}, max_chars=10_000)
    assert output == "800000 799999 800000 2 900000"


# --- the plain body, derived ---------------------------------------------------------

@pytest.mark.parametrize(("markup", "page", "text"), [
    # The title's link is written once, at the end, by the "read more" line.
    ('<p><a href="https://e.org/a">Titre</a></p><p>Texte.</p>'
     '<p><a href="https://e.org/a">Lire la suite</a></p>', "https://e.org/a",
     "Titre\n\nTexte.\n\nhttps://e.org/a"),
    # Without it, the title's link is spelled out.
    ('<p><a href="https://e.org/a">Titre</a></p><p>Texte.</p>', "https://e.org/a",
     "Titre (https://e.org/a)\n\nTexte."),
    # A message that is only the link keeps its words.
    ('<p><a href="https://e.org/a">Titre</a></p>', "https://e.org/a",
     "Titre (https://e.org/a)"),
    # Any address linked twice: written at its last link only.
    ('<p><a href="https://e.org/x">un</a> et <a href="https://e.org/x">deux</a></p>', None,
     "un et deux (https://e.org/x)"),
    # Alone in its paragraph, a link to another page keeps its text.
    ('<p><a href="https://e.org/doc.pdf">Télécharger</a></p>', "https://e.org/a",
     "Télécharger (https://e.org/doc.pdf)"),
])
def test_message_text_writes_each_address_once(markup: str, page: str | None,
                                               text: str) -> None:
    assert message_text(markup, page=page) == text


# --- the size limit --------------------------------------------------------------------

def huge_issue(sections: int = 1500, *, link: str | None = LINK) -> Entry:
    sections_html = "".join(
        f"<h2>Partie {i}</h2><p>Les données de santé «&nbsp;{i}&nbsp;» sont un bien "
        f"commun&nbsp;: elles doivent rester sous le contrôle de celles et ceux qu’elles "
        f'concernent. <a href="/p/{i}">Lire</a>.</p>'
        f"<ul><li>point {i}.1</li><li>point {i}.2<ul><li>détail</li></ul></li></ul>"
        f"<table><tr><th>Date</th><th>Lieu</th></tr><tr><td>{i} janv.</td>"
        f"<td>Paris</td></tr></table>" for i in range(sections))
    return entry(title="Lettre n° 99", link=link, summary_html="",
                 content_html=f"<div><h1>Lettre n°&nbsp;99</h1>{sections_html}</div>")


def kept_sections(message: Message) -> list[int]:
    return [int(n) for n in re.findall(r"<h2>Partie (\d+)</h2>", message.html)]


@pytest.mark.parametrize("budget", [MIN_MESSAGE_BYTES, 16 * 1024, DEFAULT_MAX_MESSAGE_BYTES,
                                    MAX_MESSAGE_BYTES])
def test_a_huge_issue_is_cut_at_a_block_boundary_under_the_budget(budget: int) -> None:
    item = huge_issue()
    message = render_entry(item, feed_title="La lettre", language="fr", content="full",
                           max_bytes=budget)
    assert message_size(message) <= budget
    assert message_size(message) > budget * 0.75, "cut far more than needed"
    assert_well_formed(message.html)
    read_more = f'<p><a href="{LINK}">Lire la suite</a></p>'
    assert message.html.endswith(read_more)
    assert message.html.count(read_more) == 1
    assert message.body.endswith(f"\n\n{LINK}")
    assert message.body.startswith("Lettre n° 99\nLa lettre · 22 décembre 2025")
    # A prefix of the issue, in order, cut between blocks.
    sections = kept_sections(message)
    assert sections == list(range(len(sections)))
    before_tail = message.html.removesuffix(read_more)
    assert before_tail.endswith(("</p>", "</ul>", "</li>", "</table>", "</tr>", "</h2>",
                                 "</tbody>", "</div>"))
    assert message.body == message_text(message.html, page=LINK)


def test_a_cut_message_is_what_the_json_event_holds() -> None:
    import json
    message = render_entry(huge_issue(), language="fr", content="full")
    content = {"msgtype": "m.notice", "body": message.body,
               "format": "org.matrix.custom.html", "formatted_body": message.html}
    assert len(json.dumps(content).encode()) < DEFAULT_MAX_MESSAGE_BYTES + 200
    assert len(json.dumps(content, ensure_ascii=False).encode()) < 65536


def test_one_enormous_paragraph_is_cut_at_a_word() -> None:
    words = "Les données de santé sont un bien commun à protéger. " * 5000
    message = render_entry(entry(content_html=f"<p>{words}</p>"), language="fr",
                           content="full", max_bytes=16 * 1024)
    assert message_size(message) <= 16 * 1024
    assert_well_formed(message.html)
    paragraph = message.body.split("\n\n")[1]
    assert len(paragraph) > 4000 and paragraph.endswith("…")
    assert words.startswith(paragraph[:-1]) and words[len(paragraph) - 1] == " "
    assert message.body.endswith("\n\nhttps://interhop.org/2025/12/22/goupile")


def test_a_cut_message_without_a_link_ends_with_an_ellipsis() -> None:
    message = render_entry(huge_issue(link=None), language="en", content="full")
    assert message_size(message) <= DEFAULT_MAX_MESSAGE_BYTES
    assert message.html.endswith("<p>…</p>") and message.body.endswith("\n\n…")
    assert "Read more" not in message.html
    assert_well_formed(message.html)


def test_a_message_under_the_budget_is_not_touched() -> None:
    small = render_entry(entry(), language="fr", content="full")
    assert "Lire la suite" in small.html and small.html.count("Lire la suite") == 1
    assert small == render_entry(entry(), language="fr", content="full",
                                 max_bytes=MAX_MESSAGE_BYTES)


# --- the poller posts exactly this ---------------------------------------------------

@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SqliteStore.open(tmp_path / "state")
    try:
        yield opened
    finally:
        opened.close()


async def test_the_poller_posts_the_golden_messages_with_the_feed_settings(
        store: Store, feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_raw(feed_path, (GOLDEN / "newsletter.rss.xml").read_bytes(),
                        content_type=RSS)
    rooms = ("!fr:golden.test",)
    feed = FeedConfig(name="lettre", url=feed_server.url(feed_path), rooms=rooms,
                      interval=600.0, backfill=1, content="full")
    async with Fetcher(allow_private_networks=True) as fetcher:
        poller = feed_poller(feed, store, fetcher)
        await poller.poll_once()
    delivery = await store.next_pending(rooms[0])
    assert delivery is not None
    expected_html = (GOLDEN / "newsletter.full.html").read_text(encoding="utf-8")
    expected_body = (GOLDEN / "newsletter.full.txt").read_text(encoding="utf-8")
    header = f"===== {LINK} =====\n"
    assert expected_html == f"{header}{content_of(delivery)['formatted_body']}\n"
    assert expected_body == f"{header}{content_of(delivery)['body']}\n"


async def test_the_poller_uses_the_feed_template_and_budget(
        store: Store, feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_raw(feed_path, (GOLDEN / "newsletter.rss.xml").read_bytes(),
                        content_type=RSS)
    rooms = ("!fr:golden.test",)
    feed = FeedConfig(name="lettre", url=feed_server.url(feed_path), rooms=rooms,
                      interval=600.0, backfill=1, content="full",
                      template="<h3>{{ title }}</h3>{{ content }}",
                      max_message_bytes=MIN_MESSAGE_BYTES)
    async with Fetcher(allow_private_networks=True) as fetcher:
        poller = feed_poller(feed, store, fetcher)
        await poller.poll_once()
    delivery = await store.next_pending(rooms[0])
    assert delivery is not None
    html = str(content_of(delivery)["formatted_body"])
    assert html.startswith("<h3>Lettre n°&nbsp;42 — décembre 2025</h3>")
    assert html.endswith(f'<p><a href="{LINK}">Lire la suite</a></p>')
    assert message_size(Message(str(content_of(delivery)["body"]), html)) <= MIN_MESSAGE_BYTES
