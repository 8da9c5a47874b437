"""The configuration: one YAML file, parsed once into frozen dataclasses.

Every problem names the file line and the dotted key path, and all problems are
reported together so an operator fixes the file in one pass. Secrets (access token,
password, token file content) never appear in a problem, a warning or a repr.

Each key is declared once, as a field of the dataclasses below (MatrixConfig ... Config)
whose metadata (`_key`) says what it means, how it is read and checked; the keys each
section knows, its defaults and the README's table of keys (`key_table`) derive from that.
Checks that involve several keys belong to their section (`_SECTION_CHECKS`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .i18n import LANGUAGES
from .model import XMPP_ADDRESS_RE, XMPP_PREFIX, network_of
from .render import (
    CONTENT_MODES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SUMMARY_LENGTH,
    MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
    check_template,
)
from .template_sources import BUILTIN_TEMPLATES

__all__ = [
    "CommandsConfig", "Config", "EncryptionConfig", "FeedConfig", "FetchConfig",
    "MatrixConfig", "RoomConfig", "StorageConfig",
    "key_table", "load_config", "load_config_text", "parse_duration", "parse_size",
    "readme_with_key_table",
]


# --- value parsers ----------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_RE = re.compile(
    rf"(?:({_NUMBER})\s*d)?\s*(?:({_NUMBER})\s*h)?\s*(?:({_NUMBER})\s*m)?\s*(?:({_NUMBER})\s*s)?",
    re.IGNORECASE,
)
_DURATION_UNITS = (86400.0, 3600.0, 60.0, 1.0)
_SIZE_RE = re.compile(rf"({_NUMBER})\s*(b|kb|kib|mb|mib|gb|gib)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}


def parse_duration(text: str | int | float) -> float:
    """Seconds in "30s", "15m", "2h", "1d", "1h30m" or a bare number of seconds."""
    if isinstance(text, bool):  # bool is an int; "yes" is never a duration
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        s = text.strip()
        if re.fullmatch(_NUMBER, s):
            value = float(s)
        else:
            m = _DURATION_RE.fullmatch(s)
            if not s or m is None or not any(m.groups()):
                raise ValueError(f"not a duration: {text!r}")
            value = sum(float(g) * u for g, u in zip(m.groups(), _DURATION_UNITS, strict=True)
                        if g is not None)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a duration: {text!r}")
    return value


def parse_size(text: str | int) -> int:
    """Bytes in "5MiB", "512KiB", "2MB" or a bare number of bytes."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        value = float(text)
    else:
        m = _SIZE_RE.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"not a size: {text!r}")
        value = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    if value < 1:
        raise ValueError(f"not a size: {text!r}")
    return int(value)


# --- validation helpers -----------------------------------------------------------------

_SERVER = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?"
_USER_ID_RE = re.compile(rf"@[^\s:]+:{_SERVER}")
_ROOM_ALIAS_RE = re.compile(rf"#[^\s:]+:{_SERVER}")
# Room versions up to 11 have "!opaque:server"; version 12 dropped the server part.
_ROOM_ID_RE = re.compile(rf"![^\s:]+(?::{_SERVER})?")
_FEED_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_ENV_RE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER_RE = re.compile(
    r"^\s*(?:<.*>|x{3,}|\.{3}|todo|fixme"
    r"|your[-_ ](?:matrix[-_ ])?(?:access[-_ ])?(?:token|password|secret)(?:[-_ ]here)?)\s*$"
    r"|(?:^|[^a-z])change[-_ ]?me(?:$|[^a-z])|(?:^|[^a-z])replace[-_ ]?me(?:$|[^a-z])",
    re.IGNORECASE,
)
_SECRET_LINE_RE = re.compile(r"^\s*-?\s*(?:access_token|password)\s*:\s*(.+?)\s*$",
                             re.MULTILINE)

_MSGTYPES = ("m.notice", "m.text")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

_TAG_STR = "tag:yaml.org,2002:str"
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_NULL = "tag:yaml.org,2002:null"

_JOIN_RULES = ("public", "knock", "invite")
_HISTORY = ("shared", "world_readable", "joined", "invited")
_ALIAS_LOCALPART_RE = re.compile(r"#?([^\s:#]+)")
_MXC_RE = re.compile(r"mxc://[^\s/]+/[^\s/]+")
_TEMPLATE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

_MIN_INTERVAL = 1.0
_RECOMMENDED_INTERVAL = 60.0
# Scrubbing very short strings would mangle unrelated words in messages.
_MIN_SCRUB_LEN = 6


def _close_matches(word: str, known: Sequence[str]) -> list[str]:
    """The likeliest of ``known`` that ``word`` misspells, if any. difflib is loaded with
    the first mistake: a bot whose config is right never holds it (bench line 6)."""
    import difflib

    return difflib.get_close_matches(word, known, n=1, cutoff=0.6)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _quote(text: str) -> str:
    short = text if len(text) <= 80 else text[:77] + "..."
    return json.dumps(short, ensure_ascii=False)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return "a single value"


def _is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, ScalarNode) and node.tag == _TAG_NULL)


def _web_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return f"{_quote(url)} is not a valid URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"{_quote(url)} is not an http(s) URL"
    return None


