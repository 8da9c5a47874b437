"""Feed lists in and out as OPML 2.0: ``newsbot feeds export`` and ``newsbot feeds import``.

Export writes every feed the bot polls (the configured ones, then those added by room
command, from the state) as an ``<outline>`` whose ``text``/``title`` is the feed's name;
newsbot's own settings (rooms, interval...) ride in the standard ``category`` attribute
as ``/newsbot/KEY/VALUE`` paths, which other readers show as tags and import reads back.
No credential leaves in a URL: userinfo and query parameters named like secrets are left
out, a URL made from ``${VAR}`` is not exported, and each is named on stderr.

Import reads OPML from anyone, so it is hostile until proved otherwise:

1. at most ``MAX_OPML_BYTES``; a DTD or an entity declaration is refused (OPML needs
   none, and entity expansion is the classic XML bomb);
2. at most ``MAX_OUTLINES`` outlines nested at most ``MAX_DEPTH`` deep, checked before
   listparser sees the text (it copies the outline path of every feed: an unclosed
   outline per feed made it quadratic, 281 MiB for 320 KB);
3. each URL must be http(s) with a host a fetch could use (no whitespace, credentials in
   the way of nothing, ``javascript:`` refused); each name becomes a valid feed name;
4. every value is written with ``$`` doubled, so no ``${VAR}`` in an OPML file can pull
   an environment variable (a token) into a URL once merged;
5. the entries then pass the configuration's own loader; a feed it refuses is left out,
   with its reasons.
"""

from __future__ import annotations

import codecs
import os
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.config import Config, FeedConfig, load_config_text
from bot.errors import ConfigError, NewsbotError
from bot.feeds.netguard import blocked_reason, host_problem, parse_ip
from bot.template_sources import BUILTIN_TEMPLATES
from bot.urls import url_for_moderators

MAX_OPML_BYTES = 2 * 1024 * 1024
MAX_OUTLINES = 10_000
MAX_DEPTH = 32
MAX_URL_CHARS = 2048
MAX_NAME_CHARS = 64

# Settings carried in categories: every feed key but the three an outline has its own
# place for. (name, url and rooms; a room is a category of its own per room.)
_SETTINGS = tuple(f.name for f in fields(FeedConfig) if f.name not in ("name", "url", "rooms"))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(FeedConfig)
                             if f.default is not MISSING}
_INT_SETTINGS = frozenset(f.name for f in fields(FeedConfig) if f.type == "int")
_BOOL_SETTINGS = frozenset(f.name for f in fields(FeedConfig) if f.type == "bool")
_SIZE_SETTINGS = frozenset({"max_message_bytes"})
_DURATION_SETTINGS = frozenset({"interval"})

# A query parameter whose name says it is a credential (token=, api_key=, sig=...).
_SECRET_PARAM = re.compile(r"token|key|secret|pass|auth|sig|session|credential",
                           re.IGNORECASE)
# What html.parser could take for an outline's start or end tag, any prefix, quotes
# respected; a superset, so the depth counted here is never below listparser's.
_OUTLINE_TAG = re.compile(
    r"<\s*(/)?\s*(?:[^\s<>:/\"']+:)?outline\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*?(/)?\s*>",
    re.IGNORECASE)
_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]{1,40})[\"']")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_CATEGORY_SAFE = "#!:@.-_~+=;&?*"    # kept readable; '/', ',' and '%' are encoded
# libyaml's emitter when PyYAML has it: the pure-Python one took 2 s per 1,000 feeds.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class OpmlError(NewsbotError):
    """The OPML file is refused as a whole; the message says why."""


@dataclass(frozen=True, slots=True)
class ListedFeed:
    """One feed of a list: what an OPML outline holds, newsbot's settings as text."""

    name: str
    url: str
    rooms: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)


# --- export -------------------------------------------------------------------------------


def export_opml(config: Config) -> tuple[str, list[str]]:
    """The OPML document of every feed the bot polls, and notes for the operator (what
    was left out of a URL, what could not be exported)."""
    notes: list[str] = []
    written = _written_urls(config)
    listed = []
    for feed in config.feeds:
        if "${" in written.get(feed.name, ""):
            # The variable may well be a secret (a key in the query, a private path).
            notes.append(f"feed {feed.name}: its URL is made from environment variables "
                         "(${...}), which may hold secrets: not exported; add it by hand")
            continue
        listed.append(_from_config(feed, notes))
    configured = {feed.name for feed in config.feeds}
    listed.extend(ListedFeed(feed.name, _safe_url(feed.name, feed.url, notes), feed.rooms,
                             feed.settings)
                  for feed in _state_feeds(config, notes) if feed.name not in configured)
    return render_opml(listed), notes


