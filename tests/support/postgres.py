"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests: one per session, a fresh
database per test.

Debian's ``postgresql`` package provides the binaries (``./dev test`` installs it when
missing); the newest /usr/lib/postgresql/*/bin is used, else initdb and postgres on PATH.
The cluster lives in a throwaway directory with trust authentication for the user
``newsbot`` on loopback only, and without fsync (a test cluster's data is worth nothing
after a crash). ``initdb`` refuses to run as root, so as root the cluster runs as the
``postgres`` user the package creates (``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from bot.store import Store
from tests.support import free_port

USER = "newsbot"
_SYSTEM_USER = "postgres"       # the Debian package's; initdb refuses root

# conftest's ``open_store``: ``await open_store()`` is a store of the test's kind.
StoreOpener = Callable[[], Awaitable[Store]]


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: the newest Debian version, else PATH's."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_available() -> bool:
    bin_dir = postgres_bin_dir()
    return bin_dir is not None and (bin_dir / "pg_ctl").exists() and (
        os.geteuid() != 0 or _has_user(_SYSTEM_USER))


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class PostgresServer:
    """``async with PostgresServer() as server``: a running cluster; ``await
    server.new_database()`` is the URL of an empty database of its own."""

    def __init__(self, *, port: int | None = None) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self._as_root = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="newsbot-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._admin: asyncpg.Connection | None = None
        self._databases = 0
        self._shared: asyncpg.Connection | None = None
        self._shared_url = ""
        self.started_in = 0.0       # seconds: initdb and start, for the report

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    async def __aenter__(self) -> PostgresServer:
        began = time.monotonic()
        if self._as_root:
            user = pwd.getpwnam(_SYSTEM_USER)
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
        try:
            await self._initdb()
            await self.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self.started_in = time.monotonic() - began
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        return ["runuser", "-u", _SYSTEM_USER, "--", *command] if self._as_root else command

    async def _initdb(self) -> None:
        await self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", USER,
                        "--encoding=UTF8", "--locale=C", "--no-sync")

    async def _run(self, program: str, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._command(program, *args), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        if process.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n"
                               f"{output.decode(errors='replace')}\n{log}")

    async def start(self) -> None:
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        await self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                        str(self.log_path), "-w", "-t", "60", "start")
        self._admin = await asyncpg.connect(self.url(), timeout=30)

    async def stop(self) -> None:
        if self._shared is not None:
            with contextlib.suppress(Exception):
                await self._shared.close(timeout=5)
            self._shared = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close(timeout=5)
            self._admin = None
        if (self.data / "postmaster.pid").exists():
            # fast: clients are disconnected, not waited for.
            await self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    async def new_database(self) -> str:
        """A fresh, empty database of its own (from template0): its URL."""
        assert self._admin is not None, "the cluster is not running"
        self._databases += 1
        name = f"t_{self._databases}"
        await self._admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    async def clean_database(self) -> str:
        """The URL of a database with newsbot's schema and no rows: one database for
        the session, emptied for each test (TRUNCATE, ~10 times faster than a new
        database on a busy machine). Its stores must be closed before the next test."""
        if self._shared is None:
            from bot.store.postgres import PostgresStore
            url = await self.new_database()
            await (await PostgresStore.open(url)).aclose()        # migrated once
            self._shared = await asyncpg.connect(url)
            self._shared_url = url
        tables = [r[0] for r in await self._shared.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename != 'schema_version'")]
        await self._shared.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        return self._shared_url

async def row_of(store: Store, query: str) -> tuple[Any, ...] | None:
    """The first row of a read-only query (no parameters, SQL both stores read alike) on
    either store: for tests that look at what is stored beyond the protocol."""
    from bot.store.postgres import PostgresStore
    from bot.store.sqlite import SqliteStore
    if isinstance(store, SqliteStore):
        row = store._conn.execute(query).fetchone()
        return None if row is None else tuple(row)
    assert isinstance(store, PostgresStore)
    async with store._pool.acquire() as c:
        record = await c.fetchrow(query)
    return None if record is None else tuple(record)