class _Reader:
    """Walks the YAML node tree once, collecting every problem with its line."""

    def __init__(self, source: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.environ = environ
        self._problems: list[tuple[int, str]] = []
        self._warnings: list[tuple[int, str]] = []
        self.secrets: set[str] = set()
        self.constructor = SafeConstructor()
        self._key_nodes: dict[int, Node] = {}  # id(value node) -> its key node
        # The bot's server once matrix.user_id is read: a room alias given without one is
        # on it.
        self.server: str | None = None

    # -- reporting

    def _format(self, node: Node | None, path: str, message: str) -> tuple[int, str]:
        line = node.start_mark.line + 1 if node is not None else 1
        where = f"{path}: " if path else ""
        return line, f"{self.source}:{line}: {where}{message}"

    def problem(self, node: Node | None, path: str, message: str) -> None:
        self._problems.append(self._format(node, path, message))

    def warn(self, node: Node | None, path: str, message: str) -> None:
        self._warnings.append(self._format(node, path, message))

    def _scrub(self, messages: list[tuple[int, str]]) -> list[str]:
        # Defence in depth: no message is built from a secret, but a secret pasted into
        # the wrong field (or a YAML error quoting a character) must not leak either.
        secrets = sorted((s for s in self.secrets if len(s) >= _MIN_SCRUB_LEN),
                         key=len, reverse=True)
        out = []
        for _, text in sorted(messages, key=lambda item: item[0]):
            for secret in secrets:
                text = text.replace(secret, "***")
            out.append(text)
        return out

    @property
    def problems(self) -> list[str]:
        return self._scrub(self._problems)

    @property
    def warnings(self) -> list[str]:
        return self._scrub(self._warnings)

    # -- structure

    def mapping(self, node: Node, path: str, known: Sequence[str]) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.problem(node, path, f"expected a mapping (key: value), got {_kind(node)}")
            return None
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value != "<<":
                # PyYAML would silently keep the last value; a duplicate is a mistake.
                if key_node.value in seen:
                    self.problem(key_node, _join(path, key_node.value),
                                 f"duplicate key (first set on line {seen[key_node.value]})")
                else:
                    seen[key_node.value] = key_node.start_mark.line + 1
        try:
            # Support YAML merge keys ("<<: *defaults"); merged entries come first so
            # the mapping's own keys override them below.
            self.constructor.flatten_mapping(node)
        except ConstructorError as exc:
            self.problem(node, path, f"invalid merge key: {exc.problem}")
            return None
        result: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag not in (_TAG_STR, _TAG_INT):
                self.problem(key_node, path, "keys must be plain words")
                continue
            key = key_node.value
            if key not in known:
                hint = _close_matches(key, known)
                suggestion = f", did you mean {hint[0]!r}?" if hint else ""
                self.problem(key_node, _join(path, key), f"unknown key{suggestion}")
                continue
            result[key] = value_node
            self._key_nodes[id(value_node)] = key_node
        return result

    def section(self, parent: dict[str, Node], parent_node: Node, path: str, key: str,
                known: Sequence[str], *, required: bool) -> tuple[dict[str, Node], Node] | None:
        """The section's entries, and the node to blame for what is missing in it.

        That node is the section's key ("matrix:"), not its first entry: an operator
        looks for "matrix" when told matrix.homeserver is missing.
        """
        node = parent.get(key)
        full = _join(path, key)
        if _is_null(node):
            if required:
                self.problem(node or parent_node, full, "required section is missing")
            return None
        assert node is not None
        items = self.mapping(node, full, known)
        return None if items is None else (items, self._key_nodes.get(id(node), node))

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.problem(node, path, f"expected a list, got {_kind(node)}")
            return None
        return list(node.value)

    # -- scalars

    def expand(self, node: ScalarNode, path: str, secret: bool) -> str | None:
        text: str = node.value
        if secret:
            self.secrets.add(text)
        if node.tag != _TAG_STR or "$" not in text:
            return text
        missing: list[str] = []
        bad = False

        def replace(m: re.Match[str]) -> str:
            nonlocal bad
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if name is None or not _ENV_NAME_RE.fullmatch(name):
                bad = True
                return ""
            value = self.environ.get(name)
            if value is None:
                missing.append(name)
                return ""
            return value

        expanded = _ENV_RE.sub(replace, text)
        for name in missing:
            self.problem(node, path, f"environment variable {name} is not set")
        if bad:
            self.problem(node, path, "malformed ${...} reference (write ${NAME}, or $$ for a "
                                     "literal dollar sign)")
        if missing or bad:
            return None
        if secret:
            self.secrets.add(expanded)
        return expanded

    def scalar(self, items: dict[str, Node], parent: Node, path: str, key: str,
               required: bool, what: str, secret: bool = False) -> tuple[str, ScalarNode] | None:
        node = items.get(key)
        full = _join(path, key)
        if _is_null(node):
            if required:
                self.problem(node or parent, full,
                             "required key is missing" if node is None else "is empty")
            return None
        if not isinstance(node, ScalarNode):
            assert node is not None
            self.problem(node, full, f"expected {what}, got {_kind(node)}")
            return None
        text = self.expand(node, full, secret)
        return None if text is None else (text, node)

    def string(self, items: dict[str, Node], parent: Node, path: str, key: str, *,
               required: bool = False, secret: bool = False) -> tuple[str, ScalarNode] | None:
        # Unquoted numbers or booleans are taken as typed (a password "123456" stays text).
        return self.scalar(items, parent, path, key, required, "a text value", secret)

    def path(self, text: str) -> Path:
        # Relative to the config file, so the bot behaves the same from any directory.
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path


# --- how a key is read ------------------------------------------------------------------


class _Bad:
    """The value of a key whose problem was reported: its section is not built."""

    def __repr__(self) -> str:
        return "<bad>"


_BAD: Any = _Bad()


@dataclass(frozen=True, slots=True)
class _Field:
    """One key being read, in its section."""

    r: _Reader
    items: dict[str, Node]              # the section's entries
    parent: Node                        # blamed for what is missing in the section
    path: str                           # the section's path: "", "matrix", "feeds[2]"
    key: str
    required: bool
    default: Any
    seen: dict[str, dict[str, int]]     # per key, value -> index of the list item holding it
    index: int                          # the section's place in its list (0 when none)

    @property
    def full(self) -> str:
        return _join(self.path, self.key)

    @property
    def given(self) -> bool:
        return not _is_null(self.items.get(self.key))

    def text(self, *, secret: bool = False) -> tuple[str, ScalarNode] | None:
        return self.r.string(self.items, self.parent, self.path, self.key,
                             required=self.required, secret=secret)

    def problem(self, node: Node, message: str) -> Any:
        self.r.problem(node, self.full, message)
        return _BAD


class _Kind:
    """How a key's value is read from its YAML node, and how its default reads in the
    README. ``read`` returns the value, the default when the key is not given, or _BAD
    after reporting a problem."""

    def read(self, f: _Field) -> Any:
        raise NotImplementedError

    def show(self, default: Any) -> str:
        return "—" if default is None else f"`{default}`"


class _Scalar(_Kind):
    """A single value, turned into the key's value by ``convert``."""

    what: ClassVar[str] = "a text value"    # in "expected ..., got a list"
    secret: bool = False                    # remembered, to be masked in every message

    def read(self, f: _Field) -> Any:
        found = f.r.scalar(f.items, f.parent, f.path, f.key, f.required, self.what,
                           self.secret)
        if found is None:   # a problem was reported, unless the key is absent and optional
            return _BAD if f.given or f.required else f.default
        return self.convert(f, *found)

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        return text


@dataclass(frozen=True, slots=True)
class _Text(_Scalar):
    strip: bool = True
    secret: bool = False

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        return text.strip() if self.strip else text


@dataclass(frozen=True, slots=True)
class _Int(_Scalar):
    minimum: int
    what: ClassVar[str] = "a whole number"

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        value: int | None = None
        if node.tag == _TAG_INT:
            value = f.r.constructor.construct_yaml_int(node)
        elif node.tag == _TAG_STR and re.fullmatch(r"\s*\d+\s*", text):
            value = int(text)  # e.g. produced by ${VAR}
        if value is None:
            return f.problem(node, f"{_quote(text)} is not a whole number")
        if value < self.minimum:
            return f.problem(node, f"must be at least {self.minimum} (got {value})")
        return value


@dataclass(frozen=True, slots=True)
class _Bool(_Scalar):
    what: ClassVar[str] = "true or false"

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        if node.tag == _TAG_BOOL:
            return bool(f.r.constructor.construct_yaml_bool(node))
        if node.tag == _TAG_STR and text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        return f.problem(node, f"{_quote(text)} is not true or false")

    def show(self, default: Any) -> str:
        return "`true`" if default else "`false`"


@dataclass(frozen=True, slots=True)
class _Duration(_Scalar):
    minimum: float
    what: ClassVar[str] = "a duration"

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        try:
            if node.tag == _TAG_INT:
                value = parse_duration(f.r.constructor.construct_yaml_int(node))
            elif node.tag == _TAG_FLOAT:
                value = parse_duration(f.r.constructor.construct_yaml_float(node))
            elif node.tag == _TAG_STR:
                value = parse_duration(text)
            else:
                raise ValueError(text)
        except ValueError:
            return f.problem(node, f"{_quote(text)} is not a duration (examples: 30s, 15m, 2h)")
        if value < self.minimum:
            return f.problem(node, f"{_quote(text)} is too short (minimum {self.minimum:g}s)")
        return value

    def show(self, default: Any) -> str:
        return f"`{_show_duration(default)}`"


@dataclass(frozen=True, slots=True)
class _Size(_Scalar):
    examples: str

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        try:
            return parse_size(text)
        except ValueError:
            return f.problem(node, f"{_quote(text)} is not a size (examples: {self.examples})")

    def show(self, default: Any) -> str:
        return f"`{_show_size(default)}`"


@dataclass(frozen=True, slots=True)
class _Choice(_Scalar):
    options: Sequence[str]
    fold: bool = False                  # upper-case what is given ("info" is INFO)

    def convert(self, f: _Field, text: str, node: ScalarNode) -> Any:
        value = text.strip().upper() if self.fold else text.strip()
        if value not in self.options:
            return f.problem(node, f"{_quote(text)} is not one of: {', '.join(self.options)}")
        return value


class _UserIds(_Kind):
    def read(self, f: _Field) -> Any:
        value = _read_user_ids(f.r, f.items, f.path, f.key)
        return _BAD if value is None else value

    def show(self, default: Any) -> str:
        return "`[]`"


@dataclass(frozen=True, slots=True)
class _RoomRef(_Kind):
    """A room alias, completed with the bot's server when only its localpart is given;
    with ``ids``, a room id too."""

    ids: bool

    def read(self, f: _Field) -> Any:
        value = _read_room_ref(f.r, f.items, f.parent, f.path, f.key, f.r.server,
                               required=f.required, ids=self.ids)
        if value is None:
            return _BAD if f.given or f.required else f.default
        return value


@dataclass(frozen=True, slots=True)
class _Custom(_Kind):
    function: Callable[[_Field], Any]

    def read(self, f: _Field) -> Any:
        return self.function(f)


@dataclass(frozen=True, slots=True)
class _Section(_Kind):
    """A mapping read into the dataclass ``cls``; with ``unwrap``, one of its fields;
    ``optional``: an absent section is None (a network the bot is not on)."""

    cls: type
    unwrap: str | None = None
    optional: bool = False

    def read(self, f: _Field) -> Any:
        found = f.r.section(f.items, f.parent, f.path, f.key, _known(self.cls),
                            required=f.required)
        if found is None and self.optional and not f.given:
            return None
        if found is None:   # a problem was reported, or the section is absent: its defaults
            value = _BAD if f.given or f.required else self.cls()
        else:
            value = _read_fields(f.r, self.cls, found[0], found[1], f.full)
        return getattr(value, self.unwrap) if self.unwrap and value is not _BAD else value


@dataclass(frozen=True, slots=True)
class _List(_Kind):
    """A list of mappings, each read into the dataclass ``cls``."""

    cls: type
    missing: str | None = None          # the problem when there is none (None: optional)
    empty: str | None = None            # the problem when the list is empty (None: allowed)

    def read(self, f: _Field) -> Any:
        node = f.items.get(f.key)
        if _is_null(node):
            if self.missing is None:
                return f.default
            return f.problem(node or f.parent, self.missing)
        assert node is not None
        nodes = f.r.sequence(node, f.full)
        if nodes is None:
            return _BAD
        if not nodes and self.empty is not None:
            return f.problem(node, self.empty)
        seen: dict[str, dict[str, int]] = {}
        values = [_read_item(f.r, self.cls, item, f"{f.full}[{i}]", i, seen)
                  for i, item in enumerate(nodes)]
        return _BAD if any(v is _BAD for v in values) else tuple(values)


# A check of one key's value, given in the file at ``node``: returns the value to keep
# (possibly normalised), or _BAD after reporting a problem.
_Check = Callable[[_Field, Any, Node], Any]


@dataclass(frozen=True, slots=True)
class _Key:
    doc: str                            # its meaning, in the README's table
    kind: _Kind
    name: str | None = None             # the key, when not the field's name
    required: bool = False
    check: _Check | None = None
    shown: str | None = None            # the README's default, when not the field's default
    also: tuple[tuple[str, str], ...] = ()  # (key, doc): further keys its kind reads


def _key(doc: str, kind: _Kind, *, name: str | None = None, required: bool = False,
         check: _Check | None = None, shown: str | None = None,
         also: tuple[tuple[str, str], ...] = ()) -> dict[str, _Key]:
    """A field's metadata declaring it a configuration key."""
    return {"key": _Key(doc, kind, name, required, check, shown, also)}


def _one_of(options: Sequence[str]) -> str:
    quoted = [f"`{o}`" for o in options]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _show_duration(seconds: float) -> str:
    parts: list[str] = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or (size == 1 and not parts):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _show_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --- checks and readers of single keys --------------------------------------------------


def _is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER_RE.search(value))


