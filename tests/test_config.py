"""Config loading: typed values, every problem with its line and key, secrets never shown."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from bot.config import (
    Config,
    FetchConfig,
    MatrixConfig,
    key_table,
    load_config,
    load_config_text,
    parse_duration,
    parse_size,
    readme_with_key_table,
)
from bot.errors import ConfigError

VALID = """\
matrix:
  homeserver: https://matrix.example.org/
  user_id: "@newsbot:example.org"
  access_token: syt_bmV3c2JvdA_abcdefghijklmnop_0a1b2c
  device_id: NEWSBOTDEV
  display_name: Actualités InterHop
storage:
  path: data/newsbot.db
admins:
  - "@alice:example.org"
language: fr
feeds:
  - name: interhop
    url: https://interhop.org/feed.xml
    rooms: ["#actus:example.org"]
"""


def load(text: str, env: dict[str, str] | None = None,
         base_dir: Path | None = None) -> tuple[Config, list[str]]:
    return load_config_text(textwrap.dedent(text), source="config.yaml",
                            base_dir=base_dir or Path("/srv/newsbot"), environ=env or {})


def problems(text: str, env: dict[str, str] | None = None,
             base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, env, base_dir)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def with_matrix(matrix_lines: str) -> str:
    """VALID with its matrix section replaced (matrix stays at lines 1..)."""
    rest = VALID.split("storage:", 1)[1]
    return "matrix:\n" + textwrap.indent(textwrap.dedent(matrix_lines), "  ") + "storage:" + rest


# --- durations and sizes ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), ("1h30m", 5400.0),
    ("1h 30m", 5400.0), ("1.5h", 5400.0), ("90", 90.0), ("0", 0.0), (45, 45.0), (2.5, 2.5),
    ("1d2h3m4s", 93784.0), (" 10S ", 10.0),
])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "fifteen", "15 minutes", "m", "-5s", "1m1h", "5ms", "1h1h", True, -1, float("nan"),
    float("inf"), "1e3",
])
def test_parse_duration_rejects(text: str | int | float) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("5MiB", 5 * 1024 * 1024), ("512KiB", 512 * 1024), ("1000000", 1_000_000),
    (1000000, 1_000_000), ("2MB", 2_000_000), ("1 gib", 1024**3), ("10b", 10),
])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "5 MiBs", "0", "-1MiB", "5TB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


# --- a valid file -----------------------------------------------------------------------

def test_valid_config_values_and_defaults() -> None:
    config, warnings = load(VALID)
    assert warnings == []
    assert config.matrix == MatrixConfig(
        homeserver="https://matrix.example.org", user_id="@newsbot:example.org",
        access_token="syt_bmV3c2JvdA_abcdefghijklmnop_0a1b2c", password=None,
        device_id="NEWSBOTDEV", display_name="Actualités InterHop")
    # Relative paths follow the config file, not the working directory.
    assert config.storage.path == Path("/srv/newsbot/data/newsbot.db")
    assert config.fetch == FetchConfig()
    assert config.admins == ("@alice:example.org",)
    assert config.language == "fr"
    assert config.log_level == "INFO"
    assert config.source is None
    (feed,) = config.feeds
    assert feed.name == "interhop"
    assert feed.url == "https://interhop.org/feed.xml"
    assert feed.rooms == ("#actus:example.org",)
    assert feed.interval == 900.0
    assert (feed.backfill, feed.max_per_poll, feed.msgtype, feed.language) == (
        0, 5, "m.notice", None)


def test_config_is_frozen() -> None:
    config, _ = load(VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.language = "en"  # type: ignore[misc]


def test_all_options() -> None:
    config, warnings = load("""\
        matrix:
          homeserver: http://localhost:8008
          user_id: "@bot:localhost"
          password: "123456789"
          device_id: DEV
        storage:
          path: /var/lib/newsbot/state.db
        fetch:
          allow_private_networks: true
          timeout: 1m
          connect_timeout: 5
          max_body_size: 512KiB
          concurrency: 2
          max_backoff: 1h30m
        admins: []
        log_level: debug
        feeds:
          - name: a.b-c_1
            url: http://127.0.0.1:8080/feed
            rooms: ["!AbCdEf:localhost", "#a:localhost:8448", "!v12RoomIdWithoutServer"]
            interval: 30s
            backfill: 3
            max_per_poll: 10
            msgtype: m.text
            language: en
        """)
    assert config.matrix.password == "123456789"
    assert config.matrix.access_token is None
    assert config.storage.path == Path("/var/lib/newsbot/state.db")
    assert config.fetch == FetchConfig(allow_private_networks=True, timeout=60.0,
                                       connect_timeout=5.0, max_body_bytes=512 * 1024,
                                       concurrency=2, max_backoff=5400.0)
    assert config.admins == ()
    assert config.log_level == "DEBUG"
    assert config.language == "en"
    feed = config.feeds[0]
    assert feed.rooms == ("!AbCdEf:localhost", "#a:localhost:8448", "!v12RoomIdWithoutServer")
    assert (feed.interval, feed.backfill, feed.max_per_poll, feed.msgtype, feed.language) == (
        30.0, 3, 10, "m.text", "en")
    # Short interval: allowed (tests need it) but flagged.
    assert warnings == ["config.yaml:21: feeds[0].interval: 30s is very frequent; at least 60s "
                        "is kinder to the feed server"]


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(VALID, encoding="utf-8")
    config, _ = load_config(path, environ={})
    assert config.source == path
    assert config.storage.path == tmp_path / "data" / "newsbot.db"


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", environ={})
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read: "
                                   "No such file or directory"]


def test_yaml_merge_keys_and_anchors() -> None:
    config, _ = load(VALID + """\
  - &base
    name: second
    url: https://example.org/a.xml
    rooms: &rooms ["#b:example.org"]
    interval: 1h
  - <<: *base
    name: third
    url: https://example.org/b.xml
