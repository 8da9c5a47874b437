"""The stored state as ``check-config`` reads it: whichever store the configuration names,
read-only, never migrated, never written.

SQLite is opened in read-only mode; PostgreSQL is read in one read-only transaction (one
snapshot for every query), rolled back at the end. Queries are plain SELECTs that both
databases understand, without parameters. The connection is made at the first read and
a failure is kept: a database that does not answer is waited for once (a short timeout),
however many parts of check-config ask it, and is reported as one line without its
password.
"""

from __future__ import annotations

import asyncio
import sqlite3
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bot.store.sqlite import DB_FILENAME

if TYPE_CHECKING:
    import asyncpg

    from bot.config import Config

# check-config waits this long for a database server, not the store's 10 s: it only looks.
CONNECT_TIMEOUT = 4.0
# A query waiting behind a lock (an instance migrating the schema) gives up after this.
QUERY_TIMEOUT = 10.0


class UnreadableState(Exception):
    """The stored state cannot be read; its text is one line fit to show (no password)."""


class StateReader:
    """``with StateReader(config) as state``: ``state.version()`` is the schema version,
    None when nothing is stored yet; ``state.rows(query)`` the rows of a SELECT. Both
    raise UnreadableState when the database cannot be read. Synchronous, as check-config
    is (PostgreSQL is read on an event loop of its own): not for a running loop."""

    def __init__(self, config: Config) -> None:
        self._url = config.storage.url
        self._path = config.storage.path / DB_FILENAME
        self.where = str(self._path)
        if self._url is not None:
            from bot.store.postgres import masked  # loads asyncpg: only for PostgreSQL
            self.where = masked(self._url)
        self._opened = False
        self._failure: UnreadableState | None = None
        self._version: int | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._runner: asyncio.Runner | None = None
        self._pg: asyncpg.Connection | None = None

    def __enter__(self) -> StateReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def version(self) -> int | None:
        self._open()
        return self._version

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        self._open()
        try:
            if self._sqlite is not None:
                return [tuple(row) for row in self._sqlite.execute(query)]
            assert self._runner is not None and self._pg is not None, "nothing is stored"
            return [tuple(record) for record in self._runner.run(self._pg.fetch(query))]
        except self._errors() as exc:
            self._failure = self._unreadable(exc)
            raise self._failure from None

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._runner is not None:
            if self._pg is not None:
                try:
                    # Closing ends the transaction (rolled back: nothing was written).
                    self._runner.run(self._pg.close(timeout=CONNECT_TIMEOUT))
                except Exception:
                    self._pg.terminate()
                self._pg = None
            self._runner.close()
            self._runner = None

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        if self._opened:
            if self._failure is not None:
                raise self._failure
            return
        self._opened = True
        try:
            if self._url is None:
                self._open_sqlite()
            else:
                self._runner = asyncio.Runner()
                self._runner.run(self._open_postgres(self._url))
        except self._errors() as exc:
            self._failure = self._unreadable(exc)
            raise self._failure from None

    def _open_sqlite(self) -> None:
        if not self._path.exists():
            return
        self._sqlite = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True)
        self._version = int(self._sqlite.execute("PRAGMA user_version").fetchone()[0])

    async def _open_postgres(self, url: str) -> None:
        import asyncpg
        self._pg = await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT, command_timeout=QUERY_TIMEOUT,
            server_settings={"application_name": "newsbot check-config",
                             "default_transaction_read_only": "on"})
        # One snapshot for every query; never committed.
        await self._pg.transaction(isolation="repeatable_read", readonly=True).start()
        if await self._pg.fetchval("SELECT to_regclass('schema_version')") is None:
            return           # an empty database: nothing stored yet
        self._version = int(await self._pg.fetchval("SELECT version FROM schema_version")
                            or 0)

    def _errors(self) -> tuple[type[Exception], ...]:
        """What a failing database raises (anything else is a bug, and stays one)."""
        if self._url is None:
            return (sqlite3.Error,)
        from bot.store.postgres import _DB_ERRORS
        return (*_DB_ERRORS, ValueError)          # ValueError: a URL asyncpg cannot read

    def _unreadable(self, exc: Exception) -> UnreadableState:
        if self._url is None:
            return UnreadableState(
                f"{self.where}: cannot read the state database ({exc}); `newsbot run` will "
                "refuse to start until it is restored or moved aside")
        from urllib.parse import urlsplit

        from bot.store.postgres import _storage_error
        try:
            secret = urlsplit(self._url).password
        except ValueError:
            secret = None
        # "state database postgresql://newsbot:***@host/db: why; what to check"
        error = _storage_error(self.where, exc, secret, opening=self._pg is None)
        return UnreadableState(f"cannot read the {error} (state not compared)")
