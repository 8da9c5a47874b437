"""The real command line, run as a child process: exit codes, messages, secrets, signals.

Everything goes through ``python -m bot ...`` with the repository root as the working
directory, exactly as an operator would start it; nothing is called in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.botkit import bot_config, write_config
from tests.support import FeedServer, NewUserFactory, SynapseServer, free_port, make_items

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"

# Recognisable, long enough to be scrubbed, and in no message the bot writes by itself.
SECRET = "syt_TOPSECRET_7f3a9c1e5b2d8a4f"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEWSBOT_ACCESS_TOKEN", "NEWSBOT_PASSWORD")}
    # UTF-8 output whatever the machine's locale: the feeds' titles have accents.
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.update(extra or {})
    return env


def cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 20) -> Result:
    """``newsbot ARGS`` to completion (for tests that do not need the event loop)."""
    proc = subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=cli_env(env),
                          capture_output=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))


async def acli(*args: str, env: Mapping[str, str] | None = None,
               timeout: float = 20) -> Result:
    """``newsbot ARGS`` without blocking the loop the session's servers answer on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=ROOT, env=cli_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode("utf-8"), err.decode("utf-8"))


def line_of(text: str, fragment: str, occurrence: int | None = None) -> int:
    """The 1-based line of ``text`` containing ``fragment``: the only one, or the
    ``occurrence``-th (from 1) of several."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    if occurrence is None:
        assert len(found) == 1, (fragment, found)
        return found[0]
    return found[occurrence - 1]


def problem_lines(err: str) -> list[str]:
    """The problem lines of a config report (indented under the "N problem(s)" header)."""
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


def assert_no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err


# --- version and check-config ------------------------------------------------------------


def test_version() -> None:
    result = cli("--version")
    assert result.code == 0, result
    assert result.out.strip() == "newsbot 0.1.0"
    assert result.err == ""


def test_check_config_example_with_its_token_variable() -> None:
    result = cli("check-config", "-c", "config.example.yaml",
                 env={"NEWSBOT_ACCESS_TOKEN": SECRET})
    assert result.code == 0, result
    assert result.out.splitlines() == ["config.example.yaml: OK (1 feed(s), 1 room(s))",
                                       "  actualites: every 15 min (configured 15 min)"]
    assert SECRET not in result.out + result.err


def test_check_config_example_without_its_token_variable() -> None:
    result = cli("check-config", "-c", "config.example.yaml")
    assert result.code == 2, result
    assert result.out == ""
    line = line_of(EXAMPLE.read_text(encoding="utf-8"), "access_token: ")
    assert problem_lines(result.err) == [
        f"config.example.yaml:{line}: matrix.access_token: "
        "environment variable NEWSBOT_ACCESS_TOKEN is not set"]
    assert_no_traceback(result.err)


MANY_PROBLEMS = f"""\
# every section has something wrong
matrix:
  homeserver: "htp//matrix example.org"
  user_id: "@newsbot"
  access_token: "{SECRET}"
storage:
  path: ./state
fetch:
  allow_privat_networks: true
feeds:
  - name: news
    url: https://example.org/feed.xml
    rooms: ["#news:example.org"]
    interval: "soon"
  - name: news
    url: https://example.org/other.xml
    rooms: ["general"]
    backfill: -1
    msgtype: m.image