""")
    assert [f.name for f in config.feeds] == ["interhop", "second", "third"]
    assert config.feeds[2].rooms == ("#b:example.org",)
    assert config.feeds[2].interval == 3600.0


# --- problems: line numbers and key paths -----------------------------------------------

def test_bad_duration_names_line_and_key() -> None:
    text = VALID + """\
  - name: second
    url: https://example.org/feed
    rooms: ["#b:example.org"]
    interval: fifteen
"""
    assert problems(text) == [
        'config.yaml:19: feeds[1].interval: "fifteen" is not a duration '
        "(examples: 30s, 15m, 2h)"]


def test_yaml_syntax_error_is_one_problem_with_line() -> None:
    text = VALID.replace("  path: data/newsbot.db", "  path: [unclosed")
    (problem,) = problems(text)
    assert problem.startswith("config.yaml:9: YAML syntax error: ")


def test_empty_and_non_mapping_documents() -> None:
    assert problems("") == ["config.yaml:1: the configuration is empty"]
    assert problems("- a\n- b\n") == [
        "config.yaml:1: expected a mapping (key: value), got a list"]


def test_unknown_keys_get_suggestions() -> None:
    text = VALID.replace("  device_id:", "  devce_id:").replace("storage:", "storag:")
    # A misspelt key also leaves its intended key missing: both are reported.
    assert problems(text) == [
        "config.yaml:1: matrix.device_id: required with an access token "
        "(the device the token belongs to)",
        "config.yaml:1: storage: required section is missing",
        "config.yaml:5: matrix.devce_id: unknown key, did you mean 'device_id'?",
        "config.yaml:7: storag: unknown key, did you mean 'storage'?",
    ]


def test_unknown_key_without_close_match() -> None:
    text = VALID + "colour: blue\n"
    assert problems(text) == ["config.yaml:16: colour: unknown key"]


def test_missing_required_keys_name_the_parent_line() -> None:
    text = """\
        language: fr
        matrix:
          access_token: syt_abcdefghijklmnop
          device_id: DEV
        storage: {}
        feeds:
          - url: https://example.org/feed
        """
    assert problems(text) == [
        "config.yaml:2: matrix.homeserver: required key is missing",
        "config.yaml:2: matrix.user_id: required key is missing",
        "config.yaml:5: storage.path: required key is missing",
        "config.yaml:7: feeds[0].name: required key is missing",
        "config.yaml:7: feeds[0].rooms: required key is missing (at least one room)",
    ]


def test_missing_sections() -> None:
    assert problems("language: en\n") == [
        "config.yaml:1: storage: required section is missing",
        "config.yaml:1: feeds: required section is missing (at least one feed)",
        "config.yaml:1: matrix: required section is missing (or an xmpp: section, for "
        "XMPP only)",
    ]


def test_wrong_types() -> None:
    text = """\
        matrix:
          homeserver: [https://matrix.example.org]
          user_id: {id: "@bot:example.org"}
          password: hunter2-long-password
        storage:
          path: data.db
        fetch:
          allow_private_networks: maybe
          concurrency: lots
          timeout: [1]
        admins: "@alice:example.org"
        feeds:
          - name: x
            url: https://example.org/feed
            rooms: "#a:example.org"
            backfill: 1.5
            max_per_poll: 0
          - just a string
        """
    assert problems(text) == [
        "config.yaml:2: matrix.homeserver: expected a text value, got a list",
        "config.yaml:3: matrix.user_id: expected a text value, got a mapping",
        'config.yaml:8: fetch.allow_private_networks: "maybe" is not true or false',
        'config.yaml:9: fetch.concurrency: "lots" is not a whole number',
        "config.yaml:10: fetch.timeout: expected a duration, got a list",
        "config.yaml:11: admins: expected a list, got a single value",
        "config.yaml:15: feeds[0].rooms: expected a list, got a single value",
        'config.yaml:16: feeds[0].backfill: "1.5" is not a whole number',
        "config.yaml:17: feeds[0].max_per_poll: must be at least 1 (got 0)",
        "config.yaml:18: feeds[1]: expected a mapping (key: value), got a single value",
    ]


def test_duplicate_keys_are_refused() -> None:
    text = VALID.replace("language: fr\n", "language: fr\nlanguage: en\n")
    assert problems(text) == ["config.yaml:12: language: duplicate key (first set on line 11)"]


def test_every_feed_problem_is_collected() -> None:
    text = VALID + """\
  - name: Bad Name
    url: ftp://example.org/feed
    rooms: []
    intervall: 5m
    backfill: -1
    msgtype: m.image
    language: de
  - name: interhop
    url: "https://"
    rooms: ["#a:example.org", "#a:example.org", "news", "@alice:example.org"]
    interval: 0.5s
"""
    assert problems(text) == [
        "config.yaml:16: feeds[1].name: \"Bad Name\" must be lowercase letters, digits, '_', "
        "'.' or '-' (starting with a letter or digit)",
        'config.yaml:17: feeds[1].url: "ftp://example.org/feed" is not an http(s) URL',
        "config.yaml:18: feeds[1].rooms: needs at least one room",
        "config.yaml:19: feeds[1].intervall: unknown key, did you mean 'interval'?",
        "config.yaml:20: feeds[1].backfill: must be at least 0 (got -1)",
        'config.yaml:21: feeds[1].msgtype: "m.image" is not one of: m.notice, m.text',
        'config.yaml:22: feeds[1].language: "de" is not one of: fr, en',
        'config.yaml:23: feeds[2].name: "interhop" is already used by feeds[0]',
        'config.yaml:24: feeds[2].url: "https://" is not an http(s) URL',
        'config.yaml:25: feeds[2].rooms[1]: "#a:example.org" is listed twice',
        'config.yaml:25: feeds[2].rooms[2]: "news" is not a room alias (#name:server), a '
        "room id (!id:server) or an XMPP address (xmpp:news@conference.example.org)",
        'config.yaml:25: feeds[2].rooms[3]: "@alice:example.org" is not a room alias '
        "(#name:server), a room id (!id:server) or an XMPP address "
        "(xmpp:news@conference.example.org)",
        'config.yaml:26: feeds[2].interval: "0.5s" is too short (minimum 1s)',
    ]


def test_empty_feed_list_and_same_url_warning() -> None:
    assert problems(VALID.split("feeds:")[0] + "feeds: []\n") == [
        "config.yaml:12: feeds: needs at least one feed"]
    _, warnings = load(VALID + """\
  - name: copy
    url: https://interhop.org/feed.xml
    rooms: ["#b:example.org"]
""")
    assert warnings == ["config.yaml:17: feeds[1].url: same URL as feeds[0]"]


def test_admins_are_user_ids() -> None:
    text = VALID.replace('  - "@alice:example.org"\n',
                         '  - "@alice:example.org"\n  - alice\n  - "@alice:example.org"\n')
    assert problems(text) == [
        'config.yaml:11: admins[1]: "alice" is not a Matrix user id like @alice:example.org '
        'or an XMPP address like xmpp:alice@example.org',
        'config.yaml:12: admins[2]: "@alice:example.org" is listed twice',
    ]


def test_top_level_choices() -> None:
    text = VALID.replace("language: fr", "language: de\nlog_level: loud")
    assert problems(text) == [
        'config.yaml:11: language: "de" is not one of: fr, en',
        'config.yaml:12: log_level: "loud" is not one of: DEBUG, INFO, WARNING, ERROR, CRITICAL',
    ]


def test_fetch_checks() -> None:
    text = VALID + """\
fetch:
  max_body_size: huge
  connect_timeout: never
  max_backoff: 0
"""
    assert problems(text) == [
        'config.yaml:17: fetch.max_body_size: "huge" is not a size '
        "(examples: 5MiB, 512KiB, 1000000)",
        'config.yaml:18: fetch.connect_timeout: "never" is not a duration '
        "(examples: 30s, 15m, 2h)",
        'config.yaml:19: fetch.max_backoff: "0" is too short (minimum 1s)',
    ]
    _, warnings = load(VALID + "fetch:\n  timeout: 5s\n  connect_timeout: 10s\n")
    assert warnings == ["config.yaml:18: fetch.connect_timeout: is longer than fetch.timeout, "
                        "which caps the whole fetch"]


# --- matrix -----------------------------------------------------------------------------

def test_matrix_needs_exactly_one_credential() -> None:
    none = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        """)
    assert problems(none) == [
        "config.yaml:1: matrix: set one of access_token, access_token_file or password"]
    both = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        access_token: syt_abcdefghijkl
        password: correct-horse-battery
        device_id: DEV
        """)
    assert problems(both) == [
        "config.yaml:1: matrix: set only one of access_token, access_token_file or password "
        "(found access_token, password)"]


def test_matrix_token_needs_device_id_and_password_warns_without() -> None:
    text = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        access_token: syt_abcdefghijkl
        """)
    assert problems(text) == [
        "config.yaml:1: matrix.device_id: required with an access token "
        "(the device the token belongs to)"]
    _, warnings = load(with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        password: correct-horse-battery
        """))
    assert warnings == [
        "config.yaml:1: matrix.device_id: not set: every start will log in as a new device"]


def test_matrix_homeserver_and_user_id_formats() -> None:
    text = with_matrix("""\
        homeserver: matrix.example.org
        user_id: newsbot
        password: correct-horse-battery
        device_id: DEV
        """)
    assert problems(text) == [
        'config.yaml:2: matrix.homeserver: "matrix.example.org" is not an http(s) URL',
        'config.yaml:3: matrix.user_id: "newsbot" is not a Matrix user id like '
        "@newsbot:example.org",
    ]
    _, warnings = load(with_matrix("""\
        homeserver: http://matrix.example.org
        user_id: "@bot:example.org"
        password: correct-horse-battery
        device_id: DEV
        """))
    assert warnings == ["config.yaml:2: matrix.homeserver: plain http sends the access token "
                        "unencrypted; use https"]


@pytest.mark.parametrize("placeholder", [
    "CHANGE_ME", "changeme", "<your access token>", "<...>", "syt_CHANGE_ME", "xxxxxxxx",
    "YOUR_ACCESS_TOKEN", "REPLACE-ME",
])
def test_placeholders_are_refused(placeholder: str) -> None:
    text = with_matrix(f"""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        access_token: "{placeholder}"
        device_id: DEV
        """)
    assert problems(text) == [
        "config.yaml:4: matrix.access_token: still holds the example placeholder; "
        "put the real token"]
    text = text.replace("access_token", "password").replace("  device_id: DEV\n", "")
    assert problems(text) == [
        "config.yaml:4: matrix.password: still holds the example placeholder; "
        "put the real password"]


def test_real_secrets_are_not_mistaken_for_placeholders() -> None:
    text = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        password: " your_dog_likes_xxx "
        device_id: DEV
        """)
    config, _ = load(text)
    assert config.matrix.password == " your_dog_likes_xxx "  # not stripped: it is a password