def _not_empty(f: _Field, text: str, node: Node) -> Any:
    return text or f.problem(node, "is empty")


def _or_none(f: _Field, text: str, node: Node) -> Any:
    return text or None


def _homeserver(f: _Field, text: str, node: Node) -> Any:
    problem = _web_url_problem(text)
    if problem:
        return f.problem(node, problem)
    url = text.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        f.r.warn(node, f.full, "plain http sends the access token unencrypted; use https")
    return url


def _user_id(f: _Field, text: str, node: Node) -> Any:
    if _USER_ID_RE.fullmatch(text.strip()):
        return text.strip()
    return f.problem(node, f"{_quote(text)} is not a Matrix user id like @newsbot:example.org")


def _password(f: _Field, text: str, node: Node) -> Any:
    return _check_secret(f.r, node, f.full, text, "password") or _BAD


def _read_access_token(f: _Field) -> Any:
    """``access_token``, or the content of ``access_token_file``."""
    token: Any = None
    found = f.text(secret=True)
    if found is not None:
        token = _check_secret(f.r, found[1], f.full, found[0], "token") or _BAD
    elif f.given:
        token = _BAD
    from_file = f.r.string(f.items, f.parent, f.path, "access_token_file")
    if from_file is not None:
        token = _read_token_file(f.r, from_file[1], from_file[0]) or _BAD
    elif not _is_null(f.items.get("access_token_file")):
        token = _BAD
    return token


def _check_secret(r: _Reader, node: Node, path: str, value: str, what: str) -> str | None:
    # Messages here describe the value, never quote it.
    if what == "token":
        value = value.strip()  # a password may really start or end with a space
    if not value.strip():
        r.problem(node, path, "is empty")
        return None
    if _is_placeholder(value):
        r.problem(node, path, f"still holds the example placeholder; put the real {what}")
        return None
    if what == "token" and any(c.isspace() for c in value):
        r.problem(node, path, "contains whitespace; a Matrix access token is one word")
        return None
    return value


def _read_token_file(r: _Reader, node: Node, text: str) -> str | None:
    path_key = "matrix.access_token_file"
    if not text.strip():
        r.problem(node, path_key, "is empty")
        return None
    path = r.path(text.strip())
    try:
        content = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except UnicodeDecodeError:
        r.problem(node, path_key, f"{path} is not a UTF-8 text file")
        return None
    except OSError as exc:
        r.problem(node, path_key, f"cannot read {path}: {exc.strerror or 'error'}")
        return None
    token = content.strip()
    r.secrets.add(token)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        r.warn(node, path_key, f"{path} is readable by other users; chmod 600 it")
    return _check_secret(r, node, f"{path_key} ({path})", token, "token")


def _remember_server(f: _Field, matrix: MatrixConfig, node: Node) -> Any:
    f.r.server = matrix.user_id.split(":", 1)[1]
    return matrix


def _state_path(f: _Field, text: str, node: Node) -> Any:
    return f.r.path(text) if text else f.problem(node, "is empty")


def _unique_ids(r: _Reader, nodes: list[Node], full: str, valid: Callable[[str], bool],
                example: str, invalid: str) -> tuple[str, ...] | None:
    """The items of a list of Matrix ids, each valid and listed once; every problem is
    reported (``example`` for a non-text item, ``invalid`` after the quoted value)."""
    values: list[str] = []
    ok = True
    for i, item in enumerate(nodes):
        item_path = f"{full}[{i}]"
        text = r.expand(item, item_path, False) if isinstance(item, ScalarNode) else None
        if not isinstance(item, ScalarNode) or _is_null(item):
            r.problem(item, item_path, f"expected {example}")
            ok = False
            continue
        if text is None:
            ok = False      # an unset ${VAR}, reported
            continue
        value = text.strip()
        if not valid(value):
            r.problem(item, item_path, f"{_quote(value)} {invalid}")
            ok = False
        elif value in values:
            r.problem(item, item_path, f"{_quote(value)} is listed twice")
            ok = False
        else:
            values.append(value)
    return tuple(values) if ok else None


def _read_user_ids(r: _Reader, items: dict[str, Node], path: str,
                   key: str) -> tuple[str, ...] | None:
    """A list of Matrix user ids under ``key`` (admins, a room's moderators)."""
    node = items.get(key)
    if _is_null(node):
        return ()
    assert node is not None
    full = _join(path, key)
    nodes = r.sequence(node, full)
    if nodes is None:
        return None
    return _unique_ids(r, nodes, full,
                       lambda v: bool(_USER_ID_RE.fullmatch(v) or _is_xmpp_address(v)),
                       "a Matrix user id like @alice:example.org",
                       "is not a Matrix user id like @alice:example.org or an XMPP "
                       "address like xmpp:alice@example.org")


def _feed_name(f: _Field, text: str, node: Node) -> Any:
    names = f.seen.setdefault("name", {})
    if not _FEED_NAME_RE.fullmatch(text):
        return f.problem(node, f"{_quote(text)} must be lowercase letters, digits, '_', '.' "
                               "or '-' (starting with a letter or digit)")
    if text in names:
        return f.problem(node, f"{_quote(text)} is already used by feeds[{names[text]}]")
    names[text] = f.index
    return text


