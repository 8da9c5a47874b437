"""The configuration: one YAML file, parsed once into frozen dataclasses.

Every problem names the file line and the dotted key path, and all problems are
reported together so an operator fixes the file in one pass. Secrets (access token,
password, token file content) never appear in a problem, a warning or a repr.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError
from .i18n import LANGUAGES
from .render import (
    CONTENT_MODES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SUMMARY_LENGTH,
    MAX_MESSAGE_BYTES,
    MIN_MESSAGE_BYTES,
    check_template,
)
from .templates import BUILTIN_TEMPLATES

__all__ = [
    "CommandsConfig", "Config", "EncryptionConfig", "FeedConfig", "FetchConfig",
    "MatrixConfig", "RoomConfig", "StorageConfig",
    "load_config", "load_config_text", "parse_duration", "parse_size",
]


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    homeserver: str
    user_id: str
    access_token: str | None
    password: str | None
    device_id: str | None
    display_name: str | None = None

    def __repr__(self) -> str:
        # Hand-written so that logging a config (or a traceback showing it) cannot leak.
        def mask(secret: str | None) -> str:
            return "None" if secret is None else "'***'"
        return (
            f"MatrixConfig(homeserver={self.homeserver!r}, user_id={self.user_id!r}, "
            f"access_token={mask(self.access_token)}, password={mask(self.password)}, "
            f"device_id={self.device_id!r}, display_name={self.display_name!r})"
        )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path


@dataclass(frozen=True, slots=True)
class FetchConfig:
    allow_private_networks: bool = False
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_body_bytes: int = 5 * 1024 * 1024
    concurrency: int = 8
    max_backoff: float = 21600.0
    max_image_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    enabled: bool = True
    # "all": every device of the members; "cross-signed": devices their owners signed
    # (what Element calls "exclude insecure devices"); "verified": verified ones only.
    trust: str = "all"


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    prefix: str = "!news"
    min_power_level: int = 50
    rate_limit: int = 5              # commands per user ...
    rate_window: float = 10.0        # ... in this many seconds
    max_feeds_per_room: int = 20
    default_interval: float = 15 * 60.0   # for feeds added by command
    max_conversations: int = 1000    # private conversations kept at once


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """An announcement room the bot owns: created when missing, kept as declared."""

    alias: str                          # "#name:server", the room's stable identity
    name: str | None = None             # None: not managed (people may set it)
    topic: str | None = None
    avatar: str | None = None           # an mxc:// URI
    join_rule: str = "public"           # public | knock | invite
    history: str = "shared"             # shared | world_readable | joined | invited
    encrypted: bool = False             # once on, a room's encryption can never be turned off
    directory: bool = False             # published in the homeserver's room directory
    space: str | None = None            # a parent space's alias or id
    pin_latest: bool = True
    topic_latest: bool = False          # the topic ends with "— Latest: TITLE LINK"
    moderators: tuple[str, ...] = ()    # given power level 50 (never lowered)
    welcome: str = "off"                # "dm": newcomers get the latest issue privately


@dataclass(frozen=True, slots=True)
class FeedConfig:
    name: str
    url: str
    rooms: tuple[str, ...]
    interval: float
    backfill: int = 0
    max_per_poll: int = 5
    msgtype: str = "m.notice"
    language: str | None = None
    # How items read: a built-in template name (default, compact, full) or Jinja2
    # source (from `template:` or read from `template_file:`), checked at load time.
    template: str = "default"
    content: str = "summary"                    # or "full": the whole entry
    summary_length: int = DEFAULT_SUMMARY_LENGTH
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    images: str = "inline"                      # inline | separate (an m.image) | off
    on_update: str = "edit"                     # edit the posted message, or ignore
    max_edits: int = 5                          # edits per item, then corrections are logged
    public: bool = False                        # open to personal subscriptions by DM


@dataclass(frozen=True, slots=True)
class Config:
    matrix: MatrixConfig
    storage: StorageConfig
    fetch: FetchConfig
    admins: tuple[str, ...]
    feeds: tuple[FeedConfig, ...]
    language: str = "en"
    log_level: str = "INFO"
    commands: CommandsConfig = CommandsConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    rooms: tuple[RoomConfig, ...] = ()
    metrics_listen: tuple[str, int] | None = None   # metrics.listen: "127.0.0.1:9180"
    source: Path | None = None


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

_TOP_KEYS = ("matrix", "storage", "fetch", "admins", "feeds", "language", "log_level",
             "commands", "encryption", "rooms", "metrics")
_ROOM_KEYS = ("alias", "name", "topic", "avatar", "join_rule", "history", "encrypted",
              "directory", "space", "pin_latest", "topic_latest", "moderators", "welcome")
_JOIN_RULES = ("public", "knock", "invite")
_HISTORY = ("shared", "world_readable", "joined", "invited")
_ALIAS_LOCALPART_RE = re.compile(r"#?([^\s:#]+)")
_MXC_RE = re.compile(r"mxc://[^\s/]+/[^\s/]+")
_ENCRYPTION_KEYS = ("enabled", "trust")
_COMMANDS_KEYS = ("prefix", "min_power_level", "rate_limit", "rate_window",
                  "max_feeds_per_room", "default_interval", "max_conversations")
_MATRIX_KEYS = ("homeserver", "user_id", "access_token", "access_token_file", "password",
                "device_id", "display_name")
_STORAGE_KEYS = ("path",)
_FETCH_KEYS = ("allow_private_networks", "timeout", "connect_timeout", "max_body_size",
               "concurrency", "max_backoff")
_FEED_KEYS = ("name", "url", "rooms", "interval", "backfill", "max_per_poll", "msgtype",
              "language", "template", "template_file", "content", "summary_length",
              "max_message_bytes", "images", "on_update", "max_edits", "public")
_TEMPLATE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

_DEFAULT_INTERVAL = 15 * 60.0
_MIN_INTERVAL = 1.0
_RECOMMENDED_INTERVAL = 60.0
# Scrubbing very short strings would mangle unrelated words in messages.
_MIN_SCRUB_LEN = 6


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
        self._constructor = SafeConstructor()
        self._key_nodes: dict[int, Node] = {}  # id(value node) -> its key node

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
            self._constructor.flatten_mapping(node)
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
                hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
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

    def _scalar(self, items: dict[str, Node], parent: Node, path: str, key: str,
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
        return self._scalar(items, parent, path, key, required, "a text value", secret)

    def integer(self, items: dict[str, Node], parent: Node, path: str, key: str,
                default: int, minimum: int) -> int | None:
        found = self._scalar(items, parent, path, key, False, "a whole number")
        if found is None:
            return None if key in items and not _is_null(items[key]) else default
        text, node = found
        value: int | None = None
        if node.tag == _TAG_INT:
            value = self._constructor.construct_yaml_int(node)
        elif node.tag == _TAG_STR and re.fullmatch(r"\s*\d+\s*", text):
            value = int(text)  # e.g. produced by ${VAR}
        if value is None:
            self.problem(node, _join(path, key), f"{_quote(text)} is not a whole number")
            return None
        if value < minimum:
            self.problem(node, _join(path, key), f"must be at least {minimum} (got {value})")
            return None
        return value

    def boolean(self, items: dict[str, Node], parent: Node, path: str, key: str,
                default: bool) -> bool | None:
        found = self._scalar(items, parent, path, key, False, "true or false")
        if found is None:
            return None if key in items and not _is_null(items[key]) else default
        text, node = found
        if node.tag == _TAG_BOOL:
            return bool(self._constructor.construct_yaml_bool(node))
        if node.tag == _TAG_STR and text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        self.problem(node, _join(path, key), f"{_quote(text)} is not true or false")
        return None

    def duration(self, items: dict[str, Node], parent: Node, path: str, key: str,
                 default: float, minimum: float) -> tuple[float, Node | None] | None:
        found = self._scalar(items, parent, path, key, False, "a duration")
        if found is None:
            if key in items and not _is_null(items[key]):
                return None
            return default, None
        text, node = found
        full = _join(path, key)
        try:
            if node.tag == _TAG_INT:
                value = parse_duration(self._constructor.construct_yaml_int(node))
            elif node.tag == _TAG_FLOAT:
                value = parse_duration(self._constructor.construct_yaml_float(node))
            elif node.tag == _TAG_STR:
                value = parse_duration(text)
            else:
                raise ValueError(text)
        except ValueError:
            self.problem(node, full,
                         f"{_quote(text)} is not a duration (examples: 30s, 15m, 2h)")
            return None
        if value < minimum:
            self.problem(node, full, f"{_quote(text)} is too short (minimum {minimum:g}s)")
            return None
        return value, node

    def choice(self, items: dict[str, Node], parent: Node, path: str, key: str,
               options: Sequence[str], default: str | None, *,
               fold: bool = False) -> str | None:
        found = self.string(items, parent, path, key)
        if found is None:
            return default
        text, node = found
        value = text.strip().upper() if fold else text.strip()
        if value not in options:
            allowed = ", ".join(options)
            self.problem(node, _join(path, key), f"{_quote(text)} is not one of: {allowed}")
            return default
        return value

    def path(self, text: str) -> Path:
        # Relative to the config file, so the bot behaves the same from any directory.
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path


# --- sections ---------------------------------------------------------------------------


def _is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER_RE.search(value))


def _read_matrix(r: _Reader, top: dict[str, Node], root: Node) -> MatrixConfig | None:
    found = r.section(top, root, "", "matrix", _MATRIX_KEYS, required=True)
    if found is None:
        return None
    items, node = found
    p = "matrix"
    ok = True

    homeserver: str | None = None
    hs = r.string(items, node, p, "homeserver", required=True)
    if hs is not None:
        text, hs_node = hs
        problem = _web_url_problem(text.strip())
        if problem:
            r.problem(hs_node, "matrix.homeserver", problem)
        else:
            homeserver = text.strip().rstrip("/")
            parts = urlsplit(homeserver)
            if parts.scheme.lower() == "http" and parts.hostname not in _LOOPBACK_HOSTS:
                r.warn(hs_node, "matrix.homeserver",
                       "plain http sends the access token unencrypted; use https")

    user_id: str | None = None
    uid = r.string(items, node, p, "user_id", required=True)
    if uid is not None:
        text, uid_node = uid
        if _USER_ID_RE.fullmatch(text.strip()):
            user_id = text.strip()
        else:
            r.problem(uid_node, "matrix.user_id",
                      f"{_quote(text)} is not a Matrix user id like @newsbot:example.org")

    present = [k for k in ("access_token", "access_token_file", "password")
               if not _is_null(items.get(k))]
    if not present:
        r.problem(node, p, "set one of access_token, access_token_file or password")
        ok = False
    elif len(present) > 1:
        r.problem(node, p, f"set only one of access_token, access_token_file or password "
                            f"(found {', '.join(present)})")
        ok = False

    access_token: str | None = None
    tok = r.string(items, node, p, "access_token", secret=True)
    if tok is not None:
        access_token = _check_secret(r, tok[1], "matrix.access_token", tok[0], "token")

    tok_file = r.string(items, node, p, "access_token_file")
    if tok_file is not None:
        access_token = _read_token_file(r, tok_file[1], tok_file[0])

    password: str | None = None
    pw = r.string(items, node, p, "password", secret=True)
    if pw is not None:
        password = _check_secret(r, pw[1], "matrix.password", pw[0], "password")

    device_id: str | None = None
    dev = r.string(items, node, p, "device_id")
    if dev is not None:
        device_id = dev[0].strip() or None
        if device_id is None:
            r.problem(dev[1], "matrix.device_id", "is empty")
    uses_token = "access_token" in present or "access_token_file" in present
    if uses_token and _is_null(items.get("device_id")):
        r.problem(node, "matrix.device_id",
                  "required with an access token (the device the token belongs to)")
        ok = False
    elif "password" in present and not uses_token and device_id is None:
        r.warn(node, "matrix.device_id",
               "not set: every start will log in as a new device")

    display = r.string(items, node, p, "display_name")
    display_name = (display[0].strip() or None) if display is not None else None

    if not ok or homeserver is None or user_id is None:
        return None
    if access_token is None and password is None:
        return None
    return MatrixConfig(homeserver=homeserver, user_id=user_id, access_token=access_token,
                        password=password, device_id=device_id, display_name=display_name)


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


def _read_storage(r: _Reader, top: dict[str, Node], root: Node) -> StorageConfig | None:
    found = r.section(top, root, "", "storage", _STORAGE_KEYS, required=True)
    if found is None:
        return None
    items, node = found
    path = r.string(items, node, "storage", "path", required=True)
    if path is None:
        return None
    if not path[0].strip():
        r.problem(path[1], "storage.path", "is empty")
        return None
    return StorageConfig(path=r.path(path[0].strip()))


def _read_fetch(r: _Reader, top: dict[str, Node], root: Node) -> FetchConfig | None:
    defaults = FetchConfig()
    found = r.section(top, root, "", "fetch", _FETCH_KEYS, required=False)
    if found is None:
        bad = not _is_null(top.get("fetch"))
        return None if bad else defaults
    items, node = found
    p = "fetch"
    private = r.boolean(items, node, p, "allow_private_networks",
                        defaults.allow_private_networks)
    timeout = r.duration(items, node, p, "timeout", defaults.timeout, 0.001)
    connect = r.duration(items, node, p, "connect_timeout", defaults.connect_timeout, 0.001)
    concurrency = r.integer(items, node, p, "concurrency", defaults.concurrency, 1)
    backoff = r.duration(items, node, p, "max_backoff", defaults.max_backoff, 1.0)

    max_body: int | None = defaults.max_body_bytes
    size = r.string(items, node, p, "max_body_size")
    if size is not None:
        text, size_node = size
        try:
            max_body = parse_size(text)
        except ValueError:
            r.problem(size_node, "fetch.max_body_size",
                      f"{_quote(text)} is not a size (examples: 5MiB, 512KiB, 1000000)")
            max_body = None
    elif not _is_null(items.get("max_body_size")):
        max_body = None

    if timeout is None or connect is None or backoff is None:
        return None
    if connect[0] > timeout[0]:
        r.warn(connect[1] or node, "fetch.connect_timeout",
               "is longer than fetch.timeout, which caps the whole fetch")
    if private is None or concurrency is None or max_body is None:
        return None
    return FetchConfig(allow_private_networks=private, timeout=timeout[0],
                       connect_timeout=connect[0], max_body_bytes=max_body,
                       concurrency=concurrency, max_backoff=backoff[0])


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
                   key: str = "admins") -> tuple[str, ...] | None:
    """A list of Matrix user ids under ``key`` (admins, a room's moderators)."""
    node = items.get(key)
    if _is_null(node):
        return ()
    assert node is not None
    full = _join(path, key)
    nodes = r.sequence(node, full)
    if nodes is None:
        return None
    return _unique_ids(r, nodes, full, lambda v: bool(_USER_ID_RE.fullmatch(v)),
                       "a Matrix user id like @alice:example.org",
                       "is not a Matrix user id like @alice:example.org")


def _read_rooms(r: _Reader, items: dict[str, Node], parent: Node,
                path: str) -> tuple[str, ...] | None:
    node = items.get("rooms")
    full = _join(path, "rooms")
    if _is_null(node):
        r.problem(node or parent, full, "required key is missing (at least one room)")
        return None
    assert node is not None
    nodes = r.sequence(node, full)
    if nodes is None:
        return None
    if not nodes:
        r.problem(node, full, "needs at least one room")
        return None
    return _unique_ids(
        r, nodes, full,
        lambda v: bool(_ROOM_ALIAS_RE.fullmatch(v) or _ROOM_ID_RE.fullmatch(v)),
        "a room like #news:example.org",
        "is not a room alias (#name:server) or room id (!id:server)")


def _read_template(r: _Reader, items: dict[str, Node], parent: Node,
                   path: str) -> str | None:
    """The feed's template: a built-in's name, or Jinja2 source that passed the checks."""
    inline = r.string(items, parent, path, "template")
    from_file = r.string(items, parent, path, "template_file")
    if inline is None and from_file is None:
        given = [k for k in ("template", "template_file") if not _is_null(items.get(k))]
        return None if given else "default"  # a value of the wrong kind was reported
    if inline is not None and from_file is not None:
        r.problem(from_file[1], _join(path, "template_file"),
                  "set only one of template or template_file")
        return None
    if inline is not None:
        source, node = inline
        key, where = _join(path, "template"), "the template"
        name = source.strip()
        if name in BUILTIN_TEMPLATES:
            return name
        if _TEMPLATE_NAME_RE.fullmatch(name):
            builtins = ", ".join(BUILTIN_TEMPLATES)
            hint = difflib.get_close_matches(name, list(BUILTIN_TEMPLATES), n=1, cutoff=0.6)
            advice = (f"did you mean {hint[0]!r}?" if hint else
                      "a template of your own is Jinja2 HTML, such as "
                      "'<b>{{ title }}</b> {{ link }}'")
            r.problem(node, key, f"{_quote(name)} is not a built-in template ({builtins}); "
                                 f"{advice}")
            return None
    else:
        assert from_file is not None
        text, node = from_file
        key = _join(path, "template_file")
        if not text.strip():
            r.problem(node, key, "is empty")
            return None
        file = r.path(text.strip())
        where = file.name
        try:
            source = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            r.problem(node, key, f"{file} is not a UTF-8 text file")
            return None
        except OSError as exc:
            r.problem(node, key, f"cannot read {file}: {exc.strerror or 'error'}")
            return None
    problem = check_template(source)
    if problem is not None:
        r.problem(node, key, f"line {problem.line} of {where}: {problem.detail}"
                             if problem.line else f"{where}: {problem.detail}")
        return None
    return source


def _read_message_bytes(r: _Reader, items: dict[str, Node], parent: Node,
                        path: str) -> int | None:
    found = r.string(items, parent, path, "max_message_bytes")
    if found is None:
        return None if not _is_null(items.get("max_message_bytes")) else \
            DEFAULT_MAX_MESSAGE_BYTES
    text, node = found
    key = _join(path, "max_message_bytes")
    try:
        value = parse_size(text)
    except ValueError:
        r.problem(node, key, f"{_quote(text)} is not a size (examples: 40000, 40KiB)")
        return None
    if not MIN_MESSAGE_BYTES <= value <= MAX_MESSAGE_BYTES:
        r.problem(node, key, f"must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} "
                             f"bytes (homeservers refuse events over 65536), got {value}")
        return None
    return value


def _read_feed(r: _Reader, node: Node, index: int,
               names: dict[str, int], urls: dict[str, int]) -> FeedConfig | None:
    path = f"feeds[{index}]"
    items = r.mapping(node, path, _FEED_KEYS)
    if items is None:
        return None

    name: str | None = None
    found = r.string(items, node, path, "name", required=True)
    if found is not None:
        text, name_node = found
        if not _FEED_NAME_RE.fullmatch(text):
            r.problem(name_node, f"{path}.name",
                      f"{_quote(text)} must be lowercase letters, digits, '_', '.' or '-' "
                      "(starting with a letter or digit)")
        elif text in names:
            r.problem(name_node, f"{path}.name",
                      f"{_quote(text)} is already used by feeds[{names[text]}]")
        else:
            names[text] = index
            name = text

    url: str | None = None
    found = r.string(items, node, path, "url", required=True)
    if found is not None:
        text, url_node = found
        problem = _web_url_problem(text.strip())
        if problem:
            r.problem(url_node, f"{path}.url", problem)
        else:
            url = text.strip()
            if url in urls:
                r.warn(url_node, f"{path}.url", f"same URL as feeds[{urls[url]}]")
            else:
                urls[url] = index

    rooms = _read_rooms(r, items, node, path)
    interval = r.duration(items, node, path, "interval", _DEFAULT_INTERVAL, _MIN_INTERVAL)
    if interval is not None and interval[0] < _RECOMMENDED_INTERVAL:
        r.warn(interval[1] or node, f"{path}.interval",
               f"{interval[0]:g}s is very frequent; at least 60s is kinder to the feed server")
    backfill = r.integer(items, node, path, "backfill", 0, 0)
    max_per_poll = r.integer(items, node, path, "max_per_poll", 5, 1)
    msgtype = r.choice(items, node, path, "msgtype", _MSGTYPES, "m.notice")
    language = r.choice(items, node, path, "language", LANGUAGES, None)
    template = _read_template(r, items, node, path)
    content = r.choice(items, node, path, "content", CONTENT_MODES, "summary")
    summary_length = r.integer(items, node, path, "summary_length", DEFAULT_SUMMARY_LENGTH, 0)
    max_message_bytes = _read_message_bytes(r, items, node, path)
    images = r.choice(items, node, path, "images", ("inline", "separate", "off"), "inline")
    on_update = r.choice(items, node, path, "on_update", ("edit", "ignore"), "edit")
    max_edits = r.integer(items, node, path, "max_edits", 5, 0)
    public = r.boolean(items, node, path, "public", False)

    # A bad value was reported as a problem, so loading fails whatever is returned here.
    if (name is None or url is None or rooms is None or interval is None or backfill is None
            or max_per_poll is None or msgtype is None or template is None
            or content is None or summary_length is None or max_message_bytes is None
            or images is None or on_update is None or max_edits is None or public is None):
        return None
    return FeedConfig(name=name, url=url, rooms=rooms, interval=interval[0],
                      backfill=backfill, max_per_poll=max_per_poll, msgtype=msgtype,
                      language=language, template=template, content=content,
                      summary_length=summary_length, max_message_bytes=max_message_bytes,
                      images=images, on_update=on_update, max_edits=max_edits,
                      public=public)


def _read_feeds(r: _Reader, top: dict[str, Node], root: Node) -> tuple[FeedConfig, ...] | None:
    node = top.get("feeds")
    if _is_null(node):
        r.problem(node or root, "feeds", "required section is missing (at least one feed)")
        return None
    assert node is not None
    nodes = r.sequence(node, "feeds")
    if nodes is None:
        return None
    if not nodes:
        r.problem(node, "feeds", "needs at least one feed")
        return None
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    feeds = [_read_feed(r, item, i, names, urls) for i, item in enumerate(nodes)]
    if any(f is None for f in feeds):
        return None
    return tuple(f for f in feeds if f is not None)


def _read_commands(r: _Reader, top: dict[str, Node], root: Node) -> CommandsConfig | None:
    defaults = CommandsConfig()
    found = r.section(top, root, "", "commands", _COMMANDS_KEYS, required=False)
    if found is None:
        return None if not _is_null(top.get("commands")) else defaults
    items, node = found
    p = "commands"
    prefix = r.string(items, node, p, "prefix")
    level = r.integer(items, node, p, "min_power_level", defaults.min_power_level, 0)
    rate = r.integer(items, node, p, "rate_limit", defaults.rate_limit, 1)
    window = r.duration(items, node, p, "rate_window", defaults.rate_window, 1.0)
    cap = r.integer(items, node, p, "max_feeds_per_room", defaults.max_feeds_per_room, 0)
    interval = r.duration(items, node, p, "default_interval", defaults.default_interval,
                          _MIN_INTERVAL)
    conversations = r.integer(items, node, p, "max_conversations",
                              defaults.max_conversations, 0)
    prefix_text = defaults.prefix
    if prefix is not None:
        prefix_text = prefix[0].strip()
        if not prefix_text or any(c.isspace() for c in prefix_text):
            r.problem(prefix[1], "commands.prefix", "must be one word, such as !news")
            return None
    elif not _is_null(items.get("prefix")):
        return None
    if level is None or rate is None or window is None or cap is None or interval is None \
            or conversations is None:
        return None
    return CommandsConfig(prefix=prefix_text, min_power_level=level, rate_limit=rate,
                          rate_window=window[0], max_feeds_per_room=cap,
                          default_interval=interval[0], max_conversations=conversations)


def _read_encryption(r: _Reader, top: dict[str, Node], root: Node) -> EncryptionConfig | None:
    defaults = EncryptionConfig()
    found = r.section(top, root, "", "encryption", _ENCRYPTION_KEYS, required=False)
    if found is None:
        return None if not _is_null(top.get("encryption")) else defaults
    items, node = found
    enabled = r.boolean(items, node, "encryption", "enabled", defaults.enabled)
    trust = r.choice(items, node, "encryption", "trust", ("all", "cross-signed", "verified"),
                     defaults.trust)
    if enabled is None or trust is None:
        return None
    return EncryptionConfig(enabled=enabled, trust=trust)


def _read_room_ref(r: _Reader, items: dict[str, Node], parent: Node, path: str, key: str,
                   server: str | None, *, required: bool, ids: bool) -> str | None:
    """A room alias, completed with the bot's server when only the localpart is given
    ("news" or "#news" -> "#news:example.org"); with ``ids``, a room id too."""
    found = r.string(items, parent, path, key, required=required)
    if found is None:
        return None
    text, node = found
    text = text.strip()
    if _ROOM_ALIAS_RE.fullmatch(text) or (ids and _ROOM_ID_RE.fullmatch(text)):
        return text
    local = _ALIAS_LOCALPART_RE.fullmatch(text)
    if local is not None and not text.startswith("!"):
        # Without a valid matrix.user_id (reported there) there is no server to add.
        return f"#{local.group(1)}:{server}" if server else None
    what = ("a room alias (#news:example.org), its localpart (news) or a room id"
            if ids else "a room alias (#news:example.org) or its localpart (news)")
    r.problem(node, _join(path, key), f"{_quote(text)} is not {what}")
    return None


def _read_moderators(r: _Reader, items: dict[str, Node], path: str) -> tuple[str, ...] | None:
    return _read_user_ids(r, items, path, "moderators")


def _read_managed_room(r: _Reader, node: Node, index: int, server: str | None,
                       aliases: dict[str, int]) -> RoomConfig | None:
    path = f"rooms[{index}]"
    items = r.mapping(node, path, _ROOM_KEYS)
    if items is None:
        return None
    alias = _read_room_ref(r, items, node, path, "alias", server, required=True, ids=False)
    if alias is not None:
        if alias in aliases:
            r.problem(items["alias"], f"{path}.alias",
                      f"{_quote(alias)} is already declared by rooms[{aliases[alias]}]")
            alias = None
        else:
            aliases[alias] = index
            if server and alias.split(":", 1)[1] != server:
                r.warn(items["alias"], f"{path}.alias",
                       f"newsbot can only create rooms on its own server ({server}): "
                       f"{alias} must exist already, with newsbot in it")
    texts: dict[str, str | None] = {}
    for key in ("name", "topic", "avatar"):
        found = r.string(items, node, path, key)
        texts[key] = found[0].strip() if found is not None else None
        if found is not None and key != "topic" and not texts[key]:
            r.problem(found[1], f"{path}.{key}", "is empty")
        elif found is not None and key == "avatar" and not _MXC_RE.fullmatch(found[0].strip()):
            r.problem(found[1], f"{path}.avatar",
                      f"{_quote(found[0])} is not an mxc:// URI (upload the image to the "
                      "homeserver first)")
    join_rule = r.choice(items, node, path, "join_rule", _JOIN_RULES, "public")
    history = r.choice(items, node, path, "history", _HISTORY, "shared")
    flags = {key: r.boolean(items, node, path, key, default) for key, default in
             (("encrypted", False), ("directory", False), ("pin_latest", True),
              ("topic_latest", False))}
    space = _read_room_ref(r, items, node, path, "space", server, required=False, ids=True)
    moderators = _read_moderators(r, items, path)
    welcome = r.choice(items, node, path, "welcome", ("dm", "off"), "off")
    if flags["directory"] and join_rule == "invite":
        r.warn(items.get("directory") or node, f"{path}.directory",
               "an invite-only room listed in the directory: people will find it but not "
               "be able to join (use join_rule: knock to let them ask)")
    if (alias is None or join_rule is None or history is None or moderators is None
            or welcome is None or any(v is None for v in flags.values())
            or (space is None and not _is_null(items.get("space")))
            or (texts["avatar"] is not None and not _MXC_RE.fullmatch(texts["avatar"]))
            or any(texts[k] == "" for k in ("name", "avatar"))):
        return None
    return RoomConfig(alias=alias, name=texts["name"], topic=texts["topic"],
                      avatar=texts["avatar"], join_rule=join_rule, history=history,
                      encrypted=bool(flags["encrypted"]), directory=bool(flags["directory"]),
                      space=space, pin_latest=bool(flags["pin_latest"]),
                      topic_latest=bool(flags["topic_latest"]), moderators=moderators,
                      welcome=welcome)


def _read_managed_rooms(r: _Reader, top: dict[str, Node], server: str | None,
                        feeds: tuple[FeedConfig, ...] | None,
                        encryption: EncryptionConfig | None) -> tuple[RoomConfig, ...] | None:
    node = top.get("rooms")
    if _is_null(node):
        return ()
    assert node is not None
    nodes = r.sequence(node, "rooms")
    if nodes is None:
        return None
    aliases: dict[str, int] = {}
    rooms = [_read_managed_room(r, item, i, server, aliases) for i, item in enumerate(nodes)]
    posted = {ref for feed in feeds or () for ref in feed.rooms}
    for item, room in zip(nodes, rooms, strict=True):
        if room is None:
            continue
        if feeds is not None and room.alias not in posted:
            r.warn(item, f"rooms[{aliases[room.alias]}]",
                   f"no feed posts into {room.alias} (name it in a feed's rooms)")
        if room.encrypted and encryption is not None and not encryption.enabled:
            r.warn(item, f"rooms[{aliases[room.alias]}].encrypted",
                   "encryption.enabled is false: newsbot could not post into this room")
    if any(room is None for room in rooms):
        return None
    return tuple(room for room in rooms if room is not None)


def _read_config(r: _Reader, root: Node) -> Config | None:
    top = r.mapping(root, "", _TOP_KEYS)
    if top is None:
        return None
    matrix = _read_matrix(r, top, root)
    storage = _read_storage(r, top, root)
    fetch = _read_fetch(r, top, root)
    admins = _read_user_ids(r, top, "")
    language = r.choice(top, root, "", "language", LANGUAGES, "en")
    log_level = r.choice(top, root, "", "log_level", _LOG_LEVELS, "INFO", fold=True)
    feeds = _read_feeds(r, top, root)
    commands = _read_commands(r, top, root)
    encryption = _read_encryption(r, top, root)
    server = matrix.user_id.split(":", 1)[1] if matrix is not None else None
    rooms = _read_managed_rooms(r, top, server, feeds, encryption)
    metrics = _read_metrics(r, top, root)
    if (matrix is None or storage is None or fetch is None or admins is None
            or feeds is None or language is None or log_level is None or commands is None
            or encryption is None or rooms is None or isinstance(metrics, bool)):
        return None
    return Config(matrix=matrix, storage=storage, fetch=fetch, admins=admins, feeds=feeds,
                  language=language, log_level=log_level, commands=commands,
                  encryption=encryption, rooms=rooms, metrics_listen=metrics)


def _read_metrics(r: _Reader, top: dict[str, Node], root: Node,
                  ) -> tuple[str, int] | None | bool:
    """``metrics.listen``: host:port, None when off, False after a reported problem."""
    found = r.section(top, root, "", "metrics", ("listen",), required=False)
    if found is None:
        return False if not _is_null(top.get("metrics")) else None
    items, node = found
    listen = r.string(items, node, "metrics", "listen")
    if listen is None:
        return None if _is_null(items.get("listen")) else False
    text, value_node = listen
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        r.problem(value_node, "metrics.listen",
                  f"{_quote(text)} is not host:port (example: 127.0.0.1:9180)")
        return False
    if host not in _LOOPBACK_HOSTS:
        r.warn(value_node, "metrics.listen", "not a loopback address: put the metrics "
               "behind your own access control")
    return host, int(port)


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