def test_access_token_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    token_file = tmp_path / "secrets" / "token"
    token_file.write_text("  syt_from_file_0123456789\n", encoding="utf-8")
    token_file.chmod(0o600)
    text = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        access_token_file: secrets/token
        device_id: DEV
        """)
    config, warnings = load(text, base_dir=tmp_path)
    assert config.matrix.access_token == "syt_from_file_0123456789"
    assert warnings == []

    token_file.chmod(0o644)
    _, warnings = load(text, base_dir=tmp_path)
    assert warnings == [f"config.yaml:4: matrix.access_token_file: {token_file} is readable "
                        "by other users; chmod 600 it"]

    token_file.unlink()
    assert problems(text, base_dir=tmp_path) == [
        f"config.yaml:4: matrix.access_token_file: cannot read {token_file}: "
        "No such file or directory"]

    token_file.write_text("CHANGE_ME\n", encoding="utf-8")
    token_file.chmod(0o600)
    assert problems(text, base_dir=tmp_path) == [
        f"config.yaml:4: matrix.access_token_file ({token_file}): still holds the example "
        "placeholder; put the real token"]


# --- environment variables --------------------------------------------------------------

def test_env_expansion() -> None:
    text = with_matrix("""\
        homeserver: ${HS}
        user_id: "@bot:${DOMAIN}"
        access_token: ${TOKEN}
        device_id: "$${literal}"
        display_name: costs 5$ and $$5
        """).replace("path: data/newsbot.db", "path: ${STATE_DIR}/newsbot.db") + \
        "fetch:\n  concurrency: ${N}\n  allow_private_networks: ${PRIVATE}\n"
    env = {"HS": "https://matrix.example.org", "DOMAIN": "example.org",
           "TOKEN": "syt_env_token_123456", "STATE_DIR": "/var/lib/newsbot", "N": "3",
           "PRIVATE": "true"}
    config, _ = load(text, env)
    assert config.matrix.homeserver == "https://matrix.example.org"
    assert config.matrix.user_id == "@bot:example.org"
    assert config.matrix.access_token == "syt_env_token_123456"
    assert config.matrix.device_id == "${literal}"
    assert config.matrix.display_name == "costs 5$ and $5"
    assert config.storage.path == Path("/var/lib/newsbot/newsbot.db")
    assert config.fetch.concurrency == 3
    assert config.fetch.allow_private_networks is True


def test_env_unset_and_malformed() -> None:
    text = with_matrix("""\
        homeserver: https://matrix.example.org
        user_id: "@bot:example.org"
        access_token: ${MATRIX_TOKEN}
        device_id: ${DEVICE
        display_name: ${not a name}
        """)
    assert problems(text, {"OTHER": "x"}) == [
        "config.yaml:4: matrix.access_token: environment variable MATRIX_TOKEN is not set",
        "config.yaml:5: matrix.device_id: malformed ${...} reference (write ${NAME}, or $$ "
        "for a literal dollar sign)",
        "config.yaml:6: matrix.display_name: malformed ${...} reference (write ${NAME}, or $$ "
        "for a literal dollar sign)",
    ]


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSBOT_TEST_TOKEN", "syt_from_os_environ_42")
    text = VALID.replace("syt_bmV3c2JvdA_abcdefghijklmnop_0a1b2c", "${NEWSBOT_TEST_TOKEN}")
    config, _ = load_config_text(text, base_dir=Path("/srv"))
    assert config.matrix.access_token == os.environ["NEWSBOT_TEST_TOKEN"]


# --- secrets never leak -----------------------------------------------------------------

SECRET = "syt_S3CRET_d0_n0t_l3ak_9f8e7d"


def _secret_configs(token_file: Path) -> list[tuple[str, dict[str, str]]]:
    bad_rest = """\
storage:
  path: [1]
fetch:
  timeout: forever
feeds:
  - name: BAD
    url: gopher://x
    rooms: [nope]
"""
    return [
        # token + password + no device id, everything else broken too
        (f"matrix:\n  homeserver: nope\n  user_id: nope\n  access_token: {SECRET}\n"
         f"  password: {SECRET}\n" + bad_rest, {}),
        # the secret typed under a misspelt key, and duplicated
        (f"matrix:\n  homeserver: https://m.example.org\n  user_id: '@b:example.org'\n"
         f"  acces_token: {SECRET}\n  access_token: {SECRET}\n  access_token: {SECRET}\n"
         + bad_rest, {}),
        # the secret pasted into the wrong fields by mistake
        (f"matrix:\n  homeserver: {SECRET}\n  user_id: {SECRET}\n  password: {SECRET}\n"
         f"  device_id: [{SECRET}]\n" + bad_rest + f"  - name: {SECRET}\n    url: {SECRET}\n"
         f"    rooms: ['{SECRET}']\n    interval: {SECRET}\nadmins: ['{SECRET}']\n", {}),
        # the secret with whitespace, and wrong types around it
        (f"matrix:\n  homeserver: https://m.example.org\n  user_id: '@b:example.org'\n"
         f"  access_token: '{SECRET} {SECRET}'\n  password: {{a: {SECRET}}}\n" + bad_rest, {}),
        # the secret from the environment, with an unset variable next to it
        ("matrix:\n  homeserver: ${HS}\n  user_id: '@b:example.org'\n"
         "  access_token: ${TOKEN}\n  device_id: ${UNSET}\n" + bad_rest, {"TOKEN": SECRET}),
        # the secret from a file, world-readable, with problems around it
        (f"matrix:\n  homeserver: http://m.example.org\n  user_id: '@b:example.org'\n"
         f"  access_token_file: {token_file}\n" + bad_rest, {}),
        # YAML syntax errors on the secret's own line
        (f'matrix:\n  access_token: "{SECRET}\n', {}),
        (f"matrix:\n  password: '{SECRET}\n  x: 'y\n", {}),
        (f"matrix:\n  password: {SECRET}\n    bad: indent\n", {}),
        (f'matrix:\n  password: "{SECRET}\\q"\n', {}),
    ]


def test_secrets_never_appear_in_problems_warnings_or_repr(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n", encoding="utf-8")
    token_file.chmod(0o644)
    for text, env in _secret_configs(token_file):
        with pytest.raises(ConfigError) as info:
            load_config_text(text, source="config.yaml", base_dir=tmp_path, environ=env)
        assert info.value.problems, text
        for message in [*info.value.problems, str(info.value), repr(info.value)]:
            assert "S3CRET" not in message, (text, message)

    # And on success: warnings and every repr/str of the config objects.
    good = (f"matrix:\n  homeserver: http://m.example.org\n  user_id: '@b:example.org'\n"
            f"  access_token_file: {token_file}\n  device_id: D\n"
            "storage:\n  path: x.db\nfeeds:\n  - name: a\n    url: https://e.org/f\n"
            "    rooms: ['#a:e.org']\n    interval: 2s\n")
    config, warnings = load_config_text(good, base_dir=tmp_path, environ={})
    assert config.matrix.access_token == SECRET
    assert warnings  # http, world-readable file, short interval
    for message in [*warnings, repr(config), str(config), repr(config.matrix),
                    str(config.matrix), f"{config!r}"]:
        assert "S3CRET" not in message, message


def test_matrix_repr_masks_secrets() -> None:
    matrix = MatrixConfig(homeserver="https://m.example.org", user_id="@b:example.org",
                          access_token=SECRET, password="hunter2", device_id="DEV")
    assert repr(matrix) == (
        "MatrixConfig(homeserver='https://m.example.org', user_id='@b:example.org', "
        "access_token='***', password='***', device_id='DEV', display_name=None)")
    assert "password=None" in repr(dataclasses.replace(matrix, password=None))


# --- how items read: template, template_file, content, summary_length, max_message_bytes

def test_message_settings_default() -> None:
    (feed,) = load(VALID)[0].feeds
    assert (feed.template, feed.content, feed.summary_length, feed.max_message_bytes) == (
        "default", "summary", 400, 40 * 1024)


def test_message_settings() -> None:
    config, warnings = load(VALID + """\
    template: compact
    content: full
    summary_length: 0
    max_message_bytes: 20KiB
""")
    assert warnings == []
    (feed,) = config.feeds
    assert (feed.template, feed.content, feed.summary_length, feed.max_message_bytes) == (
        "compact", "full", 0, 20 * 1024)
    (feed,) = load(VALID + "    template: full\n    max_message_bytes: 45056\n")[0].feeds
    assert (feed.template, feed.max_message_bytes) == ("full", 45056)


def test_inline_template_is_kept_as_source() -> None:
    (feed,) = load(VALID + """\
    template: |
      <p><b>{{ title }}</b> · {{ published | date }}</p>
      {{ summary }}
""")[0].feeds
    assert feed.template == "<p><b>{{ title }}</b> · {{ published | date }}</p>\n{{ summary }}\n"


def test_template_problems_name_the_key_and_the_template_line() -> None:
    text = VALID + """\
    template: |
      <b>{{ title }}</b>
      {{ link }
  - name: second
    url: https://interhop.org/second.xml
    rooms: ["#actus:example.org"]
    template: "<p>{% if author %}{{ author | uper }}{% endif %}{{ titel }}</p>"
  - name: third
    url: https://interhop.org/third.xml
    rooms: ["#actus:example.org"]
    template: compakt
  - name: fourth
    url: https://interhop.org/fourth.xml
    rooms: ["#actus:example.org"]
    template: "{{ title }}"
    template_file: news.html
  - name: fifth
    url: https://interhop.org/fifth.xml
    rooms: ["#actus:example.org"]
    template: "{{ title }}\\n{{ author.upper() }}"
    content: partial
    summary_length: -1
    max_message_bytes: 1MiB
  - name: sixth
    url: https://interhop.org/sixth.xml
    rooms: ["#actus:example.org"]
    template: notes
    max_message_bytes: lots
"""
    assert problems(text) == [
        "config.yaml:16: feeds[0].template: line 2 of the template: unexpected '}'",
        "config.yaml:22: feeds[1].template: line 1 of the template: unknown filter 'uper' "
        "(did you mean 'upper'?)",
        'config.yaml:26: feeds[2].template: "compakt" is not a built-in template (default, '
        "compact, full); did you mean 'compact'?",
        "config.yaml:31: feeds[3].template_file: set only one of template or template_file",
        "config.yaml:35: feeds[4].template: line 2 of the template: 'None' has no attribute "
        "'upper' (when rendering an entry with no title, link, date, author or text)",
        'config.yaml:36: feeds[4].content: "partial" is not one of: summary, full',
        "config.yaml:37: feeds[4].summary_length: must be at least 0 (got -1)",
        "config.yaml:38: feeds[4].max_message_bytes: must be between 4096 and 45056 bytes "
        "(homeservers refuse events over 65536), got 1048576",
        'config.yaml:42: feeds[5].template: "notes" is not a built-in template (default, '
        "compact, full); a template of your own is Jinja2 HTML, such as "
        "'<b>{{ title }}</b> {{ link }}'",
        'config.yaml:43: feeds[5].max_message_bytes: "lots" is not a size '
        "(examples: 40000, 40KiB)",
    ]


def test_template_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    good = tmp_path / "templates" / "news.html"
    good.write_text("<p>{{ title }}</p>\n{{ content }}\n", encoding="utf-8")
    text = VALID + "    template_file: templates/news.html\n"
    (feed,) = load(text, base_dir=tmp_path)[0].feeds
    assert feed.template == "<p>{{ title }}</p>\n{{ content }}\n"

    good.write_text("<p>{{ title }}</p>\n{% for c in categories %}{{ c }\n", encoding="utf-8")
    assert problems(text, base_dir=tmp_path) == [
        "config.yaml:16: feeds[0].template_file: line 2 of news.html: unexpected '}'"]
    missing = VALID + "    template_file: nowhere.html\n"
    assert problems(missing, base_dir=tmp_path) == [
        f"config.yaml:16: feeds[0].template_file: cannot read {tmp_path / 'nowhere.html'}: "
        "No such file or directory"]


# --- the README's table of keys is made from the declaration ----------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_table_of_keys_is_the_declaration() -> None:
    readme = README.read_text(encoding="utf-8")
    assert readme_with_key_table(readme) == readme, (
        "README.md's table of keys differs from bot/config.py: run "
        "`python -m bot.config README.md`")


def test_table_of_keys_lists_each_key_once_with_its_default() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line.split(" | ")[2].rstrip(" |")
            for line in key_table().splitlines()[2:]}
    assert len(rows) == len(key_table().splitlines()) - 2
    # Keys read under another name than their field, or by another key's reader, included.
    assert {"fetch.max_body_size", "matrix.access_token_file", "feeds[].template_file",
            "metrics.listen"} <= set(rows)
    assert (rows["feeds[].name"], rows["feeds[].interval"], rows["fetch.max_body_size"],
            rows["feeds[].max_message_bytes"], rows["fetch.max_backoff"],
            rows["encryption.enabled"], rows["admins"], rows["feeds[].language"]) == (
        "required", "`15m`", "`5MiB`", "`40KiB`", "`6h`", "`true`", "`[]`", "—")
    with pytest.raises(ValueError, match="markers"):
        readme_with_key_table("# a README without the table\n")


def with_storage(lines: str) -> str:
    return VALID.replace("storage:\n  path: data/newsbot.db\n",
                         "storage:\n  path: data/newsbot.db\n" + lines)


def test_storage_url_selects_postgresql_with_its_password_from_a_variable() -> None:
    config, warnings = load(with_storage(
        "  url: postgresql://newsbot:${DB_PASSWORD}@127.0.0.1:5433/newsbot\n"),
        env={"DB_PASSWORD": "s3cr3t-p@ss"})
    assert config.storage.url == "postgresql://newsbot:s3cr3t-p%40ss@127.0.0.1:5433/newsbot"
    assert "s3cr3t" not in repr(config) and "***" in repr(config.storage)
    assert warnings == []
    default, _ = load(VALID)
    assert default.storage.url is None


def test_storage_password_file_goes_into_the_address(tmp_path: Path) -> None:
    secret = tmp_path / "db.pass"
    secret.write_text("zq/9 xk:1\n")
    secret.chmod(0o600)
    config, _ = load(with_storage(f"  url: postgresql://newsbot@localhost/newsbot\n"
                                  f"  password_file: {secret}\n"))
    assert config.storage.url == "postgresql://newsbot:zq%2F9%20xk%3A1@localhost/newsbot"
    assert "zq" not in repr(config.storage)
    secret.chmod(0o644)
    found = problems(with_storage(f"  url: postgresql://newsbot@localhost/newsbot\n"
                                  f"  password_file: {secret}\n"))
    assert any("storage.password_file" in p and "chmod 600" in p for p in found)
    assert "zq" not in "\n".join(found)


def test_bad_storage_urls_are_explained() -> None:
    found = problems(with_storage("  url: mysql://newsbot@db/newsbot\n"))
    assert any("storage.url" in p and "PostgreSQL address" in p for p in found)
    found = problems(with_storage("  password_file: /nonexistent\n"))
    assert any("storage.password_file" in p and "only used with `url`" in p for p in found)
    _, warnings = load(with_storage("  url: postgresql://newsbot@db.example.org/newsbot\n"))
    assert any("sslmode=verify-full" in w for w in warnings)
    _, warnings = load(with_storage(
        "  url: postgresql://newsbot@db.example.org/newsbot?sslmode=verify-full\n"))
    assert warnings == []


def test_a_password_from_a_variable_may_hold_what_ends_an_address() -> None:
    # base64 passwords hold '/'; put in as they are, they would cut the address and show
    # part of the password as its host.
    config, _ = load(with_storage(
        "  url: postgresql://newsbot:${DB_PASSWORD}@127.0.0.1:5433/newsbot\n"),
        env={"DB_PASSWORD": "Zq9/Se#c?r@t"})
    assert config.storage.url == \
        "postgresql://newsbot:Zq9%2FSe%23c%3Fr%40t@127.0.0.1:5433/newsbot"
    from urllib.parse import unquote, urlsplit

    from bot.store.postgres import masked
    parts = urlsplit(config.storage.url)
    assert (parts.hostname, parts.port, unquote(parts.password or "")) == \
        ("127.0.0.1", 5433, "Zq9/Se#c?r@t")
    for shown in (repr(config.storage), masked(config.storage.url),
                  masked("postgresql://newsbot:Zq9/Se#c?r@t@127.0.0.1:1/newsbot")):
        assert "Zq9" not in shown and "***" in shown, shown