def _feed_url(f: _Field, url: str, node: Node) -> Any:
    problem = _web_url_problem(url)
    if problem:
        return f.problem(node, problem)
    urls = f.seen.setdefault("url", {})
    if url in urls:
        f.r.warn(node, f.full, f"same URL as feeds[{urls[url]}]")
    else:
        urls[url] = f.index
    return url


def _read_feed_rooms(f: _Field) -> Any:
    node = f.items.get(f.key)
    if _is_null(node):
        return f.problem(node or f.parent, "required key is missing (at least one room)")
    assert node is not None
    nodes = f.r.sequence(node, f.full)
    if nodes is None:
        return _BAD
    if not nodes:
        return f.problem(node, "needs at least one room")
    rooms = _unique_ids(
        f.r, nodes, f.full,
        lambda v: bool(_ROOM_ALIAS_RE.fullmatch(v) or _ROOM_ID_RE.fullmatch(v)
                       or _is_xmpp_address(v)),
        "a room like #news:example.org or xmpp:news@conference.example.org",
        "is not a room alias (#name:server), a room id (!id:server) or an XMPP address "
        "(xmpp:news@conference.example.org)")
    return _BAD if rooms is None else rooms


def _is_xmpp_address(text: str) -> bool:
    return bool(XMPP_ADDRESS_RE.fullmatch(text))


def _frequent(f: _Field, interval: float, node: Node) -> Any:
    if interval < _RECOMMENDED_INTERVAL:
        f.r.warn(node, f.full, f"{interval:g}s is very frequent; at least 60s is kinder to "
                               "the feed server")
    return interval


def _read_template(f: _Field) -> Any:
    """The feed's template (``template`` or ``template_file``): a built-in's name, or
    Jinja2 source that passed the checks."""
    r, items, parent, path = f.r, f.items, f.parent, f.path
    inline = r.string(items, parent, path, "template")
    from_file = r.string(items, parent, path, "template_file")
    if inline is None and from_file is None:
        given = [k for k in ("template", "template_file") if not _is_null(items.get(k))]
        return _BAD if given else f.default  # a value of the wrong kind was reported
    if inline is not None and from_file is not None:
        r.problem(from_file[1], _join(path, "template_file"),
                  "set only one of template or template_file")
        return _BAD
    if inline is not None:
        source, node = inline
        key, where = _join(path, "template"), "the template"
        name = source.strip()
        if name in BUILTIN_TEMPLATES:
            return name
        if _TEMPLATE_NAME_RE.fullmatch(name):
            builtins = ", ".join(BUILTIN_TEMPLATES)
            hint = _close_matches(name, list(BUILTIN_TEMPLATES))
            advice = (f"did you mean {hint[0]!r}?" if hint else
                      "a template of your own is Jinja2 HTML, such as "
                      "'<b>{{ title }}</b> {{ link }}'")
            r.problem(node, key, f"{_quote(name)} is not a built-in template ({builtins}); "
                                 f"{advice}")
            return _BAD
    else:
        assert from_file is not None
        text, node = from_file
        key = _join(path, "template_file")
        if not text.strip():
            r.problem(node, key, "is empty")
            return _BAD
        file = r.path(text.strip())
        where = file.name
        try:
            source = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            r.problem(node, key, f"{file} is not a UTF-8 text file")
            return _BAD
        except OSError as exc:
            r.problem(node, key, f"cannot read {file}: {exc.strerror or 'error'}")
            return _BAD
    problem = check_template(source)
    if problem is not None:
        r.problem(node, key, f"line {problem.line} of {where}: {problem.detail}"
                             if problem.line else f"{where}: {problem.detail}")
        return _BAD
    return source


def _message_size(f: _Field, size: int, node: Node) -> Any:
    if not MIN_MESSAGE_BYTES <= size <= MAX_MESSAGE_BYTES:
        return f.problem(node, f"must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} "
                               f"bytes (homeservers refuse events over 65536), got {size}")
    return size


def _one_word(f: _Field, text: str, node: Node) -> Any:
    if not text or any(c.isspace() for c in text):
        return f.problem(node, "must be one word, such as !news")
    return text


def _read_room_ref(r: _Reader, items: dict[str, Node], parent: Node, path: str, key: str,
                   server: str | None, *, required: bool, ids: bool) -> str | None:
    found = r.string(items, parent, path, key, required=required)
    if found is None:
        return None
    text, node = found
    text = text.strip()
    if _ROOM_ALIAS_RE.fullmatch(text) or (ids and _ROOM_ID_RE.fullmatch(text)) or \
            (not ids and _is_xmpp_address(text)):
        return text
    local = _ALIAS_LOCALPART_RE.fullmatch(text)
    if local is not None and not text.startswith("!"):
        # Without a valid matrix.user_id (reported there) there is no server to add.
        return f"#{local.group(1)}:{server}" if server else None
    what = ("a room alias (#news:example.org), its localpart (news) or a room id"
            if ids else "a room alias (#news:example.org) or its localpart (news)")
    r.problem(node, _join(path, key), f"{_quote(text)} is not {what}")
    return None


def _room_alias(f: _Field, alias: str, node: Node) -> Any:
    aliases = f.seen.setdefault("alias", {})
    if alias in aliases:
        return f.problem(node, f"{_quote(alias)} is already declared by rooms[{aliases[alias]}]")
    aliases[alias] = f.index
    server = f.r.server
    if _is_xmpp_address(alias):
        return alias        # a group chat: created wherever its service lets the bot
    if server and alias.split(":", 1)[1] != server:
        f.r.warn(node, f.full, f"newsbot can only create rooms on its own server ({server}): "
                               f"{alias} must exist already, with newsbot in it")
    return alias


def _avatar(f: _Field, text: str, node: Node) -> Any:
    uri = text.strip()
    if not uri:
        return f.problem(node, "is empty")
    if not _MXC_RE.fullmatch(uri):
        return f.problem(node, f"{_quote(text)} is not an mxc:// URI (upload the image to the "
                               "homeserver first)")
    return uri


def _read_listen(f: _Field) -> Any:
    found = f.text()
    if found is None:
        return _BAD if f.given else None
    text, node = found
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        return f.problem(node, f"{_quote(text)} is not host:port (example: 127.0.0.1:9180)")
    if host not in _LOOPBACK_HOSTS:
        f.r.warn(node, f.full, "not a loopback address: put the metrics behind your own "
                               "access control")
    return host, int(port)


_MIN_PUSH_TOKEN = 16
_MAX_TOKEN_FILE = 4096


def _read_push_token(f: _Field) -> Any:
    """``push_token``, or the content of ``push_token_file``; None: push is off."""
    token: Any = None
    found = f.text(secret=True)
    if found is not None:
        token = _check_push_token(f.r, found[1], f.full, found[0])
    elif f.given:
        token = _BAD
    file_key = _join(f.path, "push_token_file")
    from_file = f.r.string(f.items, f.parent, f.path, "push_token_file")
    if from_file is not None:
        if found is not None:
            f.r.problem(from_file[1], file_key, "set only one of push_token and push_token_file")
            return _BAD
        token = _read_private_token(f.r, from_file[1], file_key, from_file[0])
    elif not _is_null(f.items.get("push_token_file")):
        token = _BAD
    return token


def _check_push_token(r: _Reader, node: Node, path: str, value: str) -> Any:
    token = _check_secret(r, node, path, value, "token")
    if token is None:
        return _BAD
    if not all(33 <= ord(c) < 127 for c in token):
        r.problem(node, path, "must be printable ASCII: it travels in an HTTP header")
        return _BAD
    if len(token) < _MIN_PUSH_TOKEN:
        # Anyone reaching the listener may guess: too short a token is guessed.
        r.problem(node, path, f"is too short: use at least {_MIN_PUSH_TOKEN} characters "
                              "(e.g. the output of `openssl rand -hex 32`)")
        return _BAD
    return token


