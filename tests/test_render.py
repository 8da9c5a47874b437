"""Rendering: hostile feed HTML is neutralised, and members read clean French or English."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import pytest

from bot.model import Entry, Message
from bot.render import ALLOWED_TAGS, format_date, html_to_text, render_entry, sanitize_html

NBSP = "\u00a0"
NNBSP = "\u202f"
LINK = "https://interhop.org/2025/12/22/goupile"


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
