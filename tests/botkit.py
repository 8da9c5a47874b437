"""Running the bot in tests: in-process (fast) or as a real process (for kill -9 and signals)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from bot.app import App, Waits
from bot.clock import Clock
from bot.config import Config, load_config
from bot.store import SqliteStore
from bot.transport.matrix import MatrixTransport
from tests.support import RegisteredUser

ROOT = Path(__file__).resolve().parent.parent


def bot_config(*, homeserver: str, bot: RegisteredUser, storage: Path,
               feeds: Sequence[dict[str, Any]], admins: Sequence[str] = (),
               auth: str = "token", **extra: Any) -> dict[str, Any]:
    matrix: dict[str, Any] = {"homeserver": homeserver, "user_id": bot.user_id}
    if auth == "token":
        matrix.update(access_token="${BOT_TOKEN}", device_id=bot.device_id)
    else:
        matrix.update(password="${BOT_PASSWORD}")
    data: dict[str, Any] = {
        "matrix": matrix,
        "storage": {"path": str(storage)},
        "fetch": {"allow_private_networks": True},
        "admins": list(admins),
        "feeds": [{"interval": "1s", **feed} for feed in feeds],
    }
    data.update(extra)
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


def bot_environ(bot: RegisteredUser) -> dict[str, str]:
    return {"BOT_TOKEN": bot.access_token, "BOT_PASSWORD": bot.password}


def load(path: Path, bot: RegisteredUser) -> Config:
    config, _ = load_config(path, environ=bot_environ(bot))
    return config


@contextlib.asynccontextmanager
async def matrix_transport(homeserver: str, bot: RegisteredUser, rooms: Sequence[str],
                           tmp_path: Path) -> AsyncIterator[tuple[MatrixTransport, SqliteStore]]:
    """The bot's Matrix transport alone, without the app around it: logged in, on a SQLite
    state in ``tmp_path / "state"``, configured with one feed posting to ``rooms``; closed
    afterwards."""
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=homeserver, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": list(rooms)}])), bot)
    assert cfg.matrix is not None
    store = SqliteStore.open(tmp_path / "state")
    transport = MatrixTransport(cfg.matrix, store, tmp_path / "state")
    try:
        await transport.connect()
        yield transport, store
    finally:
        await transport.close()
        store.close()


class InProcessBot:
    """The real App on the test's event loop: the one place tests start and stop a bot.

    ``async with InProcessBot(config):`` for a bot living inside a block (a restart is a
    second block), the ``run_bot`` fixture for one living until the test ends. Each start
    builds a fresh App, as a restarted process would; ``build()`` first when the test must
    reach into the App before it runs.
    """

    def __init__(self, config: Config, *, clock: Clock | None = None,
                 waits: Waits | None = None) -> None:
        self.config = config
        self.clock = clock
        self.waits = waits or Waits()
        self._app: App | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            raise AssertionError("the bot is not running")
        return self._app

    def build(self) -> App:
        assert self.task is None, "the bot is already running"
        self._app = App(self.config, clock=self.clock, waits=self.waits)
        return self._app

    async def start(self) -> App:
        if self._app is not None and self.task is None:
            app = self._app
        elif self.config.storage.url is not None:     # PostgreSQL: opened over the network
            app = self._app = await App.open(self.config, clock=self.clock, waits=self.waits)
        else:
            app = self.build()
        self.task = asyncio.create_task(app.run())
        return app

    def is_running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self, timeout: float = 30) -> None:
        """Stop as SIGTERM would; a crash of the bot is raised here, as the test's error."""
        app, task, self._app, self.task = self._app, self.task, None, None
        if app is not None and task is not None:
            app.request_stop()
            await asyncio.wait_for(task, timeout)

    async def __aenter__(self) -> InProcessBot:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# The type of the conftest's ``run_bot`` fixture: ``await run_bot(config, clock=None)``.
BotRunner = Callable[..., Awaitable[InProcessBot]]


# ``python -m bot`` that first imports what ``run`` imports (a second of CPU, most of a
# process's start) and what its first new item loads (feedparser, Jinja2, nh3), then
# waits for "run" on stdin before doing anything: a test restarting the bot many times
# readies the next process while the current one works. Anything else on stdin (or its
# end, when the test is gone) exits without running.
_WARM_START = """\
import sys
import bot.app, bot.cli, bot.config, bot.logs, bot.statecheck, bot.feeds.schedules
import feedparser, jinja2, nh3, slixmpp
if sys.stdin.readline() != "run\\n":
    sys.exit(3)
sys.exit(bot.cli.main(sys.argv[1:]))
"""


class BotProcess:
    """``python -m bot run`` as a child process, its log in a file.

    ``start()`` launches it; or ``prepare()`` first, which launches it already importing,
    and ``start()`` then lets it run (the bot's work starts only then)."""

    def __init__(self, config_path: Path, bot: RegisteredUser, log_path: Path,
                 *args: str) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **bot_environ(bot), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self._prepared = False

    def _argv(self) -> list[str]:
        return [*self.args, "run", "-c", str(self.config_path)]

    async def prepare(self) -> None:
        assert self.proc is None, "already launched"
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WARM_START, *self._argv(), env=self.env, cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log)
        finally:
            log.close()
        self._prepared = True

    async def start(self) -> None:
        if self._prepared:
            assert self.proc is not None and self.proc.stdin is not None
            self._prepared = False
            self.proc.stdin.write(b"run\n")
            await self.proc.stdin.drain()
            return
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", *self._argv(),
                env=self.env, cwd=ROOT, stdout=log, stderr=log)
        finally:
            log.close()

    async def discard(self) -> None:
        """Kill a process that never ran (or any other): for a test's cleanup."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