def _read_private_token(r: _Reader, node: Node, path_key: str, text: str, *,
                        what: str = "token") -> Any:
    """A token file that only the bot's user may read: a push token lets anyone who
    holds it make the bot fetch, so a file others can read is refused, not warned of
    (``what``: "password" for an XMPP password file, refused likewise)."""
    if not text.strip():
        r.problem(node, path_key, "is empty")
        return _BAD
    path = r.path(text.strip())
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode) or path.stat().st_size > _MAX_TOKEN_FILE:
            r.problem(node, path_key, f"{path} is not a small file holding one token")
            return _BAD
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        r.problem(node, path_key, f"{path} is not a UTF-8 text file")
        return _BAD
    except OSError as exc:
        r.problem(node, path_key, f"cannot read {path}: {exc.strerror or 'error'}")
        return _BAD
    token = content.strip()
    r.secrets.add(token)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        r.problem(node, path_key, f"{path} may be read by other users (mode "
                                  f"{stat.S_IMODE(mode):04o}); chmod 600 it")
        return _BAD
    if what == "password":
        return _check_secret(r, node, f"{path_key} ({path})", token, "password") or _BAD
    return _check_push_token(r, node, f"{path_key} ({path})", token)


# --- the declaration: every key, once ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    homeserver: str = field(metadata=_key(
        "client-server API base URL", _Text(), required=True, check=_homeserver))
    user_id: str = field(metadata=_key(
        "the bot's Matrix id", _Text(strip=False), required=True, check=_user_id))
    access_token: str | None = field(metadata=_key(
        "the bot's access token; set exactly one of `access_token`, `access_token_file` "
        "and `password`", _Custom(_read_access_token),
        also=(("access_token_file", "a file holding the access token (mode 0600; relative "
                                    "to the config file)"),)))
    password: str | None = field(metadata=_key(
        "the bot's password, to log in at each start", _Text(strip=False, secret=True),
        check=_password))
    device_id: str | None = field(metadata=_key(
        "the bot's device; required with a token", _Text(), check=_not_empty))
    display_name: str | None = field(default=None, metadata=_key(
        "set on the bot's profile at start", _Text(), check=_or_none, shown="unchanged"))

    def __repr__(self) -> str:
        # Hand-written so that logging a config (or a traceback showing it) cannot leak.
        def mask(secret: str | None) -> str:
            return "None" if secret is None else "'***'"
        return (
            f"MatrixConfig(homeserver={self.homeserver!r}, user_id={self.user_id!r}, "
            f"access_token={mask(self.access_token)}, password={mask(self.password)}, "
            f"device_id={self.device_id!r}, display_name={self.display_name!r})"
        )


def _xmpp_jid(f: _Field, text: str, node: Node) -> Any:
    jid = text.strip()
    if XMPP_ADDRESS_RE.fullmatch(f"{XMPP_PREFIX}{jid}"):
        return jid
    return f.problem(node, f"{_quote(text)} is not an XMPP address like newsbot@example.org")


def _read_xmpp_password(f: _Field) -> Any:
    """``password``, or the content of ``password_file`` (mode 0600)."""
    password: Any = None
    found = f.text(secret=True)
    if found is not None:
        password = _check_secret(f.r, found[1], f.full, found[0], "password") or _BAD
    elif f.given:
        password = _BAD
    from_file = f.r.string(f.items, f.parent, f.path, "password_file")
    if from_file is not None:
        text, node = from_file
        password = _read_private_token(f.r, node, _join(f.path, "password_file"), text,
                                       what="password")
    elif not _is_null(f.items.get("password_file")):
        password = _BAD
    return password


def _port(f: _Field, port: int, node: Node) -> Any:
    return port if port <= 65535 else f.problem(node, f"{port} is not a port (1 to 65535)")


@dataclass(frozen=True, slots=True)
class XmppConfig:
    jid: str = field(metadata=_key(
        "the bot's XMPP address (its account)", _Text(), required=True, check=_xmpp_jid))
    password: str | None = field(default=None, metadata=_key(
        "the account's password; set exactly one of `password` and `password_file`",
        _Custom(_read_xmpp_password),
        also=(("password_file", "a file holding the password (mode 0600; relative to the "
                                "config file)"),)))
    nick: str = field(default="newsbot", metadata=_key(
        "the bot's nickname in group chats", _Text(), check=_not_empty))
    host: str | None = field(default=None, metadata=_key(
        "server to connect to (DNS SRV records of the address's domain otherwise)", _Text(),
        check=_or_none, shown="from DNS"))
    port: int = field(default=5222, metadata=_key("its port", _Int(1), check=_port))
    tls: bool = field(default=True, metadata=_key(
        "require TLS; `false` only for a server on this machine's loopback", _Bool()))

    def __repr__(self) -> str:
        # Hand-written so that logging a config (or a traceback showing it) cannot leak.
        password = "None" if self.password is None else "'***'"
        return (f"XmppConfig(jid={self.jid!r}, password={password}, nick={self.nick!r}, "
                f"host={self.host!r}, port={self.port!r}, tls={self.tls!r})")


def _read_database_url(f: _Field) -> Any:
    """``url`` (PostgreSQL), its password from ``${VAR}`` in it or from ``password_file``."""
    found = f.text(secret=True)
    if found is None:
        lone = f.r.string(f.items, f.parent, f.path, "password_file")
        if lone is not None:
            f.r.problem(lone[1], _join(f.path, "password_file"), "is only used with `url`")
            return _BAD
        return _BAD if f.given else None
    text, node = found
    url = _quoted_userinfo(text.strip())
    try:
        parts = urlsplit(url)
        parts.port      # noqa: B018 (a port that is no number raises here)
    except ValueError:
        return f.problem(node, "is not a readable address (write it like "
                               "postgresql://newsbot@db.example.org:5432/newsbot)")
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        return f.problem(node, "expected a PostgreSQL address like "
                               "postgresql://newsbot@db.example.org/newsbot")
    if parts.password:
        f.r.secrets.add(unquote(parts.password))
    from_file = f.r.string(f.items, f.parent, f.path, "password_file")
    if from_file is not None:
        if parts.password:
            f.r.problem(from_file[1], _join(f.path, "password_file"),
                        "the address already holds a password; keep only one")
            return _BAD
        password = _read_private_token(f.r, from_file[1], _join(f.path, "password_file"),
                                       from_file[0], what="password")
        if password is _BAD:
            return _BAD
        user = quote(parts.username or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))
    elif not _is_null(f.items.get("password_file")):
        return _BAD
    query = dict(parse_qsl(parts.query))
    if parts.hostname not in _LOOPBACK_HOSTS and query.get("sslmode") not in (
            "require", "verify-ca", "verify-full"):
        f.r.warn(node, f.full, "the connection to a database on another machine may be "
                               "unencrypted; add ?sslmode=verify-full (or require)")
    return url


def _quoted_userinfo(url: str) -> str:
    """The address with its user and password percent-encoded where they hold what would
    end them (a password from ``${VAR}`` is put in as it is: ``/``, ``?``, ``#``, ``@``
    would otherwise cut the address, and show part of the password as its host)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    userinfo, host = rest[:at], rest[at + 1:]
    user, colon, password = userinfo.partition(":")

    def enc(part: str) -> str:
        return "".join(f"%{ord(c):02X}" if c in "/?#@[] " else c for c in part)
    return f"{scheme}://{enc(user)}{colon}{enc(password)}@{host}"


def _masked_url(url: str) -> str:
    """A database address fit for a log line: its password replaced."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path = field(metadata=_key(
        "directory for the state (relative to the config file); with `url`, this "
        "instance's own files (its session, its encryption keys)", _Text(), required=True,
        check=_state_path))
    url: str | None = field(default=None, metadata=_key(
        "PostgreSQL database for the shared state, e.g. `postgresql://newsbot@db/newsbot`, "
        "so several instances can run (SQLite in `path` otherwise); its password in a "
        "`${VAR}` or in `password_file`", _Custom(_read_database_url), shown="SQLite in `path`",
        also=(("password_file", "a file holding the database password (mode 0600)"),)))
    lease: float = field(default=30.0, metadata=_key(
        "with `url`: how long what a dead instance held (the lead, a message being sent, a "
        "feed being polled) waits before another instance takes it over", _Duration(1.0)))

    def __repr__(self) -> str:
        # Hand-written so that logging a config (or a traceback showing it) cannot leak.
        url = None if self.url is None else _masked_url(self.url)
        return f"StorageConfig(path={self.path!r}, url={url!r}, lease={self.lease!r})"