def render_opml(feeds: Sequence[ListedFeed]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<opml version="2.0">',
             "  <head>",
             "    <title>newsbot feeds</title>",
             f"    <dateCreated>{escape(formatdate(usegmt=True))}</dateCreated>",
             "  </head>",
             "  <body>"]
    for feed in feeds:
        categories = [f"/newsbot/room/{_category_value(room)}" for room in feed.rooms]
        categories += [f"/newsbot/{key}/{_category_value(value)}"
                       for key, value in feed.settings.items()]
        attrs = {"type": "rss", "text": feed.name, "title": feed.name, "xmlUrl": feed.url}
        if categories:
            attrs["category"] = ",".join(categories)
        rendered = " ".join(f"{key}={quoteattr(value)}" for key, value in attrs.items())
        lines.append(f"    <outline {rendered}/>")
    lines += ["  </body>", "</opml>", ""]
    return "\n".join(lines)


def _category_value(value: str) -> str:
    return quote(value, safe=_CATEGORY_SAFE)


def _from_config(feed: FeedConfig, notes: list[str]) -> ListedFeed:
    settings: dict[str, str] = {"interval": _duration_text(feed.interval)}
    for key in _SETTINGS:
        value = getattr(feed, key)
        if key == "interval" or value is None or value == _DEFAULTS.get(key):
            continue
        if key == "template":
            if value not in BUILTIN_TEMPLATES:
                notes.append(f"feed {feed.name}: its own Jinja2 template is not exported; "
                             "copy its template (or template_file) by hand")
                continue
        settings[key] = _setting_text(key, value)
    return ListedFeed(feed.name, _safe_url(feed.name, feed.url, notes), feed.rooms, settings)