"""

# (a fragment of the line to blame and which of its occurrences, dotted key path, a
# fragment of the message)
MANY_EXPECTED: list[tuple[str, int | None, str, str]] = [
    ("matrix:", None, "matrix.device_id", "required with an access token"),
    ("homeserver:", None, "matrix.homeserver", '"htp//matrix example.org" is not an http(s) URL'),
    ("user_id:", None, "matrix.user_id", '"@newsbot" is not a Matrix user id'),
    ("allow_privat_networks:", None, "fetch.allow_privat_networks",
     "unknown key, did you mean 'allow_private_networks'?"),
    ("interval:", None, "feeds[0].interval", '"soon" is not a duration'),
    ("- name: news", 2, "feeds[1].name", '"news" is already used by feeds[0]'),
    ('["general"]', None, "feeds[1].rooms[0]", '"general" is not a room alias'),
    ("backfill:", None, "feeds[1].backfill", "must be at least 0 (got -1)"),
    ("msgtype:", None, "feeds[1].msgtype", '"m.image" is not one of: m.notice, m.text'),
]


def test_check_config_lists_every_problem_with_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(MANY_PROBLEMS, encoding="utf-8")
    result = cli("check-config", "-c", str(path))
    assert result.code == 2, result
    assert result.out == ""
    assert result.err.splitlines()[0] == f"{path}: {len(MANY_EXPECTED)} problem(s):"

    expected = [(f"{path}:{line_of(MANY_PROBLEMS, fragment, nth)}: {key}: ", message)
                for fragment, nth, key, message in MANY_EXPECTED]
    listed = problem_lines(result.err)
    assert len(listed) == len(expected), listed
    # Reported in file order, one line each: "FILE:LINE: dotted.key: message".
    for got, (prefix, message) in zip(listed, expected, strict=True):
        assert got.startswith(prefix) and message in got, (got, prefix, message)
    assert SECRET not in result.out + result.err
    assert_no_traceback(result.err)


@pytest.mark.parametrize(("text", "blamed", "detail"), [
    # A key indented one space too few: the error is on that key's line.
    ("matrix:\n  homeserver: https://m.example.org\n  user_id: '@bot:example.org'\n"
     " storage:\n  path: ./state\n", " storage:", "expected <block end>"),
    # An unclosed quote: the parser gives up at the end, and names where it started.
    ("matrix:\n  homeserver: https://m.example.org\n  user_id: \"@bot:example.org\n"
     "storage:\n  path: ./state\n", None, "(line 3)"),
], ids=["indentation", "unclosed-quote"])
def test_check_config_yaml_syntax_error_names_its_line(
        tmp_path: Path, text: str, blamed: str | None, detail: str) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("check-config", "-c", str(path))
    assert result.code == 2, result
    line = line_of(text, blamed) if blamed else len(text.splitlines()) + 1
    [problem] = problem_lines(result.err)
    assert problem.startswith(f"{path}:{line}: YAML syntax error: "), problem
    assert detail in problem
    assert_no_traceback(result.err)


def test_run_with_a_bad_config_lists_the_problems_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(MANY_PROBLEMS, encoding="utf-8")
    result = cli("run", "-c", str(path))
    assert result.code == 2, result
    assert result.out == ""
    assert result.err.splitlines()[0] == (
        f"{path}: the configuration has {len(MANY_EXPECTED)} problem(s):")
    listed = problem_lines(result.err)
    assert len(listed) == len(MANY_EXPECTED)
    for got, (_, _, key, message) in zip(listed, MANY_EXPECTED, strict=True):
        assert f": {key}: " in got and message in got, (got, key)
    assert_no_traceback(result.err)
    assert not (tmp_path / "state").exists()  # nothing was started


# --- secrets -----------------------------------------------------------------------------

# The secret is the token, and also pasted by mistake into every other field.
SECRET_EVERYWHERE = f"""\
matrix:
  homeserver: "{SECRET}"
  user_id: "{SECRET}"
  access_token: "{SECRET}"
  password: "{SECRET}"
  device_id: ["{SECRET}"]
  display_name: {{x: "{SECRET}"}}
  {SECRET}: 1
storage:
  path:
fetch:
  timeout: "{SECRET}"
  max_body_size: "{SECRET}"
admins: ["{SECRET}"]
language: "{SECRET}"
log_level: "{SECRET}"
feeds:
  - name: "{SECRET}"
    url: "{SECRET}"
    rooms: ["{SECRET}", "{SECRET}"]
    interval: "{SECRET}"
    msgtype: "{SECRET}"