@dataclass(frozen=True, slots=True)
class FetchConfig:
    allow_private_networks: bool = field(default=False, metadata=_key(
        "allow feeds on loopback/private addresses", _Bool()))
    timeout: float = field(default=30.0, metadata=_key(
        "total time of one fetch", _Duration(0.001)))
    connect_timeout: float = field(default=10.0, metadata=_key(
        "time to connect, for one fetch", _Duration(0.001)))
    max_body_bytes: int = field(default=5 * 1024 * 1024, metadata=_key(
        "largest feed accepted, e.g. `5MiB`", _Size("5MiB, 512KiB, 1000000"),
        name="max_body_size"))
    concurrency: int = field(default=8, metadata=_key(
        "feeds fetched at the same time", _Int(1)))
    max_backoff: float = field(default=21600.0, metadata=_key(
        "longest wait after repeated failures", _Duration(1.0)))
    max_interval: float = field(default=86400.0, metadata=_key(
        "longest interval a feed's hints (`ttl`, `skipHours`, `Cache-Control`...) may ask "
        "for; a longer configured interval stays", _Duration(60.0)))
    max_image_bytes: int = 5 * 1024 * 1024     # not a key


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    enabled: bool = field(default=True, metadata=_key(
        "post into end-to-end encrypted rooms", _Bool()))
    # "all": every device of the members; "cross-signed": devices their owners signed
    # (what Element calls "exclude insecure devices"); "verified": verified ones only.
    trust: str = field(default="all", metadata=_key(
        "the members' devices that get the keys: `all`, `cross-signed` (signed by their "
        "owner) or `verified`", _Choice(("all", "cross-signed", "verified"))))


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    prefix: str = field(default="!news", metadata=_key(
        "what room commands start with", _Text(), check=_one_word))
    min_power_level: int = field(default=50, metadata=_key(
        "power level needed for moderator commands", _Int(0)))
    rate_limit: int = field(default=5, metadata=_key(
        "commands one user may send per `rate_window`", _Int(1)))
    rate_window: float = field(default=10.0, metadata=_key(
        "the window of `rate_limit`", _Duration(1.0)))
    max_feeds_per_room: int = field(default=20, metadata=_key(
        "most feeds one room may follow", _Int(0)))
    default_interval: float = field(default=15 * 60.0, metadata=_key(
        "polling interval of feeds added by command", _Duration(_MIN_INTERVAL)))
    max_conversations: int = field(default=1000, metadata=_key(
        "most private conversations kept at once; over it, direct-message invitations are "
        "declined and `welcome: dm` newcomers are not welcomed (logged)", _Int(0)))


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """An announcement room the bot owns: created when missing, kept as declared."""

    alias: str = field(metadata=_key(
        "the room's stable identity: `#name:server`, or its localpart on the bot's server; "
        "or a group chat, `xmpp:name@conference.server`",
        _RoomRef(ids=False), required=True, check=_room_alias))
    # name, topic, avatar: None means not managed (people may set them).
    name: str | None = field(default=None, metadata=_key(
        "the room's name (managed only when given)", _Text(), check=_not_empty))
    topic: str | None = field(default=None, metadata=_key(
        "the room's topic (managed only when given)", _Text()))
    avatar: str | None = field(default=None, metadata=_key(
        "an `mxc://` URI (managed only when given)", _Text(strip=False), check=_avatar))
    join_rule: str = field(default="public", metadata=_key(
        _one_of(_JOIN_RULES), _Choice(_JOIN_RULES)))
    history: str = field(default="shared", metadata=_key(
        f"who reads the history: {_one_of(_HISTORY)}", _Choice(_HISTORY)))
    encrypted: bool = field(default=False, metadata=_key(
        "end-to-end encrypted; once on, a room's encryption can never be turned off",
        _Bool()))
    directory: bool = field(default=False, metadata=_key(
        "published in the homeserver's room directory", _Bool()))
    space: str | None = field(default=None, metadata=_key(
        "a parent space's alias, localpart or id", _RoomRef(ids=True)))
    pin_latest: bool = field(default=True, metadata=_key(
        "the latest issue is pinned", _Bool()))
    topic_latest: bool = field(default=False, metadata=_key(
        'the topic ends with "— Latest: TITLE LINK"', _Bool()))
    moderators: tuple[str, ...] = field(default=(), metadata=_key(
        "users given power level 50 (never lowered)", _UserIds()))
    welcome: str = field(default="off", metadata=_key(
        "`dm`: newcomers get the latest issue privately; `off`", _Choice(("dm", "off"))))


@dataclass(frozen=True, slots=True)
class FeedConfig:
    name: str = field(metadata=_key(
        "stable identity (`[a-z0-9][a-z0-9_.-]*`); never rename it", _Text(strip=False),
        required=True, check=_feed_name))
    url: str = field(metadata=_key(
        "http(s) URL; changing it reposts nothing", _Text(), required=True, check=_feed_url))
    rooms: tuple[str, ...] = field(metadata=_key(
        "room ids (`!id:server`), aliases (`#name:server`) or XMPP addresses "
        "(`xmpp:name@conference.server`)", _Custom(_read_feed_rooms),
        required=True))
    interval: float = field(default=15 * 60.0, metadata=_key(
        "time between polls", _Duration(_MIN_INTERVAL), check=_frequent))
    backfill: int = field(default=0, metadata=_key(
        "entries posted when a feed is first seen", _Int(0)))
    max_per_poll: int = field(default=5, metadata=_key(
        "most entries posted from one poll (see below)", _Int(1)))
    msgtype: str = field(default="m.notice", metadata=_key(
        _one_of(_MSGTYPES), _Choice(_MSGTYPES)))
    language: str | None = field(default=None, metadata=_key(
        "overrides `language` for this feed", _Choice(LANGUAGES)))
    # How items read: a built-in template name or Jinja2 source (from `template:` or read
    # from `template_file:`), checked at load time.
    template: str = field(default="default", metadata=_key(
        f"how items read: a built-in template ({_one_of(list(BUILTIN_TEMPLATES))}) or "
        "Jinja2 source", 
        _Custom(_read_template),
        also=(("template_file", "a file holding the Jinja2 template (relative to the config "
                                "file), instead of `template`"),)))
    content: str = field(default="summary", metadata=_key(
        "`summary`, or `full`: the whole entry", _Choice(CONTENT_MODES)))
    summary_length: int = field(default=DEFAULT_SUMMARY_LENGTH, metadata=_key(
        "characters of the summary, cut at a word; `0`: no summary", _Int(0)))
    max_message_bytes: int = field(default=DEFAULT_MAX_MESSAGE_BYTES, metadata=_key(
        f"a message's size budget ({_show_size(MIN_MESSAGE_BYTES)} to "
        f"{_show_size(MAX_MESSAGE_BYTES)})", _Size("40000, 40KiB"), check=_message_size))
    images: str = field(default="inline", metadata=_key(
        "`inline`, `separate` (an `m.image` of its own) or `off`",
        _Choice(("inline", "separate", "off"))))
    on_update: str = field(default="edit", metadata=_key(
        "`edit`: a corrected item is edited in place; `ignore`", _Choice(("edit", "ignore"))))
    max_edits: int = field(default=5, metadata=_key(
        "most edits of one item; later corrections are logged, not sent", _Int(0)))
    public: bool = field(default=False, metadata=_key(
        "open to personal subscriptions by direct message", _Bool()))

    @property
    def notice(self) -> bool:
        """Are its items notices from a bot (quieter in clients) rather than messages?"""
        return self.msgtype == "m.notice"


