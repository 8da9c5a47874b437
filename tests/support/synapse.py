"""A throwaway Synapse homeserver on 127.0.0.1, run as a child process, for tests and demos."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import yaml

from tests.support import free_port

SERVER_NAME = "localhost"

_RELAXED: dict[str, object] = {"per_second": 1000, "burst_count": 10000}

# Every limit a suite on one loopback address trips over (see /work/shared/NOTES.md).
# Nested keys (rc_login, rc_joins, rc_invites, rc_presence) are sub-limiters in Synapse.
DEFAULT_RATE_LIMITS: Mapping[str, object] = {
    "rc_message": _RELAXED,
    "rc_registration": _RELAXED,
    "rc_login": {"address": _RELAXED, "account": _RELAXED, "failed_attempts": _RELAXED},
    "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
    "rc_joins_per_room": _RELAXED,
    "rc_invites": {"per_room": _RELAXED, "per_user": _RELAXED, "per_issuer": _RELAXED},
    "rc_room_creation": _RELAXED,
    "rc_presence": {"per_user": _RELAXED},
}

# Runs Synapse exactly like ``python -m synapse.app.homeserver`` but first asks Linux to
# SIGTERM it when the harness process dies, so a killed test run leaves no orphan server
# holding the port. argv: expected parent pid, then Synapse's own arguments.
_LAUNCHER = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:  # the parent died before prctl took effect
    sys.exit(1)
sys.argv = ["synapse.app.homeserver", *sys.argv[2:]]
runpy.run_module("synapse.app.homeserver", run_name="__main__", alter_sys=True)
"""

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str
    device_id: str
    password: str
    localpart: str