def _setting_text(key: str, value: Any) -> str:
    if key in _DURATION_SETTINGS:
        return _duration_text(float(value))
    if key in _SIZE_SETTINGS:
        return _size_text(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _duration_text(seconds: float) -> str:
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def _size_text(size: int) -> str:
    for unit, factor in (("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _safe_url(name: str, url: str, notes: list[str]) -> str:
    """``url`` without credentials: no userinfo, no query parameter named like a secret."""
    safe = url_for_moderators(url)
    if safe != url:
        notes.append(f"feed {name}: the user name and password in its URL are left out of "
                     "the export; add them back after importing")
    try:
        parts = urlsplit(safe)
    except ValueError:
        return safe
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = [key for key, _ in pairs if _SECRET_PARAM.search(key)]
    if secret:
        notes.append(f"feed {name}: the query parameter(s) {', '.join(sorted(set(secret)))} "
                     "of its URL look like credentials and are left out of the export; "
                     "add them back after importing")
        kept = urlencode([(k, v) for k, v in pairs if k not in secret])
        safe = urlunsplit(parts._replace(query=kept))
    return safe


def _written_urls(config: Config) -> dict[str, str]:
    """Each feed's URL as written in the file, before ``${VAR}`` expansion."""
    if config.source is None:
        return {}
    try:
        data = yaml.safe_load(config.source.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    feeds = data.get("feeds") if isinstance(data, dict) else None
    if not isinstance(feeds, list):
        return {}
    return {str(f["name"]): str(f["url"]) for f in feeds
            if isinstance(f, dict) and "name" in f and "url" in f}


def _state_feeds(config: Config, notes: list[str]) -> list[ListedFeed]:
    """Feeds added by room command, read from the state without changing it."""
    from bot.store.sqlite import DB_FILENAME
    path = config.storage.path / DB_FILENAME
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name, url, room, interval FROM room_feed "
                                "ORDER BY added_at").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        notes.append(f"{path}: cannot read the feeds added by command ({exc}); only the "
                     "configured feeds are exported")
        return []
    return [ListedFeed(str(name), str(url), (str(room),),
                       {"interval": _duration_text(float(interval))})
            for name, url, room, interval in rows]


# --- import: reading ----------------------------------------------------------------------


def read_opml_file(path: Path) -> list[ListedFeed]:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_OPML_BYTES + 1)
    except OSError as exc:
        raise OpmlError(f"{path}: cannot read: {exc.strerror or 'error'}") from None
    return read_opml(data, source=str(path))


def read_opml(data: bytes, *, source: str = "<opml>") -> list[ListedFeed]:
    """The feeds of an OPML document, as written (names and URLs not yet checked)."""
    import listparser
    if len(data) > MAX_OPML_BYTES:
        raise OpmlError(f"{source}: larger than {MAX_OPML_BYTES // (1024 * 1024)} MiB; "
                        "refused (a feed list is far smaller)")
    text = _decode(data, source)
    if _DECLARATION.search(text):
        raise OpmlError(f"{source}: declares a DTD or entities (<!DOCTYPE>/<!ENTITY>); OPML "
                        "needs none, and entity expansion can exhaust memory: refused")
    _check_outlines(text, source)
    try:
        # bytes, never a str: listparser fetches a str that looks like a URL.
        parsed = listparser.parse(text.encode("utf-8"))
    except Exception as exc:    # a parser's surprise on hostile input is a refusal
        raise OpmlError(f"{source}: cannot be read as OPML ({type(exc).__name__})") from None
    if not str(parsed.get("version", "")).startswith("opml"):
        raise OpmlError(f"{source}: not an OPML file (no <opml> root)")
    feeds = []
    for found in parsed.get("feeds", []):
        rooms, settings = _newsbot_categories(found.get("categories", []))
        feeds.append(ListedFeed(str(found.get("title", "")), str(found.get("url", "")),
                                rooms, settings))
    return feeds


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    declared = _XML_ENCODING.match(data)
    if declared is not None:
        try:
            return data.decode(codecs.lookup(declared.group(1).decode("ascii")).name)
        except (LookupError, UnicodeDecodeError):
            pass
    raise OpmlError(f"{source}: not UTF-8 text (nor in the encoding its XML declaration "
                    "names)")


def _check_outlines(text: str, source: str) -> None:
    depth = count = 0
    for match in _OUTLINE_TAG.finditer(text):
        if match.group(1):
            depth = max(depth - 1, 0)
            continue
        count += 1
        if count > MAX_OUTLINES:
            raise OpmlError(f"{source}: more than {MAX_OUTLINES} outlines; refused (split "
                            "the list)")
        if not match.group(2):
            depth += 1
            if depth > MAX_DEPTH:
                raise OpmlError(f"{source}: outlines nested more than {MAX_DEPTH} deep; "
                                "refused")


def _newsbot_categories(categories: Iterable[Sequence[str]],
                        ) -> tuple[tuple[str, ...], dict[str, str]]:
    rooms: list[str] = []
    settings: dict[str, str] = {}
    for path in categories:
        if len(path) != 3 or path[0] != "newsbot":
            continue        # another reader's folder or tag
        key, value = path[1], unquote(path[2])
        if key == "room":
            if value not in rooms:
                rooms.append(value)
        else:
            settings[key] = value
    return tuple(rooms), settings


# --- import: checking and writing YAML ----------------------------------------------------


@dataclass(slots=True)
class ImportPlan:
    """What an import adds, and what it leaves out and why."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    present: list[str] = field(default_factory=list)    # already configured, one line each
    refused: list[str] = field(default_factory=list)    # unusable, one line each, and why
    notes: list[str] = field(default_factory=list)      # settings dropped, warnings


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a feed's URL, or None."""
    shown = url if len(url) <= 80 else url[:77] + "..."
    if not url:
        return "has no xmlUrl"
    if len(url) > MAX_URL_CHARS:
        return f"its URL is longer than {MAX_URL_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "its URL contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return f"{shown!r} is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{shown!r} is not an http(s) URL"
    host = parts.hostname or ""
    if not host:
        return f"{shown!r} has no host"
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return f"{shown!r}: its host is not a valid domain name"
    problem = host_problem(ascii_host)
    return f"{shown!r}: {problem}" if problem else None


def plan_import(feeds: Sequence[ListedFeed], *, rooms: Sequence[str] = (),
                existing_names: Iterable[str] = (), existing_urls: Iterable[str] = (),
                ) -> ImportPlan:
    """The YAML entries for ``feeds``: names made valid and unique, unsafe URLs and
    feeds already configured left out, each entry checked by the configuration's loader.
    ``rooms`` serve feeds whose outline names none."""
    plan = ImportPlan()
    names, urls = set(existing_names), set(existing_urls)
    taken = set(names)
    candidates: list[tuple[str, dict[str, Any]]] = []
    for feed in feeds:
        label = _label(feed)
        problem = url_problem(feed.url)
        if problem is not None:
            plan.refused.append(f"{label}: {problem}")
            continue
        if feed.url in urls:
            plan.present.append(f"{label}: {feed.url} is already configured")
            continue
        name = feed_name(feed.name, feed.url)
        if name in names:
            plan.present.append(f"{label}: a feed named {name!r} is already configured")
            continue
        if not (feed.rooms or rooms):
            plan.refused.append(f"{label}: the file names no room for it; pass --room "
                                "'#room:server'")
            continue
        name = _unique(name, taken)
        taken.add(name)
        urls.add(feed.url)
        entry: dict[str, Any] = {"name": name, "url": feed.url,
                                 "rooms": list(feed.rooms or rooms)}
        for key, value in feed.settings.items():
            typed = _typed_setting(key, value)
            if typed is None:
                plan.notes.append(f"feed {name}: setting {key!r} ignored (newsbot does not "
                                  "take it from a file)")
                continue
            entry[key] = typed
        private = _private_host(feed.url)
        if private:
            plan.notes.append(f"feed {name}: its host is {private}; it is fetched only with "
                              "fetch.allow_private_networks")
        candidates.append((label, _dollars_doubled(entry)))
    plan.entries = _loader_checked(candidates, plan)
    return plan


def _label(feed: ListedFeed) -> str:
    title = feed.name.strip() or feed.url
    title = "".join(c if c.isprintable() else "?" for c in title)
    return repr(title if len(title) <= 60 else title[:57] + "...")


def feed_name(title: str, url: str) -> str:
    """A valid feed name from an outline's title (or, without one, its URL's host)."""
    for source in (title, _url_words(url), "feed"):
        ascii_text = unicodedata.normalize("NFKD", source).encode("ascii", "ignore").decode()
        slug = re.sub(r"[^a-z0-9_.-]+", "-", ascii_text.lower())
        slug = re.sub(r"-{2,}", "-", slug).lstrip("-_.")[:MAX_NAME_CHARS].rstrip("-_.")
        if _NAME_RE.fullmatch(slug):
            return slug
    return "feed"


def _url_words(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    host = (parts.hostname or "").removeprefix("www.")
    return f"{host} {parts.path}".strip()


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _typed_setting(key: str, value: str) -> Any:
    """A category's text as the YAML value the loader expects, or None for a key newsbot
    does not import (an unknown one, or a template that is not a built-in's name)."""
    if key not in _SETTINGS:
        return None
    if key == "template" and value not in BUILTIN_TEMPLATES:
        return None     # Jinja2 source from a stranger's file: not taken
    if key in _BOOL_SETTINGS and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if key in _INT_SETTINGS and key not in _SIZE_SETTINGS and value.isdigit():
        return int(value)
    return value


def _private_host(url: str) -> str | None:
    ip = parse_ip(urlsplit(url).hostname or "")
    if ip is not None:
        return blocked_reason(ip)
    host = (urlsplit(url).hostname or "").lower()
    return "a loopback address" if host == "localhost" or host.endswith(".localhost") \
        else None


def _dollars_doubled(value: Any) -> Any:
    """``$`` as ``$$``: the loader reads ``${VAR}`` in a value as the environment's."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_dollars_doubled(v) for v in value]
    if isinstance(value, dict):
        return {k: _dollars_doubled(v) for k, v in value.items()}
    return value


# A configuration the loader accepts around the feeds, so that they are checked alone.
_PROBE = {"matrix": {"homeserver": "https://matrix.example.org",
                     "user_id": "@newsbot:example.org",
                     "access_token": "probe-token-0123456789", "device_id": "PROBE"},
          "storage": {"path": "state"}}
_FEED_PROBLEM = re.compile(r"^[^\n]*?:\d+: feeds\[(\d+)\](?:\.(\S+?))?: (.*)$")


def _loader_checked(candidates: list[tuple[str, dict[str, Any]]],
                    plan: ImportPlan) -> list[dict[str, Any]]:
    """The entries the configuration's loader accepts; the others become skipped lines
    with its reasons."""
    entries = [entry for _, entry in candidates]
    if not entries:
        return []
    text = yaml.dump({**_PROBE, "feeds": entries}, Dumper=_DUMPER, allow_unicode=True,
                     sort_keys=False)
    try:
        _, warnings = load_config_text(text, source="opml", environ={})
    except ConfigError as exc:
        refused: dict[int, list[str]] = {}
        for problem in exc.problems:
            found = _FEED_PROBLEM.match(problem)
            if found is None:
                raise OpmlError(f"the feeds cannot be imported: {problem}") from None
            key = f"{found.group(2)}: " if found.group(2) else ""
            refused.setdefault(int(found.group(1)), []).append(f"{key}{found.group(3)}")
        for index, reasons in sorted(refused.items()):
            plan.refused.append(f"{candidates[index][0]}: {'; '.join(reasons)}")
        kept = [entry for i, entry in enumerate(entries) if i not in refused]
        return _loader_checked([c for i, c in enumerate(candidates) if i not in refused],
                               plan) if kept else []
    for warning in warnings:
        found = _FEED_PROBLEM.match(warning)
        if found is not None:
            name = entries[int(found.group(1))]["name"]
            key = f"{found.group(2)}: " if found.group(2) else ""
            plan.notes.append(f"feed {name}: {key}{found.group(3)}")
    return entries


def import_comment(path: Path) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in path.name)
    return f"imported from {shown} by newsbot feeds import"


def entries_yaml(entries: Sequence[dict[str, Any]], indent: int = 2) -> str:
    """The entries as items of a block list, the dash ``indent`` columns in."""
    text = yaml.dump(list(entries), Dumper=_DUMPER, allow_unicode=True, sort_keys=False,
                     default_flow_style=None, width=1000)
    pad = " " * indent
    return "".join(pad + line if line.strip() else line
                   for line in text.splitlines(keepends=True))


# --- import: merging into a file ---------------------------------------------------------


def configured_feeds(text: str) -> tuple[set[str], set[str]]:
    """The names and URLs of the feeds a configuration's text lists (even an invalid one)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return set(), set()
    feeds = data.get("feeds") if isinstance(data, dict) else None
    names: set[str] = set()
    urls: set[str] = set()
    for feed in feeds if isinstance(feeds, list) else []:
        if isinstance(feed, dict):
            if isinstance(feed.get("name"), str):
                names.add(feed["name"])
            if isinstance(feed.get("url"), str):
                urls.add(feed["url"])
    return names, urls


def merged_text(text: str, entries: Sequence[dict[str, Any]], comment: str) -> str:
    """``text`` with ``entries`` added at the end of its ``feeds:`` list, as text, so that
    every other line (and comment) stays as it was."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise OpmlError(f"not valid YAML ({exc.__class__.__name__}); fix it first") from None
    if root is not None and not isinstance(root, MappingNode):
        raise OpmlError("its top level is not a mapping of keys")
    feeds = next((value for key, value in (root.value if root is not None else [])
                  if isinstance(key, ScalarNode) and key.value == "feeds"), None)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if feeds is None:
        block = f"\nfeeds:\n  # {comment}\n{entries_yaml(entries, 2)}"
        return "".join(lines) + block
    if isinstance(feeds, ScalarNode) and feeds.tag == "tag:yaml.org,2002:null" \
            and feeds.start_mark.index == feeds.end_mark.index:
        at = feeds.start_mark.line + 1       # "feeds:" with nothing after it
        block = f"  # {comment}\n{entries_yaml(entries, 2)}"
        return "".join([*lines[:at], block, *lines[at:]])
    if not isinstance(feeds, SequenceNode) or feeds.flow_style or not feeds.value:
        raise OpmlError("its feeds: list is not written as a block list (one '- name:' "
                        "per feed); paste the entries `newsbot feeds import FILE` prints "
                        "by hand")
    dash = feeds.start_mark.column
    last_line = min(_last_content_line(feeds), len(lines) - 1)
    while last_line > feeds.start_mark.line and not lines[last_line].strip():
        last_line -= 1      # a block scalar's end mark is past its trailing blank lines
    end = feeds.end_mark
    at = end.line if end.column == 0 else end.line + 1
    at = min(at, len(lines))
    # Blank lines and comments no more indented than the dashes introduce what follows
    # (more indented, they are the last feed's own).
    while at - 1 > last_line and (not lines[at - 1].strip() or (
            lines[at - 1].lstrip().startswith("#")
            and len(lines[at - 1]) - len(lines[at - 1].lstrip()) <= dash)):
        at -= 1
    if at > 0 and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    block = f"{' ' * dash}# {comment}\n{entries_yaml(entries, dash)}"
    return "".join([*lines[:at], block, *lines[at:]])


def _last_content_line(node: Node) -> int:
    """The line of a node's last character of content (a block's own end mark is where
    what follows it starts)."""
    while isinstance(node, MappingNode | SequenceNode) and node.value and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    end = node.end_mark
    return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line


def write_config_text(path: Path, text: str) -> None:
    """Replace the file at ``path`` atomically, keeping its mode."""
    target = path.resolve()
    mode = target.stat().st_mode & 0o7777
    tmp = target.with_name(f".{target.name}.import.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