def _public_url(f: _Field, text: str, node: Node) -> Any:
    problem = _web_url_problem(text)
    if problem:
        return f.problem(node, problem)
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        # The callback is this URL plus a path: a query would end up in the middle.
        return f.problem(node, "must not have a query (?...) nor a fragment (#...)")
    if parts.scheme.lower() == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        f.r.warn(node, f.full, "plain http: hubs push in the clear (pushes stay signed); "
                 "use https")
    return text.rstrip("/")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The bot's own HTTP listener (bot.http): health, metrics, push."""

    listen: tuple[str, int] | None = field(default=None, metadata=_key(
        "`host:port` of the bot's HTTP listener: `/healthz`, `/metrics` and push "
        "(see [Health and push](#health-and-push))", _Custom(_read_listen), shown="off"))
    push_token: str | None = field(default=None, metadata=_key(
        "the bearer token `POST /feeds/NAME/poll` needs (16 characters or more); set at "
        "most one of `push_token` and `push_token_file`; without either, push is off",
        _Custom(_read_push_token), shown="off",
        also=(("push_token_file", "a file holding the push token (mode 0600: refused if "
                                  "others may read it; relative to the config file)"),)))
    public_url: str | None = field(default=None, metadata=_key(
        "the address hubs reach `http.listen` at from the internet, e.g. "
        "`https://bot.example.org`; WebSub push is on with it (see [Push from hubs "
        "(WebSub)](#push-from-hubs-websub))", _Text(), check=_public_url, shown="off"))


@dataclass(frozen=True, slots=True)
class _Metrics:
    """The ``metrics`` section, kept in Config as ``metrics_listen``."""

    listen: tuple[str, int] | None = field(default=None, metadata=_key(
        "the former name of `http.listen` (the same listener)",
        _Custom(_read_listen), shown="off"))


@dataclass(frozen=True, slots=True)
class Config:
    # A section (or list of sections) has no row of its own in the README: its keys do.
    # Each network is optional; at least one is there.
    matrix: MatrixConfig | None = field(default=None, kw_only=True, metadata=_key(
        "", _Section(MatrixConfig, optional=True), check=_remember_server))
    xmpp: XmppConfig | None = field(default=None, kw_only=True, metadata=_key(
        "", _Section(XmppConfig, optional=True)))
    storage: StorageConfig = field(metadata=_key("", _Section(StorageConfig), required=True))
    fetch: FetchConfig = field(metadata=_key("", _Section(FetchConfig)))
    admins: tuple[str, ...] = field(metadata=_key(
        "users whose invitations the bot accepts", _UserIds()))
    feeds: tuple[FeedConfig, ...] = field(metadata=_key("", _List(
        FeedConfig, missing="required section is missing (at least one feed)",
        empty="needs at least one feed")))
    language: str = field(default="en", metadata=_key(
        f"{_one_of(LANGUAGES)}: dates and labels in messages", _Choice(LANGUAGES)))
    log_level: str = field(default="INFO", metadata=_key(
        _one_of(_LOG_LEVELS), _Choice(_LOG_LEVELS, fold=True)))
    commands: CommandsConfig = field(default=CommandsConfig(), metadata=_key(
        "", _Section(CommandsConfig)))
    encryption: EncryptionConfig = field(default=EncryptionConfig(), metadata=_key(
        "", _Section(EncryptionConfig)))
    rooms: tuple[RoomConfig, ...] = field(default=(), metadata=_key("", _List(RoomConfig)))
    http: HttpConfig = field(default=HttpConfig(), metadata=_key("", _Section(HttpConfig)))
    metrics_listen: tuple[str, int] | None = field(default=None, metadata=_key(
        "", _Section(_Metrics, unwrap="listen"), name="metrics"))
    source: Path | None = None                  # not a key: the file it was read from

    @property
    def bot_ids(self) -> tuple[str, ...]:
        """The bot's own ids, one per network it is on (never counted as a reader)."""
        ids = []
        if self.matrix is not None:
            ids.append(self.matrix.user_id)
        if self.xmpp is not None:
            ids.append(f"xmpp:{self.xmpp.jid}")
        return tuple(ids)

    @property
    def listen(self) -> tuple[str, int] | None:
        """Where the bot's HTTP listener is (``metrics.listen`` is its former name)."""
        return self.http.listen or self.metrics_listen


# --- checks across the keys of a section ------------------------------------------------
# Each returns False after reporting a problem; values hold _BAD for a key with a problem.


def _check_matrix(r: _Reader, values: dict[str, Any], items: dict[str, Node], node: Node,
                  path: str) -> bool:
    ok = True
    present = [k for k in ("access_token", "access_token_file", "password")
               if not _is_null(items.get(k))]
    if not present:
        r.problem(node, path, "set one of access_token, access_token_file or password")
        ok = False
    elif len(present) > 1:
        r.problem(node, path, f"set only one of access_token, access_token_file or password "
                              f"(found {', '.join(present)})")
        ok = False
    uses_token = "access_token" in present or "access_token_file" in present
    if uses_token and _is_null(items.get("device_id")):
        r.problem(node, _join(path, "device_id"),
                  "required with an access token (the device the token belongs to)")
        ok = False
    elif "password" in present and not uses_token and values["device_id"] is None:
        r.warn(node, _join(path, "device_id"),
               "not set: every start will log in as a new device")
    return ok


def _check_xmpp(r: _Reader, values: dict[str, Any], items: dict[str, Node], node: Node,
                path: str) -> bool:
    ok = True
    present = [k for k in ("password", "password_file") if not _is_null(items.get(k))]
    if len(present) != 1:
        r.problem(node, path, "set one of password or password_file" if not present else
                  "set only one of password or password_file")
        ok = False
    host = values["host"]
    if values["tls"] is False and host not in ("127.0.0.1", "::1", "localhost"):
        r.problem(items.get("tls") or node, _join(path, "tls"),
                  "false is only for a server on loopback (host: 127.0.0.1): a password "
                  "must not cross a network in clear")
        ok = False
    return ok


def _check_fetch(r: _Reader, values: dict[str, Any], items: dict[str, Node], node: Node,
                 path: str) -> bool:
    timeout, connect = values["timeout"], values["connect_timeout"]
    if timeout is not _BAD and connect is not _BAD and connect > timeout:
        given = items.get("connect_timeout")
        r.warn(node if _is_null(given) else given, _join(path, "connect_timeout"),
               "is longer than fetch.timeout, which caps the whole fetch")
    return True


# A group chat has none of these: said once, when the configuration sets them.
_MATRIX_ONLY_ROOM_KEYS = ("avatar", "encrypted", "directory", "space", "history")


def _check_room(r: _Reader, values: dict[str, Any], items: dict[str, Node], node: Node,
                path: str) -> bool:
    alias = values["alias"]
    if isinstance(alias, str) and network_of(alias) == "xmpp":
        for key in _MATRIX_ONLY_ROOM_KEYS:
            if not _is_null(items.get(key)):
                r.warn(items[key], _join(path, key), "a Matrix room setting: ignored for "
                       "an XMPP group chat")
    if values["directory"] is True and values["join_rule"] == "invite":
        r.warn(items.get("directory") or node, _join(path, "directory"),
               "an invite-only room listed in the directory: people will find it but not "
               "be able to join (use join_rule: knock to let them ask)")
    return True


def _check_networks(r: _Reader, values: dict[str, Any], items: dict[str, Node],
                    node: Node) -> bool:
    """At least one network; every room and admin on a network the bot is on."""
    matrix, xmpp, feeds = values["matrix"], values["xmpp"], values["feeds"]
    if matrix is None and xmpp is None:
        r.problem(node, "matrix", "required section is missing (or an xmpp: section, for "
                                  "XMPP only)")
        return False
    if matrix is _BAD or xmpp is _BAD or feeds is _BAD:
        return True
    ok = True
    rooms = values["rooms"]
    for i, room in enumerate(rooms if rooms is not _BAD else ()):
        on_xmpp = network_of(room.alias) == "xmpp"
        if (xmpp if on_xmpp else matrix) is None:
            r.problem(items["rooms"].value[i], f"rooms[{i}].alias",
                      f"{room.alias} is on {'XMPP' if on_xmpp else 'Matrix'}, but the "
                      f"configuration has no {'xmpp' if on_xmpp else 'matrix'}: section")
            ok = False
    for i, feed in enumerate(feeds):
        for j, ref in enumerate(feed.rooms):
            on_xmpp = network_of(ref) == "xmpp"
            if (xmpp if on_xmpp else matrix) is None:
                r.problem(items["feeds"].value[i], f"feeds[{i}].rooms[{j}]",
                          f"{ref} is on {'XMPP' if on_xmpp else 'Matrix'}, but the "
                          f"configuration has no {'xmpp' if on_xmpp else 'matrix'}: section")
                ok = False
    return ok


