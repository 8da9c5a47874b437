"""bot.feeds.parse: fixture feeds in tests/data/feeds/ -> ParsedFeed."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest

from bot.errors import ParseError
from bot.feeds.parse import parse_feed, parse_feed_async
from bot.model import ParsedFeed

FEEDS = Path(__file__).parent / "data" / "feeds"


def load(name: str, *, content_type: str | None = None, url: str = "") -> ParsedFeed:
    return parse_feed((FEEDS / name).read_bytes(), content_type=content_type, url=url)


def test_rss20_french_cdata_guid() -> None:
    feed = load("rss20_fr.xml", content_type="application/rss+xml; charset=utf-8",
                url="https://interhop.example/feed.xml")
    assert feed.title == "InterHop — Actualités"
    assert feed.link == "https://interhop.example/"
    assert feed.language == "fr-FR"
    assert feed.warnings == ()
    first, second = feed.entries
    assert first.entry_id == "interhop-2024-042"  # guid, whitespace stripped
    assert first.title == "Données de santé : l’hébergement & la souveraineté"
    assert first.link == "https://interhop.example/2024/donnees-sante"
    assert first.summary_html == "<p>Résumé : <em>pourquoi</em> c’est important.</p>"
    assert first.content_html.startswith("<p>Le texte complet, avec des accents : é, è, à, ç, œ.")
    assert first.author == "Équipe InterHop"  # "email (Name)" -> the name only
    assert first.categories == ("Santé", "Vie privée")  # repeated category kept once
    assert first.published == datetime(2024, 3, 5, 8, 30, tzinfo=UTC)
    assert first.updated is None  # not the published date passed off as an update
    # CDATA title with markup: plain text, tags stripped, entities decoded.
    assert second.title == "Un titre en gras & échappé"
    assert second.entry_id == "https://interhop.example/2024/titre"
    assert second.summary_html == "Texte brut, sans balise."


def test_rss10_rdf() -> None:
    feed = load("rss10_rdf.xml")
    assert feed.title == "Flux RDF"
    assert feed.language == "fr"
    assert [e.entry_id for e in feed.entries] == ["https://rdf.example/a", "https://rdf.example/b"]
    first = feed.entries[0]
    assert first.author == "Alice"
    assert first.categories == ("libre",)
    assert first.summary_html == "Premier élément"
    # dc:date is the only date RSS 1.0 has; feedparser files it under "updated".
    assert first.updated == datetime(2024, 2, 1, 11, 0, tzinfo=UTC)


def test_rss091() -> None:
    feed = load("rss091.xml")
    assert (feed.title, feed.link, feed.language) == ("Old school", "http://old.example/", "en")
    assert [e.title for e in feed.entries] == ["First story", "Second story"]
    assert feed.entries[1].summary_html == ""


def test_atom_with_xml_base() -> None:
    feed = load("atom_xmlbase.xml", content_type="application/atom+xml",
                url="https://blog.example.org/feed.atom")
    assert feed.title == "Le carnet & ses notes"  # type="html" title as plain text
    assert feed.link == "https://blog.example.org/fr/"
    assert feed.language == "fr"
    first, second = feed.entries
    assert first.entry_id == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"
    assert first.link == "https://blog.example.org/fr/billets/1.html"
    assert 'href="https://blog.example.org/fr/images/x.png"' in first.content_html
    assert first.summary_html == "a &lt; b, et c'est tout"  # type="text" escaped as HTML
    assert first.author == "Bob"
    assert first.categories == ("Logiciel libre", "santé")
    assert first.published == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert first.updated == datetime(2024, 3, 2, 8, 0, tzinfo=UTC)
    assert second.link == "https://autre.example.org/page"  # entry-level xml:base wins


def test_json_feed_11() -> None:
    feed = load("jsonfeed11.json", content_type="application/feed+json",
                url="https://json.example/feed.json")
    assert (feed.title, feed.link, feed.language) == (
        "Le flux JSON", "https://json.example/", "fr-FR")
    assert [e.entry_id for e in feed.entries] == ["2", "1", "https://json.example/3"]
    assert feed.warnings == ("item 4 is not an object; skipped",)
    two, one, three = feed.entries
    assert two.content_html == "<p>Contenu <b>HTML</b></p>"
    assert two.summary_html == "Un résumé &lt; simple"
    assert two.author == "Claire, Denis"
    assert two.categories == ("santé", "libre")
    assert two.published == datetime(2024, 3, 2, 9, 0, tzinfo=UTC)
    assert two.updated == datetime(2024, 3, 2, 12, 0, tzinfo=UTC)
    assert one.link == "https://json.example/1"  # relative url resolved against the feed
    assert one.content_html == "Ligne 1<br>\nLigne 2 &amp; &lt;plus&gt;"
    assert one.published is None  # "not a date"
    assert three.title == "Sans id"


def test_json_feed_sniffed_without_content_type() -> None:
    body = json.dumps({"version": "https://jsonfeed.org/version/1", "title": "V1",
                       "items": [{"id": "a", "title": "x",
                                  "author": {"name": "Old style"}}]}).encode()
    feed = parse_feed(b"\n  " + body, content_type="text/plain")
    assert feed.entries[0].author == "Old style"  # JSON Feed 1.0 single author


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b'{"title": "x", "items": []}', "application/json",
     "not a feed: JSON without a JSON Feed version"),
    (b'{"version": "https://jsonfeed.org/version/1.1",\n "items": [,]}',
     "application/feed+json", "JSON error at line 2: Expecting value"),
    (b'["https://jsonfeed.org/version/1.1"]', "application/feed+json",
     "not a feed: JSON document is not an object"),
])
def test_json_not_a_feed(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_feed(body, content_type=content_type)
    assert str(info.value) == message


def test_no_guid_uses_link_then_content_hash() -> None:
    feed = load("no_guid.xml")
    with_link, hashed, hashed_bis = feed.entries
    assert with_link.entry_id == "https://noguid.example/avec-lien"
    assert hashed.link is None
    assert hashed.entry_id.startswith("sha256:") and len(hashed.entry_id) == 7 + 64
    assert hashed_bis.entry_id.startswith("sha256:")
    assert hashed.entry_id != hashed_bis.entry_id
    # Stable across parses, and across a move of the feed to another address.
    again = load("no_guid.xml", url="https://elsewhere.example/new/feed.xml")
    assert [e.entry_id for e in again.entries] == [e.entry_id for e in feed.entries]


def test_relative_guid_not_resolved_against_feed_url() -> None:
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
            b"<item><title>x</title><guid>12345</guid></item></channel></rss>")
    old = parse_feed(body, url="https://a.example/feeds/rss")
    new = parse_feed(body, url="https://b.example/rss.xml")
    assert old.entries[0].entry_id == new.entries[0].entry_id == "12345"
    # RSS calls guids permalinks by default, but "12345" is no link.
    assert old.entries[0].link is None


def test_duplicate_ids_keep_first_with_warning() -> None:
    feed = load("duplicate_ids.xml")
    assert [(e.entry_id, e.title) for e in feed.entries] == [
        ("same-id", "Premier"), ("other-id", "Autre")]
    assert feed.warnings == ("entry 3 repeats id 'same-id'; kept the first",)


def test_latin1_declared_iso_8859_1() -> None:
    raw = (FEEDS / "latin1.xml").read_bytes()
    assert "é".encode("latin-1") in raw  # the fixture really is Latin-1
    for content_type in (None, "application/rss+xml", "text/xml"):
        feed = parse_feed(raw, content_type=content_type)
        assert feed.title == "Été à la mer"
        assert feed.entries[0].title == "Français : élève, naïve"
        assert feed.entries[0].summary_html == "Café"


def test_html_page_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="^not a feed: looks like an HTML page$"):
        load("html_page.html", content_type="text/html; charset=utf-8")
    with pytest.raises(ParseError, match="^not a feed: looks like an HTML page$"):
        load("html_page.html")  # sniffed, without the content type


@pytest.mark.parametrize("body", [b"", b"  \n\t "])
def test_empty_body_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError, match="^empty body$"):
        parse_feed(body)


def test_garbage_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="^not a feed: no RSS, Atom or JSON Feed structure"):
        parse_feed(b"\x00\x01 this is not xml at all")
    with pytest.raises(ParseError, match="^not a feed: no RSS, Atom or JSON Feed structure"):
        parse_feed(b'<?xml version="1.0"?><config><a>1</a></config>')


def test_truncated_before_any_entry_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="^XML error at line 7: unclosed token$"):
        load("truncated.xml")


def test_minor_error_with_entries_is_a_warning() -> None:
    feed = load("broken_with_entries.xml")
    assert [e.entry_id for e in feed.entries] == ["1", "2"]
    assert feed.entries[0].summary_html == "Fish & chips"
    assert feed.warnings == (
        "XML error at line 7: not well-formed (invalid token); read with the lenient parser",)


def test_valid_feed_without_entries_is_empty_not_an_error() -> None:
    body = (b'<?xml version="1.0"?><rss version="2.0"><channel><title>Rien</title>'
            b"<link>https://r.example/</link><description>x</description></channel></rss>")
    feed = parse_feed(body, content_type="text/plain")  # odd type, no warning for it
    assert (feed.title, feed.entries, feed.warnings) == ("Rien", (), ())


def test_garbage_dates_are_none_far_future_kept() -> None:
    feed = load("bad_dates.xml")
    garbage, future, only_published = feed.entries
    assert (garbage.published, garbage.updated) == (None, None)
    assert future.published == datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert only_published.published == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert only_published.updated is None
    assert feed.link is None  # feedparser's fallback to the urn: id is not a link
    assert all(e.link is None for e in feed.entries)


def test_content_only_entry_has_no_summary() -> None:
    body = (b'<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:t</id>'
            b'<entry><id>urn:1</id><title>x</title><content type="html">&lt;p&gt;long&lt;/p&gt;'
            b'</content><content type="text">short</content></entry></feed>')
    entry = parse_feed(body).entries[0]
    assert (entry.content_html, entry.summary_html) == ("<p>long</p>", "")


def test_entries_in_document_order() -> None:
    items = "".join(f"<item><title>{i}</title><guid>g{i}</guid></item>" for i in (3, 1, 2))
    body = f'<rss version="2.0"><channel><title>t</title>{items}</channel></rss>'.encode()
    assert [e.entry_id for e in parse_feed(body).entries] == ["g3", "g1", "g2"]


def test_body_is_never_taken_for_a_file_name(tmp_path: Path) -> None:
    # feedparser.parse(bytes) opens the bytes as a path if such a file exists.
    secret = tmp_path / "secret.xml"
    secret.write_text('<rss version="2.0"><channel><title>SECRET</title>'
                      "<item><title>s</title></item></channel></rss>")
    with pytest.raises(ParseError):
        parse_feed(str(secret).encode())


def test_external_entities_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    body = (f'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>'
            '<rss version="2.0"><channel><title>t&xxe;</title>'
            "<item><title>a&xxe;b</title><guid>1</guid></item></channel></rss>").encode()
    feed = parse_feed(body)
    assert "TOP-SECRET" not in repr(feed)
    assert feed.entries[0].title == "ab"


def test_billion_laughs_is_cut_short() -> None:
    defs = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    body = (f'<?xml version="1.0"?><!DOCTYPE rss [{defs}]><rss version="2.0"><channel>'
            "<title>t</title><item><title>&l9;</title><guid>1</guid></item>"
            "</channel></rss>").encode()
    start = time.perf_counter()
    feed = parse_feed(body)
    assert time.perf_counter() - start < 5
    # expat refuses the amplification; the lenient parser leaves the entity unexpanded.
    assert len(feed.entries[0].title) < 100
    assert feed.warnings and "amplification" in feed.warnings[0]


async def test_async_runs_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    body = (FEEDS / "rss20_fr.xml").read_bytes()
    threads: list[int] = []
    real_parse = feedparser.parse

    def recording_parse(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(feedparser, "parse", recording_parse)
    feed = await parse_feed_async(body, content_type="application/rss+xml")
    assert threads and threads[0] != threading.get_ident()  # not the event loop's thread
    assert feed == parse_feed(body, content_type="application/rss+xml")


def test_ten_thousand_entries_in_reasonable_time() -> None:
    item = ("<item><title>Article {0} &amp; co</title><link>https://b.example/{0}</link>"
            "<guid>https://b.example/{0}</guid><pubDate>Mon, 04 Mar 2024 18:00:00 GMT</pubDate>"
            "<description><![CDATA[<p>Résumé <b>{0}</b>.</p>]]></description></item>")
    def document(count: int) -> bytes:
        return ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
                '<title>B</title>' + "".join(item.format(i) for i in range(count))
                + "</channel></rss>").encode()

    def timed(count: int) -> tuple[float, ParsedFeed]:
        start = time.process_time()
        parsed = parse_feed(document(count))
        return time.process_time() - start, parsed

    small, _ = timed(1_000)
    elapsed, feed = timed(10_000)
    assert len(feed.entries) == 10_000
    assert feed.entries[0].entry_id == "https://b.example/0"
    assert feed.entries[-1].entry_id == "https://b.example/9999"
    # Linear, whatever the machine's speed: ten times the entries, not a hundred times
    # the time (CPU time of this process, so other work on the machine does not count).
    assert elapsed < 30 * max(small, 0.01), f"1,000: {small:.2f} s, 10,000: {elapsed:.2f} s"


# --- issue 10: only web links and bounded titles leave the parser -------------------------

HOSTILE = Path(__file__).parent / "data" / "hostile"
FEED_URL = "https://feeds.example/hostile/feed"


@pytest.mark.parametrize(("name", "content_type", "kept"), [
    ("unsafe_links_rss.xml", "application/rss+xml",
     {"links-images": "https://hostile.example/images",
      "links-safe": "https://hostile.example/sain"}),
    ("unsafe_links.atom", "application/atom+xml",
     # A hostile xml:base leaves the relative link to the feed's own address.
     {"atom-base": "https://feeds.example/hostile/page",
      "atom-safe": "https://hostile.example/atom/sain"}),
    ("unsafe_links.json", "application/feed+json",
     {"json-images": "https://hostile.example/json/images",
      "json-safe": "https://hostile.example/json/sain"}),
    ("unsafe_html_rss.xml", "application/rss+xml", None),
    ("unsafe_html_atom.atom", "application/atom+xml", None),
    ("unsafe_html.json", "application/feed+json", None),
])
def test_only_web_links_leave_the_parser(name: str, content_type: str,
                                         kept: dict[str, str] | None) -> None:
    # javascript:, data:, vbscript:, in mixed case, behind spaces, tabs, newlines, control
    # characters or character references: none is an entry's, a feed's or an image's link.
    feed = parse_feed((HOSTILE / name).read_bytes(), content_type=content_type, url=FEED_URL)
    links = [feed.link] + [e.link for e in feed.entries] + [e.image_url for e in feed.entries]
    for link in links:
        assert link is None or link.startswith(("https://", "http://")), (name, link)
        assert link is None or ("script:" not in link and "data:" not in link), (name, link)
    if kept is not None:
        assert {e.entry_id: e.link for e in feed.entries if e.link} == kept
        assert all(e.image_url is None for e in feed.entries)
        assert len(feed.entries) == len(kept) + {"unsafe_links_rss.xml": 8,
                                                 "unsafe_links.atom": 5,
                                                 "unsafe_links.json": 5}[name]


def test_cleaning_a_link_never_changes_an_id() -> None:
    # An entry known by its link (no guid) keeps the id it always had.
    body = (b"<rss version='2.0'><channel><title>t</title>"
            b"<item><title>a</title><link>JaVaScRiPt:alert(1)</link></item>"
            b"<item><title>b</title><link>https://example.org/b c</link></item>"
            b"</channel></rss>")
    first, second = parse_feed(body, content_type="application/rss+xml").entries
    assert (first.entry_id, first.link) == ("JaVaScRiPt:alert(1)", None)
    assert (second.entry_id, second.link) == ("https://example.org/b c",
                                              "https://example.org/b%20c")


def test_titles_are_bounded_when_parsed() -> None:
    # A 70,000-character title gave a 140 kB digest: what is stored is bounded too.
    long = "mot " * 17_500
    rss = (f"<rss version='2.0'><channel><title>{long}</title><item><guid>1</guid>"
           f"<title>{long}</title><link>https://example.org/1</link></item>"
           f"<item><guid>2</guid><title>{'x' * 70_000}</title></item></channel></rss>")
    json_feed = json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": long,
                            "items": [{"id": "1", "title": long, "content_text": "t"}]})
    for feed in (parse_feed(rss.encode(), content_type="application/rss+xml"),
                 parse_feed(json_feed.encode(), content_type="application/feed+json")):
        assert feed.title is not None and len(feed.title) <= 301
        for entry in feed.entries:
            assert len(entry.title) <= 301 and entry.title.endswith("…"), len(entry.title)
    first = parse_feed(rss.encode(), content_type="application/rss+xml").entries[0]
    assert first.title.endswith("mot mot…") and first.entry_id == "1"


def test_deeply_nested_entry_parses() -> None:
    feed = parse_feed((HOSTILE / "deep_nesting.xml").read_bytes(),
                      content_type="application/rss+xml", url=FEED_URL)
    assert [e.entry_id for e in feed.entries] == ["deep-divs", "deep-neighbour"]
    assert feed.entries[0].summary_html.count("<div>") == 3000