"""

# The token from the environment, a malformed reference and a YAML error on its line.
SECRET_VIA_ENV = """\
matrix:
  homeserver: ftp://example.org
  user_id: "${NEWSBOT_ACCESS_TOKEN}"
  access_token: "${NEWSBOT_ACCESS_TOKEN}"
  device_id: "${NEWSBOT_ACCESS_TOKEN"
feeds: nope
"""
SECRET_YAML_ERROR = f"""\
matrix:
  homeserver: https://m.example.org
  access_token: "{SECRET}": oops
"""


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("text", "masked"), [
    (SECRET_EVERYWHERE, 13), (SECRET_VIA_ENV, 1), (SECRET_YAML_ERROR, 0),
], ids=["everywhere", "via-env", "yaml-error"])
def test_a_secret_never_reaches_the_output(tmp_path: Path, command: str, text: str,
                                            masked: int) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli(command, "-c", str(path), env={"NEWSBOT_ACCESS_TOKEN": SECRET})
    assert result.code == 2, result
    assert problem_lines(result.err), result.err  # it did report problems
    # The problems quoting a misplaced secret are still listed, with the value masked.
    assert result.err.count('"***"') == masked, result.err
    output = result.out + result.err
    # Nor a good part of it (a message quoting a cut value would give it away too).
    for piece in (SECRET, SECRET[5:], SECRET[:-5], SECRET[8:24]):
        assert piece not in output, output
    assert_no_traceback(result.err)


# --- preview -----------------------------------------------------------------------------


def titles_in_order(out: str, titles: list[str]) -> list[int]:
    positions = [out.find(title) for title in titles]
    assert all(p >= 0 for p in positions), (titles, out)
    return positions


async def test_preview_prints_the_newest_entries_oldest_first(
        feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(4)  # newest first: items 4, 3, 2, 1
    feed_server.set_feed(feed_path, items)
    url = feed_server.url(feed_path)
    result = await acli("preview", url, "--allow-private-networks")
    assert result.code == 0, result
    assert result.err == ""
    out = result.out
    assert out.splitlines()[0] == "Actualités: 4 entries; the newest 3 would be posted as:"
    newest = [items[2].title, items[1].title, items[0].title]  # oldest of the three first
    positions = titles_in_order(out, newest)
    assert positions == sorted(positions)
    assert items[3].title not in out
    assert out.count("Actualités · 1 January 2025") == 3
    assert "Read more" not in out and "[html]" not in out
    assert items[0].link in out


async def test_preview_in_french_with_html(feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(4)
    feed_server.set_feed(feed_path, items)
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "--language", "fr", "--html")
    assert result.code == 0, result
    out = result.out
    # French dates; the first day of a month is "1er".
    assert out.count("Actualités · 1er janvier 2025") == 6  # in each body and each HTML
    assert "January" not in out
    assert out.count("[html]") == 3
    assert f'<p><strong><a href="{items[0].link}">{items[0].title}</a></strong>' in out
    assert "<em>Actualités · 1er janvier 2025</em>" in out
    assert f'<a href="{items[0].link}">Lire la suite</a>' in out
    assert "<b>item 4</b>" in out  # the summary's markup is kept in the HTML


async def test_preview_one_entry(feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(4)
    feed_server.set_feed(feed_path, items)
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "-n", "1")
    assert result.code == 0, result
    assert "the newest 1 would be posted as:" in result.out
    assert items[0].title in result.out
    assert not any(item.title in result.out for item in items[1:])


async def test_preview_refuses_a_private_address_without_the_flag(
        feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_feed(feed_path, make_items(2))
    url = feed_server.url(feed_path)
    result = await acli("preview", url)
    assert result.code == 1, result
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith(f"refused {url}: ")  # the URL once, not twice
    assert "127.0.0.1 is a loopback address" in line
    assert "allow_private_networks" in line
    assert line.endswith("(preview: pass --allow-private-networks)")  # this command's remedy
    assert feed_server.requests(feed_path) == []  # refused before connecting


async def test_preview_of_an_html_page_fails_with_one_line(
        feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_raw(feed_path, b"<!doctype html><html><head><title>Accueil</title></head>"
                                   b"<body><p>Bienvenue</p></body></html>",
                        content_type="text/html; charset=utf-8")
    url = feed_server.url(feed_path)
    result = await acli("preview", url, "--allow-private-networks")
    assert result.code == 1, result
    assert result.out == ""
    assert result.err.splitlines() == [f"{url}: not a feed: looks like an HTML page"]


async def test_preview_with_a_built_in_template(feed_server: FeedServer,
                                               feed_path: str) -> None:
    items = make_items(3)
    feed_server.set_feed(feed_path, items)
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "--language", "fr", "--template", "compact", "--html")
    assert result.code == 0, result
    assert result.err == ""
    # One line per item: the linked title and the date.
    assert f"{items[0].title} ({items[0].link}) · 1er janvier 2025" in result.out.splitlines()
    assert f'<a href="{items[0].link}">{items[0].title}</a> · 1er janvier 2025' in result.out
    assert "Lire la suite" not in result.out and "Résumé" not in result.out


async def test_preview_with_a_template_file_and_full_content(
        tmp_path: Path, feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(2)
    items[0].content = "<h2>Le détail</h2><ul><li>un</li><li>deux</li></ul>"
    feed_server.set_feed(feed_path, items)
    template = tmp_path / "news.html"
    template.write_text("<p>{{ feed_title }} — <b>{{ title }}</b> ({{ author }})</p>\n"
                        "{{ content if full else summary }}\n", encoding="utf-8")
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "-n", "1", "--template", str(template), "--content", "full", "--html")
    assert result.code == 0, result
    assert f"Actualités — {items[0].title} (Équipe com)\n\nLe détail\n\n• un\n• deux" \
        in result.out
    assert "<h2>Le détail</h2><ul><li>un</li><li>deux</li></ul>" in result.out
    # An inline template works as well.
    inline = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "-n", "1", "--template", "<p>[{{ date }}] {{ title }}</p>")
    assert inline.code == 0, inline
    assert f"[1 January 2025] {items[0].title}" in inline.out


@pytest.mark.parametrize(("template", "message"), [
    ("fancy", "--template: 'fancy' is neither a built-in template (default, compact, full), "
              "a template file nor a template"),
    ("<b>{{ titel }}</b>", "--template: line 1: unknown field 'titel' (did you mean 'title'?)"),
])
async def test_preview_refuses_a_bad_template_before_fetching(
        feed_server: FeedServer, feed_path: str, template: str, message: str) -> None:
    feed_server.set_feed(feed_path, make_items(1))
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "--template", template)
    assert result.code == 2, result
    assert result.out == ""
    [line] = result.err.splitlines()
    assert line.startswith(message), line
    assert feed_server.requests(feed_path) == []


async def test_preview_cuts_a_long_item_as_it_would_be_posted(
        feed_server: FeedServer, feed_path: str) -> None:
    items = make_items(1)
    items[0].content = "".join(f"<h2>Partie {i}</h2><p>{'Données de santé. ' * 40}</p>"
                               for i in range(200))
    feed_server.set_feed(feed_path, items)
    result = await acli("preview", feed_server.url(feed_path), "--allow-private-networks",
                        "--content", "full", "--max-message-bytes", "8KiB", "--html")
    assert result.code == 0, result
    body, html = result.out.split("\n[html]\n")
    assert "Partie 0" in body and "Partie 199" not in body
    assert body.rstrip("-\n").endswith(f"\n\n{items[0].link}")
    assert html.rstrip("-\n").endswith(f'<p><a href="{items[0].link}">Read more</a></p>')


def test_check_config_names_a_template_error_and_its_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.yaml", {
        "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@newsbot:example.org",
                   "access_token": SECRET, "device_id": "NEWSBOT"},
        "storage": {"path": str(tmp_path / "state")},
        "feeds": [{"name": "news", "url": "https://example.org/feed.xml",
                   "rooms": ["#news:example.org"],
                   "template": "<b>{{ title }}</b>\n{{ link }\n"}],
    })
    result = cli("check-config", "-c", str(path))
    assert result.code == 2, result
    line = line_of(path.read_text(encoding="utf-8"), "template:")
    assert problem_lines(result.err) == [
        f"{path}:{line}: feeds[0].template: line 2 of the template: unexpected '}}'"]
    assert_no_traceback(result.err)


# --- run ---------------------------------------------------------------------------------


async def test_run_waits_for_an_unreachable_homeserver_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", {
        "matrix": {"homeserver": f"http://127.0.0.1:{port}", "user_id": "@newsbot:localhost",
                   "access_token": "${NEWSBOT_ACCESS_TOKEN}", "device_id": "NEWSBOT"},
        "storage": {"path": str(tmp_path / "state")},
        "feeds": [{"name": "news", "url": "https://example.org/feed.xml",
                   "rooms": ["#news:localhost"]}],
    })
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--log-format", "json", "run", "-c", str(config),
        cwd=ROOT, env=cli_env({"NEWSBOT_ACCESS_TOKEN": SECRET}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        # Two failed attempts one second apart: it retries rather than giving up.
        deadline = time.monotonic() + 10
        while sum("unreachable" in line for line in lines) < 2:
            raw = await asyncio.wait_for(proc.stderr.readline(),
                                         max(0.1, deadline - time.monotonic()))
            assert raw, f"the bot exited ({await proc.wait()}): {lines}"
            lines.append(raw.decode("utf-8").rstrip("\n"))
        assert proc.returncode is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, rest = await asyncio.wait_for(proc.communicate(), 10)
        code = await proc.wait()
        stopped_in = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, (code, lines, rest)
    assert stopped_in < 10
    lines += rest.decode("utf-8").splitlines()
    records = []
    for line in lines:
        record = json.loads(line)  # every line is JSON, nothing else on stderr
        assert isinstance(record, dict)
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), record
        records.append(record)
    unreachable = [r for r in records if "homeserver unreachable" in r["msg"]]
    assert len(unreachable) >= 2, records
    assert all(r["level"] == "warning" for r in unreachable)
    assert f"cannot connect to 127.0.0.1:{port}" in unreachable[0]["msg"]
    # It backs off between attempts instead of hammering (or giving up on) the server.
    assert unreachable[0]["msg"].endswith("; retrying in 1 s")
    assert unreachable[1]["msg"].endswith("; retrying in 2 s")
    assert records[-1]["msg"] == "stopped"
    assert not any(r["level"] in ("error", "critical") or "exc" in r for r in records)
    assert out == b""
    assert SECRET not in "\n".join(lines)


async def test_run_with_a_refused_token_exits_1_with_one_clear_line(
        synapse: SynapseServer, new_user: NewUserFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")  # a real account and device; the token is made up
    config = write_config(tmp_path / "config.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "https://example.org/feed.xml",
                "rooms": [f"#news:{synapse.server_name}"], "interval": "15m"}]))
    result = await acli("run", "-c", str(config), env={"BOT_TOKEN": SECRET}, timeout=20)
    assert result.code == 1, result
    assert result.out == ""
    assert_no_traceback(result.err)
    errors = [line for line in result.err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.err
    # "<date> <time> ERROR   bot: checking the access token: M_UNKNOWN_TOKEN ..."
    match = re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ERROR   bot: (.+)", errors[0])
    assert match, errors
    assert "access token" in match[1] and "M_UNKNOWN_TOKEN" in match[1], errors
    assert result.err.splitlines()[-1] == errors[0]  # the last word, not buried in noise
    assert SECRET not in result.err
    assert bot.access_token not in result.err
