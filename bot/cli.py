"""Command line: ``newsbot run | doctor | check-config | preview | feeds | login | storage``.

Exit codes: 0 clean stop, 1 runtime failure, 2 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot import __version__
from bot.errors import AuthError, BlockedURLError, ConfigError, FeedError, NewsbotError
from bot.i18n import LANGUAGES

if TYPE_CHECKING:       # the CLI imports the bot lazily, so that --help stays fast
    from bot.config import Config

log = logging.getLogger("bot")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="newsbot",
        description="Posts every new item of news feeds into Matrix rooms, exactly once.")
    parser.add_argument("--version", action="version", version=f"newsbot {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="one readable line per event (default) or JSON lines")
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default: the config's, or INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the bot")
    run.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    run.add_argument("--reset-cross-signing", action="store_true",
                     help="replace the account's cross-signing keys with new ones newsbot "
                          "holds (needs matrix.password), then run")
    doctor = sub.add_parser("doctor", help="log in as the bot and report what members' "
                                           "clients will think of its device")
    doctor.add_argument("-c", "--config", type=Path, required=True)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("-c", "--config", type=Path, required=True)

    preview = sub.add_parser("preview", help="print the messages a feed's newest entries give")
    preview.add_argument("url")
    preview.add_argument("-n", "--entries", type=int, default=3,
                         help="how many of the newest entries (default 3)")
    preview.add_argument("--language", choices=LANGUAGES, default="en")
    preview.add_argument("--html", action="store_true", help="print the HTML too")
    preview.add_argument("--template", default="default", metavar="NAME",
                         help="default, compact, full, a Jinja2 template file, or a "
                              "template itself (as a feed's template / template_file)")
    preview.add_argument("--content", choices=("summary", "full"), default="summary",
                         help="the summary (default) or the whole entry, as a feed's "
                              "content setting")
    preview.add_argument("--summary-length", type=int, default=None, metavar="CHARS",
                         help="as a feed's summary_length (default 400; 0: no summary)")
    preview.add_argument("--max-message-bytes", default=None, metavar="SIZE",
                         help="as a feed's max_message_bytes (default 40KiB)")
    preview.add_argument("--allow-private-networks", action="store_true",
                         help="allow URLs on loopback or private addresses (e.g. a local test)")

    feeds = sub.add_parser("feeds", help="the feed list as OPML: export or import")
    feeds_sub = feeds.add_subparsers(dest="feeds_command", required=True, metavar="ACTION")
    export = feeds_sub.add_parser("export", help="print every feed (configured, and added by "
                                                 "command) as OPML 2.0")
    export.add_argument("-c", "--config", type=Path, required=True)
    import_ = feeds_sub.add_parser("import", help="print an OPML file's feeds as YAML "
                                                  "entries, or merge them into a config")
    import_.add_argument("opml", type=Path)
    import_.add_argument("--into", type=Path, metavar="CONFIG",
                         help="append the new feeds to this config's feeds: list (its "
                              "comments kept), then check it")
    import_.add_argument("--room", action="append", default=[], metavar="ROOM",
                         help="a room for the feeds the file names none (repeatable)")

    storage = sub.add_parser("storage", help="the state database: copy it to another")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True,
                                         metavar="ACTION")
    migrate = storage_sub.add_parser(
        "migrate", help="copy a SQLite state into an empty PostgreSQL database (stop "
                        "newsbot first)")
    migrate.add_argument("--from", dest="source", metavar="sqlite:PATH",
                         help="the SQLite state: the storage directory or its "
                              "newsbot.sqlite3 (default: the config's storage.path)")
    migrate.add_argument("--to", dest="target", metavar="postgresql://...",
                         help="the PostgreSQL database; its password in the URL or in "
                              "PGPASSWORD (default: the config's storage.url)")
    migrate.add_argument("-c", "--config", type=Path, default=None,
                         help="the config: its storage.path, storage.url and Matrix device")

    login = sub.add_parser("login", help="log in with the password once and write the "
                                         "access token to a 0600 file")
    login.add_argument("-c", "--config", type=Path, required=True)
    login.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                       help="where to write the token (default: matrix.access_token_file, "
                            "else newsbot.token next to the config)")
    login.add_argument("--force", action="store_true",
                       help="replace an existing token file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "doctor":
            _setup_logs(args, "WARNING", ())
            return asyncio.run(_doctor(args.config))
        if args.command == "preview":
            _setup_logs(args, "WARNING", ())
            return asyncio.run(_preview(args))
        if args.command == "feeds":
            return _feeds_export(args.config) if args.feeds_command == "export" \
                else _feeds_import(args)
        if args.command == "login":
            return _login(args)
        if args.command == "storage":
            return _storage_migrate(args)
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_OK


def _setup_logs(args: argparse.Namespace, default_level: str, secrets: tuple[str, ...]) -> None:
    from bot.logs import setup_logging
    setup_logging(fmt=args.log_format, level=args.log_level or default_level, secrets=secrets)


def _load_or_report(path: Path) -> tuple[Config, list[str]] | None:
    """The config and its warnings, or None after printing every problem."""
    from bot.config import load_config
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(path: Path) -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_CONFIG
    config, warnings = loaded
    from bot.feeds.schedules import schedules
    from bot.statecheck import state_warnings
    from bot.store.readonly import StateReader
    with StateReader(config) as state:      # one read-only look at the state, for both
        stored, intervals = state_warnings(config, state), schedules(config, state)
    for warning in [*warnings, *stored]:
        print(f"warning: {warning}", file=sys.stderr)
    rooms = {room for feed in config.feeds for room in feed.rooms}
    print(f"{path}: OK ({len(config.feeds)} feed(s), {len(rooms)} room(s))")
    for name, why in intervals:
        print(f"  {name}: {why}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from bot.config import load_config
    try:
        config, warnings = load_config(args.config)
    except ConfigError as exc:
        print(f"{args.config}: the configuration has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    reset_password = None
    if args.reset_cross_signing and config.matrix is None:
        print("--reset-cross-signing is for a Matrix account: the configuration has no "
              "matrix: section", file=sys.stderr)
        return EXIT_CONFIG
    if args.reset_cross_signing and config.matrix is not None and \
            config.matrix.password is None:
        # Replacing cross-signing keys needs the account's password (user-interactive
        # auth); a token-configured bot asks for it here, never keeping it anywhere.
        if not sys.stdin.isatty():
            print("--reset-cross-signing needs the account's password: run it from a "
                  "terminal (it asks for it), or configure matrix.password",
                  file=sys.stderr)
            return EXIT_CONFIG
        import getpass
        reset_password = getpass.getpass(f"Password of {config.matrix.user_id}: ")
    secrets = tuple(s for s in (
        config.matrix.access_token if config.matrix else None,
        config.matrix.password if config.matrix else None,
        config.xmpp.password if config.xmpp else None, reset_password) if s)
    _setup_logs(args, config.log_level, secrets)
    for warning in warnings:
        log.warning("config: %s", warning)
    try:
        asyncio.run(_run_app(config, args.reset_cross_signing, reset_password))
    except NewsbotError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except Exception:
        log.exception("newsbot stopped on an unexpected error")
        return EXIT_FAILURE
    return EXIT_OK


async def _run_app(config: object, reset_cross_signing: bool = False,
                   reset_password: str | None = None) -> None:
    from bot.app import App
    from bot.config import Config
    assert isinstance(config, Config)
    try:
        app = await App.open(config, reset_cross_signing=reset_cross_signing,
                             reset_password=reset_password)
        await app.run()
    except* NewsbotError as group:
        # The supervisor wraps a loop's failure in an ExceptionGroup; report the cause.
        raise group.exceptions[0] from None


async def _doctor(path: Path) -> int:
    """Whether the bot's device is cross-signed, as a member's client would see it. Uses
    the configured token, or the session a password login saved: never a new login."""
    from bot.logs import add_secret
    from bot.transport.matrix import load_saved_session
    from bot.transport.matrix.cross_signing import KeysApi, device_status
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_CONFIG
    config, _ = loaded
    matrix = config.matrix
    if matrix is None:
        print("doctor checks a Matrix device: the configuration has no matrix: section")
        return EXIT_CONFIG
    token, device = matrix.access_token, matrix.device_id
    if token is None:
        session = load_saved_session(config.storage.path, matrix)
        if session is None:
            print("device: not logged in yet (the first `newsbot run` logs in with the "
                  "password and saves a session)")
            return EXIT_FAILURE
        token, device = session.access_token, session.device_id
    add_secret(token)
    print(f"account: {matrix.user_id} on {matrix.homeserver}")
    if not config.encryption.enabled:
        print("encryption: off (cross-signing is only needed for encrypted rooms)")
        return EXIT_OK
    if not device:
        print("device: unknown (set matrix.device_id with the access token)")
        return EXIT_FAILURE
    try:
        status = await device_status(KeysApi(matrix.homeserver, token), matrix.user_id, device)
    except NewsbotError as exc:
        print(f"cross-signing: cannot tell ({exc})")
        return EXIT_FAILURE
    print(f"encryption: on (trust: {config.encryption.trust})")
    if status.signed:
        print(f"cross-signing: signed — {status.detail}; Element shows the bot's messages "
              "without a warning")
        return EXIT_OK
    print(f"cross-signing: NOT signed — {status.detail}; `newsbot run` signs it at start "
          "(see its log), or run `newsbot run --reset-cross-signing` once if the account's "
          "keys were made elsewhere")
    return EXIT_FAILURE


def _feeds_export(path: Path) -> int:
    from bot.opml import export_opml
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_CONFIG
    text, notes = export_opml(loaded[0])
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK


def _feeds_import(args: argparse.Namespace) -> int:
    """The OPML file's new feeds printed as YAML, or appended to ``--into`` and checked
    with check-config's loader before the file is replaced."""
    from bot import opml
    from bot.config import load_config_text
    into: Path | None = args.into
    try:
        listed = opml.read_opml_file(args.opml)
        text = into.read_text(encoding="utf-8-sig") if into is not None else ""
        names, urls = opml.configured_feeds(text)
        plan = opml.plan_import(listed, rooms=args.room, existing_names=names,
                                existing_urls=urls)
    except OSError as exc:
        print(f"{into}: cannot read: {exc.strerror or 'error'}", file=sys.stderr)
        return EXIT_CONFIG
    except opml.OpmlError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    for line in [*plan.present, *plan.refused]:
        print(f"skipped: {line}", file=sys.stderr)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if not plan.entries:
        print(f"{args.opml}: no new feed to import", file=sys.stderr)
        return EXIT_FAILURE if plan.refused or not plan.present else EXIT_OK
    comment = opml.import_comment(args.opml)
    if into is None:
        sys.stdout.write(f"# {comment}: paste under feeds: in the configuration\n"
                         + opml.entries_yaml(plan.entries))
        return EXIT_OK
    try:
        merged = opml.merged_text(text, plan.entries, comment)
    except opml.OpmlError as exc:
        print(f"{into}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        load_config_text(merged, source=str(into), base_dir=into.absolute().parent)
    except ConfigError as exc:
        if _load_or_report(into) is not None:   # else its own problems are printed
            print(f"{into}: with the new feeds it would have {len(exc.problems)} "
                  "problem(s); left unchanged:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"{into}: left unchanged; fix its problems first", file=sys.stderr)
        return EXIT_CONFIG
    opml.write_config_text(into, merged)
    new = [entry["name"] for entry in plan.entries]
    added = ", ".join(new[:10]) + (f" and {len(new) - 10} more" if len(new) > 10 else "")
    print(f"{into}: {len(plan.entries)} feed(s) added ({added}); the file checks OK",
          file=sys.stderr)
    return EXIT_OK


def _storage_migrate(args: argparse.Namespace) -> int:
    """Copy a SQLite state into PostgreSQL (bot.store.transfer); the password is never
    printed."""
    matrix = None
    source, target = args.source, args.target
    if args.config is not None:
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EXIT_CONFIG
        config = loaded[0]
        matrix = config.matrix
        source = source or f"sqlite:{config.storage.path}"
        target = target or config.storage.url
    if source is None or target is None:
        print("storage migrate: give --from sqlite:PATH and --to postgresql://... (or "
              "-c CONFIG for its storage.path and storage.url)", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logs(args, "WARNING", ())
    from bot.errors import StorageError
    from bot.store.transfer import copy_state, session_device, sqlite_file
    try:
        path = sqlite_file(source)
    except StorageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if not target.startswith(("postgresql://", "postgres://")):
        print("--to: the target is a PostgreSQL database, postgresql://user@host[:port]/"
              "database", file=sys.stderr)
        return EXIT_CONFIG
    try:
        done = asyncio.run(copy_state(path, target,
                                      device_id=session_device(path.parent, matrix)))
    except StorageError as exc:
        print(f"storage migrate: nothing was copied: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"Copied {path} (schema version {done.version}) into {done.target}:")
    width = max(map(len, done.rows), default=0)
    for table, count in done.rows.items():
        extra = f" ({done.pending} pending)" if table == "outbox" and done.pending else ""
        print(f"  {table:<{width}}  {count:>9} row(s){extra}")
    for note in done.notes:
        print(f"note: {note}")
    print(f"Next: set storage.url to {done.target} in the configuration (its password in "
          "a ${VAR} or password_file) and start newsbot; keep storage.path, which holds "
          "this instance's own files (its session, its encryption keys). The SQLite file is "
          "left as it was: do not run newsbot on it again.")
    return EXIT_OK


def _login(args: argparse.Namespace) -> int:
    """Log in once with the password; the token goes to a 0600 file, nothing else keeps
    a secret. Neither the password nor the token is printed or logged."""
    from bot.login import instructions, log_in, login_target, read_password, save_token
    from bot.logs import add_secret
    try:
        target = login_target(args.config, args.token_file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if target.token_file.exists() and not args.force:
        print(f"{target.token_file} exists already; pass --force to replace it",
              file=sys.stderr)
        return EXIT_FAILURE
    if not target.token_file.parent.is_dir():
        print(f"{target.token_file.parent}: no such directory for the token file",
              file=sys.stderr)
        return EXIT_CONFIG
    password = read_password(target.user_id)
    if not password:
        print("no password given", file=sys.stderr)
        return EXIT_FAILURE
    _setup_logs(args, "WARNING", (password,))
    try:
        session = asyncio.run(log_in(target, password))
    except AuthError as exc:
        print(f"login refused (is the password right?): {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except NewsbotError as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    add_secret(session.access_token)
    try:
        save_token(target, session)
    except OSError as exc:
        print(f"{target.token_file}: cannot write: {exc.strerror or 'error'}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"Logged in as {session.user_id} (device {session.device_id}); the access token "
          f"is in {target.token_file} (mode 0600).")
    print(instructions(target, args.config, session.device_id))
    return EXIT_OK


def _preview_settings(args: argparse.Namespace) -> tuple[str, int, int] | str:
    """(template, summary length, byte budget) from the flags, or what is wrong with them."""
    from bot.config import parse_size
    from bot.render import (
        DEFAULT_MAX_MESSAGE_BYTES,
        DEFAULT_SUMMARY_LENGTH,
        MAX_MESSAGE_BYTES,
        MIN_MESSAGE_BYTES,
        check_template,
    )
    from bot.templates import BUILTIN_TEMPLATES
    template, where = args.template, "--template"
    inline = "{" in template or "<" in template
    if template not in BUILTIN_TEMPLATES and not inline:
        path = Path(template)
        if not path.is_file():
            return (f"--template: {template!r} is neither a built-in template "
                    f"({', '.join(BUILTIN_TEMPLATES)}), a template file nor a template")
        try:
            template = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            return f"--template: cannot read {path}: {exc}"
        where = f"--template {path}"
    problem = check_template(template)
    if problem is not None:
        return (f"{where}: line {problem.line}: {problem.detail}" if problem.line
                else f"{where}: {problem.detail}")
    length = DEFAULT_SUMMARY_LENGTH if args.summary_length is None else args.summary_length
    if length < 0:
        return "--summary-length: must be at least 0"
    budget = DEFAULT_MAX_MESSAGE_BYTES
    if args.max_message_bytes is not None:
        try:
            budget = parse_size(args.max_message_bytes)
        except ValueError:
            return f"--max-message-bytes: {args.max_message_bytes!r} is not a size (e.g. 40KiB)"
        if not MIN_MESSAGE_BYTES <= budget <= MAX_MESSAGE_BYTES:
            return (f"--max-message-bytes: must be between {MIN_MESSAGE_BYTES} and "
                    f"{MAX_MESSAGE_BYTES} bytes")
    return template, length, budget


async def _preview(args: argparse.Namespace) -> int:
    from bot.feeds.decide import chronological
    from bot.feeds.fetch import Fetcher
    from bot.feeds.parse import parse_feed_async
    from bot.render import render_entry
    settings = _preview_settings(args)
    if isinstance(settings, str):
        print(settings, file=sys.stderr)
        return EXIT_CONFIG
    template, summary_length, budget = settings
    try:
        async with Fetcher(allow_private_networks=args.allow_private_networks) as fetcher:
            result = await fetcher.fetch(args.url)
        assert result.body is not None
        parsed = await parse_feed_async(result.body, content_type=result.content_type,
                                        url=result.final_url)
    except FeedError as exc:
        reason = str(exc)
        if isinstance(exc, BlockedURLError) and "allow_private_networks" in reason:
            # The fetcher names the config key; preview reads no config, it has a flag.
            reason += " (preview: pass --allow-private-networks)"
        print(reason if args.url in reason else f"{args.url}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    newest = chronological(parsed.entries)[-args.entries:] if args.entries > 0 else []
    print(f"{parsed.title or args.url}: {len(parsed.entries)} entries; "
          f"the newest {len(newest)} would be posted as:\n")
    for entry in newest:
        # The poller's own call, with the flags in place of a feed's settings.
        message = render_entry(entry, feed_title=parsed.title or None, language=args.language,
                               template=template, content=args.content,
                               summary_chars=summary_length, max_bytes=budget,
                               feed="preview")
        print("-" * 72)
        print(message.body)
        if args.html:
            print("\n[html]\n" + message.html)
    if newest:
        print("-" * 72)
    return EXIT_OK