class MatrixAPIError(Exception):
    """A client-server or admin API call answered with a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: Mapping[str, Any]) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = dict(body)
        self.errcode: str | None = body.get("errcode")
        self.error: str | None = body.get("error")
        self.retry_after_ms: int | None = body.get("retry_after_ms")
        super().__init__(f"{method} {url} -> HTTP {status} {self.errcode}: {self.error}")


async def matrix_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    json_body: object | None = None,
    params: Mapping[str, str] | None = None,
    max_429_retries: int = 10,
) -> dict[str, Any]:
    """One Matrix API call: JSON in, JSON object out, MatrixAPIError on any non-2xx.

    429 answers are retried after the delay the server asks for, so helpers never
    flake on a rate limit they did not mean to test.
    """
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    attempt = 0
    while True:
        async with session.request(
            method, url, json=json_body, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            status = resp.status
            retry_header = resp.headers.get("Retry-After")
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {"error": text[:500]}
        if not isinstance(body, dict):
            body = {"value": body}
        if 200 <= status < 300:
            return body
        if status == 429 and attempt < max_429_retries:
            attempt += 1
            await asyncio.sleep(_retry_delay(body, retry_header))
            continue
        raise MatrixAPIError(method, url, status, body)


def _retry_delay(body: Mapping[str, Any], retry_header: str | None) -> float:
    ms = body.get("retry_after_ms")
    if isinstance(ms, int | float):
        return min(max(ms / 1000, 0.05), 30.0)
    if retry_header:
        with contextlib.suppress(ValueError):
            return min(max(float(retry_header), 0.05), 30.0)
    return 1.0


def merge_rate_limits(overrides: Mapping[str, object] | None) -> dict[str, object]:
    """DEFAULT_RATE_LIMITS with ``overrides`` applied.

    A flat value replaces the default (``{"rc_message": {"per_second": 0.5, ...}}``); a
    nested one merges per sub-limiter (``{"rc_login": {"address": {...}}}`` keeps the
    relaxed account limit). ``None`` removes a key so Synapse's own default applies.
    """
    merged: dict[str, object] = copy.deepcopy(dict(DEFAULT_RATE_LIMITS))
    for key, value in (overrides or {}).items():
        current = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(current, dict) and isinstance(value, Mapping) \
                and _is_nested(current) and _is_nested(value):
            for sub, sub_value in value.items():
                if sub_value is None:
                    current.pop(sub, None)
                else:
                    current[sub] = copy.deepcopy(sub_value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_nested(value: object) -> bool:
    return (isinstance(value, Mapping) and bool(value)
            and all(isinstance(v, Mapping) for v in value.values()))


class _PlainDumper(yaml.SafeDumper):
    # Shared sub-dicts (the relaxed limits) would otherwise become &anchors/*aliases.
    def ignore_aliases(self, data: object) -> bool:
        return True


def _dump_yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True)


class SynapseServer:
    """One Synapse on 127.0.0.1 whose config, database and logs live in ``workdir``.

    The port is chosen once (or read back from an earlier run in the same workdir), so
    ``base_url`` stays valid across ``restart()`` and the data survives it.
    """

    def __init__(self, workdir: Path, *, port: int | None = None,
                 rate_limits: Mapping[str, object] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        if port is None:
            port = state.get("port") or free_port()
        self.port: int = int(port)
        # Secrets are kept across instances on the same workdir: same server, same keys.
        self._shared_secret: str = state.get("registration_shared_secret") or secrets.token_hex(16)
        self._macaroon_secret: str = state.get("macaroon_secret_key") or secrets.token_hex(16)
        self._form_secret: str = state.get("form_secret") or secrets.token_hex(16)
        self.rate_limits = merge_rate_limits(rate_limits)
        self._process: asyncio.subprocess.Process | None = None
        self._output: IO[bytes] | None = None
        self._save_state()
        self.config_path.write_text(_dump_yaml(self.config()))
        self.log_config_path.write_text(_dump_yaml(self._log_config()))

    # ---- paths and addresses ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return SERVER_NAME

    @property
    def config_path(self) -> Path:
        return self.workdir / "homeserver.yaml"

    @property
    def log_config_path(self) -> Path:
        return self.workdir / "log_config.yaml"

    @property
    def log_path(self) -> Path:
        """Synapse's own log (its logging config writes here)."""
        return self.workdir / "homeserver.log"

    @property
    def output_path(self) -> Path:
        """The child's stdout and stderr: start-up crashes end up here."""
        return self.workdir / "synapse.out"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def config(self) -> dict[str, object]:
        """The homeserver.yaml content, as a dict."""
        wd = self.workdir
        return {
            "server_name": SERVER_NAME,
            "public_baseurl": self.base_url + "/",
            "listeners": [{
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(wd / "homeserver.db")}},
            "media_store_path": str(wd / "media_store"),
            "signing_key_path": str(wd / "localhost.signing.key"),
            "log_config": str(self.log_config_path),
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
            "report_stats": False,
            "enable_registration": False,
            "federation_domain_whitelist": [],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            # Synapse answers a repeated /sync from its 2-minute cache: a client restarted
            # on the same device would get stale answers (old to-device key messages).
            "caches": {"sync_response_cache_duration": 0},
            "bcrypt_rounds": 4,
            **self.rate_limits,
        }

    def _log_config(self) -> dict[str, object]:
        # A plain FileHandler, not Synapse's buffered default, so the tail we show on a
        # failed start is complete.
        return {
            "version": 1,
            "formatters": {"precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                          "%(request)s - %(message)s",
            }},
            "handlers": {"file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(self.log_path),
                "encoding": "utf8",
            }},
            "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _state_path(self) -> Path:
        return self.workdir / "harness.json"

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        self._state_path().write_text(json.dumps({
            "port": self.port,
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
        }))

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Launch Synapse and return once it answers /_matrix/client/versions."""
        if self.running:
            return
        if _port_in_use(self.port):
            # Otherwise the readiness poll could succeed against someone else's server.
            raise RuntimeError(f"port {self.port} on 127.0.0.1 is already in use")
        self._output = self._open_output()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _LAUNCHER, str(os.getpid()), "-c", str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._output,
            stderr=asyncio.subprocess.STDOUT, cwd=str(self.workdir),
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        url = f"{self.base_url}/_matrix/client/versions"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(
                        f"Synapse exited with code {self._process.returncode} while starting"
                        f"\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Synapse not ready on {self.base_url} after {_READY_TIMEOUT:.0f} s"
                        f"\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        finally:
            if self._output is not None:
                self._output.close()
                self._output = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> SynapseServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def _open_output(self) -> IO[bytes]:
        # Appending keeps the output of earlier runs in the same workdir for post-mortems.
        return self.output_path.open("ab")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's output and of Synapse's log, for error messages."""
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path.name} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts) or "(no Synapse output)"

    # ---- admin API ----------------------------------------------------------------------

    async def register(self, localpart: str, password: str | None = None,
                       admin: bool = False, *,
                       displayname: str | None = None) -> RegisteredUser:
        """Create a user with the shared-secret admin API; the answer carries its token."""
        password = password if password is not None else secrets.token_urlsafe(12)
        url = f"{self.base_url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            nonce = (await matrix_request(session, "GET", url))["nonce"]
            mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(b"\0".join([nonce.encode(), localpart.encode(), password.encode(),
                                   b"admin" if admin else b"notadmin"]))
            body: dict[str, object] = {
                "nonce": nonce, "username": localpart, "password": password,
                "admin": admin, "mac": mac.hexdigest(),
            }
            if displayname is not None:
                body["displayname"] = displayname
            answer = await matrix_request(session, "POST", url, json_body=body)
        return RegisteredUser(
            user_id=answer["user_id"], access_token=answer["access_token"],
            device_id=answer["device_id"], password=password, localpart=localpart,
        )

    async def login(self, user: RegisteredUser, device_id: str) -> RegisteredUser:
        """The same user on another device (its own token): e.g. a second bot instance."""
        url = f"{self.base_url}/_matrix/client/v3/login"
        async with aiohttp.ClientSession() as session:
            answer = await matrix_request(session, "POST", url, json_body={
                "type": "m.login.password", "password": user.password, "device_id": device_id,
                "identifier": {"type": "m.id.user", "user": user.localpart}})
        return RegisteredUser(user_id=answer["user_id"], access_token=answer["access_token"],
                              device_id=answer["device_id"], password=user.password,
                              localpart=user.localpart)

    async def override_ratelimit(self, admin: RegisteredUser, user_id: str, *,
                                 messages_per_second: int = 0,
                                 burst_count: int = 0) -> None:
        """Exempt ``user_id`` from message rate limits (0/0 means unlimited), as operators
        usually do for bots. ``admin`` must be registered with ``admin=True``."""
        url = (f"{self.base_url}/_synapse/admin/v1/users/{quote(user_id, safe='')}"
               "/override_ratelimit")
        async with aiohttp.ClientSession() as session:
            await matrix_request(
                session, "POST", url, access_token=admin.access_token,
                json_body={"messages_per_second": messages_per_second,
                           "burst_count": burst_count},
            )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