def _check_config(r: _Reader, values: dict[str, Any], items: dict[str, Node], node: Node,
                  path: str) -> bool:
    ok = _check_listener(r, values, items, node)
    ok = _check_networks(r, values, items, node) and ok
    rooms, feeds, encryption = values["rooms"], values["feeds"], values["encryption"]
    if not rooms or any(v is _BAD for v in (rooms, feeds, encryption)):
        return ok
    posted = {ref for feed in feeds for ref in feed.rooms}
    for i, (item, room) in enumerate(zip(items["rooms"].value, rooms, strict=True)):
        if room.alias not in posted:
            r.warn(item, f"rooms[{i}]", f"no feed posts into {room.alias} (name it in a "
                                        "feed's rooms)")
        if room.encrypted and not encryption.enabled:
            r.warn(item, f"rooms[{i}].encrypted",
                   "encryption.enabled is false: newsbot could not post into this room")
    return ok


def _check_listener(r: _Reader, values: dict[str, Any], items: dict[str, Node],
                    node: Node) -> bool:
    """One listener: ``metrics.listen`` is its former name."""
    http, old = values["http"], values["metrics_listen"]
    if http is _BAD or old is _BAD:
        return True
    if old is not None and http.listen is not None and old != http.listen:
        r.problem(items["metrics"], "metrics.listen", "differs from http.listen: there is one "
                  "listener; keep http.listen only")
        return False
    if http.push_token is not None and http.listen is None and old is None:
        r.warn(items["http"], "http.push_token", "set, but http.listen is not: push is off")
    if http.public_url is not None and http.listen is None and old is None:
        r.warn(items["http"], "http.public_url", "set, but http.listen is not: WebSub is off")
    return True


_SectionCheck = Callable[[_Reader, dict[str, Any], dict[str, Node], Node, str], bool]
_SECTION_CHECKS: dict[type, _SectionCheck] = {
    MatrixConfig: _check_matrix, XmppConfig: _check_xmpp, FetchConfig: _check_fetch,
    RoomConfig: _check_room,
    Config: _check_config,
}


# --- reading a section from its declaration ---------------------------------------------


@functools.cache
def _known(cls: type) -> tuple[str, ...]:
    """The keys a section accepts."""
    keys: list[str] = []
    for f in fields(cls):
        spec = f.metadata.get("key")
        if spec is not None:
            keys += [spec.name or f.name, *(name for name, _ in spec.also)]
    return tuple(keys)


def _read_fields(r: _Reader, cls: type, items: dict[str, Node], node: Node, path: str,
                 index: int = 0, seen: dict[str, dict[str, int]] | None = None) -> Any:
    """An instance of ``cls`` from a section's entries, or _BAD after reporting problems
    (every key is read, so that all of its problems are reported at once)."""
    seen = {} if seen is None else seen
    values: dict[str, Any] = {}
    for fld in fields(cls):
        spec: _Key | None = fld.metadata.get("key")
        if spec is None:
            continue
        default = None if fld.default is MISSING else fld.default
        f = _Field(r, items, node, path, spec.name or fld.name, spec.required, default,
                   seen, index)
        value = spec.kind.read(f)
        if value is not _BAD and spec.check is not None and f.given:
            value = spec.check(f, value, items[f.key])
        values[fld.name] = value
    check = _SECTION_CHECKS.get(cls)
    ok = check(r, values, items, node, path) if check is not None else True
    if not ok or any(v is _BAD for v in values.values()):
        return _BAD
    return cls(**values)


def _read_item(r: _Reader, cls: type, node: Node, path: str, index: int,
               seen: dict[str, dict[str, int]]) -> Any:
    items = r.mapping(node, path, _known(cls))
    if items is None:
        return _BAD
    return _read_fields(r, cls, items, node, path, index, seen)


def _read_config(r: _Reader, root: Node) -> Config | None:
    top = r.mapping(root, "", _known(Config))
    if top is None:
        return None
    config = _read_fields(r, Config, top, root, "")
    return None if config is _BAD else config


# --- the README's table of keys ---------------------------------------------------------

_TABLE_START = ("<!-- The table of keys is made from bot/config.py by "
                "`python -m bot.config README.md`: edit it there. -->")
_TABLE_END = "<!-- End of the table of keys. -->"


def _rows(cls: type, prefix: str) -> Iterator[tuple[str, str, str]]:
    for fld in fields(cls):
        spec: _Key | None = fld.metadata.get("key")
        if spec is None:
            continue
        path = _join(prefix, spec.name or fld.name)
        if isinstance(spec.kind, _Section):
            yield from _rows(spec.kind.cls, path)
            continue
        if isinstance(spec.kind, _List):
            yield from _rows(spec.kind.cls, f"{path}[]")
            continue
        default = None if fld.default is MISSING else fld.default
        shown = spec.shown or ("required" if spec.required else spec.kind.show(default))
        yield path, spec.doc, shown
        for name, doc in spec.also:
            yield _join(prefix, name), doc, "—"


def key_table() -> str:
    """The README's table of configuration keys: key, meaning, default."""
    lines = ["| key | meaning | default |", "| --- | --- | --- |"]
    lines += [f"| `{path}` | {doc} | {shown} |" for path, doc, shown in _rows(Config, "")]
    return "\n".join(lines) + "\n"


def readme_with_key_table(readme: str) -> str:
    """``readme`` with the table between its two markers made anew from the declaration."""
    start, end = readme.find(_TABLE_START), readme.find(_TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {_TABLE_START!r} ... {_TABLE_END!r} markers")
    return readme[:start] + _TABLE_START + "\n" + key_table() + readme[end:]


# --- entry points -----------------------------------------------------------------------


def _yaml_problem(source: str, text: str, exc: yaml.YAMLError) -> str:
    # Only the parser's short problem description and a line: its "snippet" would echo
    # the offending line, which may be the one holding a secret.
    line = 1
    detail = "invalid YAML"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
            # e.g. where an unclosed quote started, far above the end of the file
            context += f" (line {exc.context_mark.line + 1})"
        detail = ": ".join(p for p in (context, exc.problem) if p) or detail
    message = f"{source}:{line}: YAML syntax error: {detail}"
    for candidate in _SECRET_LINE_RE.findall(text):
        value = candidate.strip().strip("'\"")
        if len(value) >= _MIN_SCRUB_LEN:
            message = message.replace(value, "***")
    return message


def load_config_text(text: str, *, source: str = "<config>", base_dir: Path | None = None,
                     environ: Mapping[str, str] | None = None,
                     ) -> tuple[Config, list[str]]:
    """Parse YAML ``text``; returns (config, warnings) or raises ConfigError(problems).

    Relative paths are resolved against ``base_dir`` (default: the current directory).
    """
    base = (base_dir if base_dir is not None else Path.cwd()).absolute()
    env = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(source, text, exc)]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the configuration is empty"])
    reader = _Reader(source, base, env)
    config = _read_config(reader, root)
    problems = reader.problems
    if problems or config is None:
        # `config is None` without a problem would be a bug here; never fail silently.
        raise ConfigError(problems or [f"{source}: invalid configuration"])
    return config, reader.warnings


def load_config(path: Path, environ: Mapping[str, str] | None = None,
                ) -> tuple[Config, list[str]]:
    """Read and parse the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or 'error'}"]) from None
    config, warnings = load_config_text(text, source=str(path),
                                        base_dir=path.absolute().parent, environ=environ)
    return replace(config, source=path.absolute()), warnings




def _main(argv: Sequence[str]) -> int:
    """``python -m bot.config README.md`` writes the table of keys into the README;
    without an argument, prints it."""
    if not argv:
        sys.stdout.write(key_table())
        return 0
    readme = Path(argv[0])
    text = readme.read_text(encoding="utf-8")
    updated = readme_with_key_table(text)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    print(f"{readme}: table of keys {'updated' if updated != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
