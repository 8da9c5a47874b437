"""A throwaway Prosody XMPP server on 127.0.0.1, run as a child process, for tests and demos.

Debian's ``prosody`` package provides the binary (``./dev`` installs it when missing); the
server runs from its own configuration in a throwaway directory, never the system one:
one virtual host ``localhost`` with stream management, and a group chat service
``conference.localhost`` that keeps an archive (XEP-0313), both on one loopback port,
without TLS (loopback only). Its state is on disk, so a stopped and restarted server keeps
its rooms, members and archives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support import free_port

DOMAIN = "localhost"
MUC_DOMAIN = "conference.localhost"


def prosody_available() -> bool:
    return shutil.which("prosody") is not None and shutil.which("prosodyctl") is not None


def _die_with_parent() -> None:
    # Linux's PR_SET_PDEATHSIG: a killed test run leaves no orphan server holding the port.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class XmppAccount:
    jid: str
    password: str

    @property
    def localpart(self) -> str:
        return self.jid.split("@", 1)[0]


class ProsodyServer:
    """``async with ProsodyServer(workdir) as server``: a running Prosody; ``stop()`` and
    ``start()`` again keep its data (an outage in the middle of a test)."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.config_path = workdir / "prosody.cfg.lua"
        self.log_path = workdir / "prosody.log"
        self._process: asyncio.subprocess.Process | None = None
        self._count = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(f"""\
-- A test server: loopback only, no TLS, no server-to-server, nothing from the system.
pidfile = "{self.workdir}/prosody.pid"
data_path = "{data}"
run_as_root = true
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
admin_socket = "{self.workdir}/prosody.sock"
modules_enabled = {{
    "roster"; "saslauth"; "disco"; "ping"; "smacks"; "carbons"; "mam"; "time";
    "version"; "private"; "blocklist"; "presence"; "message"; "iq";
}}
modules_disabled = {{ "s2s"; "tls"; "posix"; "limits"; "offline"; "c2s_limits" }}
c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
archive_expires_after = "never"
smacks_hibernation_time = 60
log = {{ info = "{self.log_path}"; error = "{self.log_path}" }}

VirtualHost "{DOMAIN}"

Component "{MUC_DOMAIN}" "muc"
    modules_enabled = {{ "muc_mam" }}
    muc_room_locking = false
    muc_log_by_default = true
    muc_log_all_rooms = true
    max_archive_query_results = 100
    muc_room_default_history_length = 20
""")

    async def __aenter__(self) -> ProsodyServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._process is not None:
            return
        self._process = await asyncio.create_subprocess_exec(
            "prosody", "--config", str(self.config_path), "-F",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
        await self._wait_listening()

    async def _wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise RuntimeError(f"prosody exited with {self._process.returncode}; see "
                                   f"{self.log_path}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise RuntimeError(f"prosody did not listen on {self.port} within {timeout} s")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def register(self, name: str = "user", password: str | None = None) -> XmppAccount:
        """A new account whose localpart starts with ``name`` and is unique here."""
        self._count += 1
        localpart = f"{name.lower()}{self._count}{secrets.token_hex(2)}"
        password = password or secrets.token_urlsafe(12)
        process = await asyncio.create_subprocess_exec(
            "prosodyctl", "--config", str(self.config_path), "register", localpart, DOMAIN,
            password, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, "LANG": "C.UTF-8"})
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"prosodyctl register failed: {output.decode(errors='replace')}")
        return XmppAccount(f"{localpart}@{DOMAIN}", password)

    def new_room(self, name: str = "room") -> str:
        """A fresh group chat address (rooms are created by their first occupant)."""
        return f"{name.lower()}{secrets.token_hex(4)}@{MUC_DOMAIN}"
