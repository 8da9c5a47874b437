"""Running the bot in tests: in-process (fast) or as a real process (for kill -9 and signals)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bot.app import App
from bot.config import Config, load_config
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


class InProcessBot:
    """The real App on the test's event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app: App | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> App:
        self.app = App(self.config)
        self.task = asyncio.create_task(self.app.run())
        return self.app

    async def stop(self, timeout: float = 30) -> None:
        if self.app is not None and self.task is not None:
            self.app.request_stop()
            await asyncio.wait_for(self.task, timeout)
            self.app = self.task = None

    async def __aenter__(self) -> InProcessBot:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # surface a crash of the bot as the test's error
        await self.stop()


class BotProcess:
    """``python -m bot run`` as a child process, its log in a file."""

    def __init__(self, config_path: Path, bot: RegisteredUser, log_path: Path,
                 *args: str) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **bot_environ(bot), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", *self.args, "run", "-c", str(self.config_path),
                env=self.env, cwd=ROOT, stdout=log, stderr=log)
        finally:
            log.close()

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
