"""A room member on Element's own crypto stack, for tests that must see what Element shows.

``JsMember`` drives ``tests/jsmember/member.mjs`` — matrix-js-sdk with its Rust crypto
(``@matrix-org/matrix-sdk-crypto-wasm``), the stack Element Web runs — over JSON lines on its
stdin and stdout. Unlike nio, it checks cross-signing: it tells whether a sender's device is
signed by its owner, shows the shield Element would draw next to an event, and with "exclude
insecure devices" on it refuses to decrypt events from unsigned devices, as Element does.

    async with JsMember(tmp_path) as alice:
        await alice.login(synapse.base_url, user)
        await alice.exclude_insecure(True)
        room_id = await alice.join(room)
        events = await alice.messages(room_id, sender=bot_user_id, min_count=3)

Each member logs in with a new device and keeps its crypto store in memory: it lives as long
as the object. The Node packages come from ``./dev test`` (``npm ci`` in tests/jsmember), which
also brings Node 22 (matrix-js-sdk needs it); ``JSMEMBER_NODE`` overrides the binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.support import RegisteredUser

JSMEMBER_DIR = Path(__file__).resolve().parent / "jsmember"
SCRIPT = JSMEMBER_DIR / "member.mjs"

# Generous: a 2-core machine shared by several suites makes WASM start-up and crypto slow.
_DEFAULT_TIMEOUT = 90.0
_STOP_TIMEOUT = 20.0
# A `messages` answer lists every event of the room: room for large rooms.
_LINE_LIMIT = 64 * 1024 * 1024


class JsMemberError(Exception):
    """The member answered a command with an error, died, or did not answer in time."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer: dict[str, Any] = answer or {}


def node_binary() -> str:
    """The Node that runs member.mjs: ``JSMEMBER_NODE``, else the Node 22 npm installed."""
    override = os.environ.get("JSMEMBER_NODE")
    if override:
        return override
    bundled = JSMEMBER_DIR / "node_modules" / ".bin" / "node"
    if bundled.exists():
        return str(bundled)
    if not (JSMEMBER_DIR / "node_modules" / "matrix-js-sdk").exists():
        raise JsMemberError(
            f"{JSMEMBER_DIR}/node_modules is missing: run the tests with ./dev test, or "
            f"npm ci --prefix {JSMEMBER_DIR}")
    # No bundled Node for this platform: one on PATH must be 22 or newer.
    found = shutil.which("node")
    if found is None:
        raise JsMemberError("no Node to run tests/jsmember (set JSMEMBER_NODE)")
    return found


class JsMember:
    """One matrix-js-sdk client in a Node child process. Use as an async context manager."""

    def __init__(self, workdir: Path, name: str = "jsmember") -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.stderr_path = self.workdir / f"{name}.stderr.log"
        self.user_id: str | None = None
        self.device_id: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A plain file keeps the child's stderr whole even if nobody reads it while it runs.
        self._stderr = self.stderr_path.open("wb")
        self._process = await asyncio.create_subprocess_exec(
            node_binary(), str(SCRIPT),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=JSMEMBER_DIR, limit=_LINE_LIMIT,
        )

    # ---- commands -----------------------------------------------------------------------

    async def login(self, homeserver: str, user: RegisteredUser) -> str:
        """Log ``user`` in with a new device, start crypto and sync; its device id."""
        answer = await self.call("login", homeserver=homeserver, user_id=user.user_id,
                                 password=user.password)
        self.user_id = answer["user_id"]
        self.device_id = answer["device_id"]
        return str(answer["device_id"])

    async def exclude_insecure(self, on: bool) -> None:
        """Element's "exclude insecure devices" (device isolation mode: only signed devices)."""
        await self.call("exclude_insecure", on=on)

    async def bootstrap_cross_signing(self) -> dict[str, Any]:
        """Create and upload this account's cross-signing keys, sign this device with them:
        ``{master_key, self_signing_key, device_signed}`` once the server shows the signature."""
        return await self.call("bootstrap_cross_signing")

    async def create_room(self, *, encrypted: bool = True, invite: list[str] | None = None,
                          name: str | None = None) -> str:
        answer = await self.call("create_room", encrypted=encrypted, invite=invite or [],
                                 name=name)
        return str(answer["room_id"])

    async def join(self, room: str) -> str:
        """Join a room by id or alias; its id once this client's sync shows the join."""
        return str((await self.call("join", room=room))["room_id"])

    async def send(self, room: str, body: str, *, wait_joined: list[str] | None = None) -> str:
        """Send an m.text (encrypted if the room is), after ``wait_joined`` are seen joined."""
        answer = await self.call("send", room=room, body=body, wait_joined=wait_joined or [])
        return str(answer["event_id"])

    async def messages(self, room: str, *, sender: str | None = None, min_count: int = 1,
                       timeout: float = 60.0, recheck: bool = False) -> list[dict[str, Any]]:
        """Wait for ``min_count`` m.room.message events (from ``sender``) whose decryption has
        a verdict; all such events of the room, in timeline order. Each: ``event_id, type,
        sender, origin_server_ts, encrypted, content`` (decrypted, original: not an edit's
        replacement; None on failure), ``decryption_failure`` (None or a js-sdk
        DecryptionFailureCode, e.g. "UNSIGNED_SENDER_DEVICE"), ``sender_device``, ``shield``
        (None if not decrypted, else ``{colour: NONE|GREY|RED, reason: None |
        "UNSIGNED_DEVICE" | "UNVERIFIED_IDENTITY" | ...}``) and ``rechecked``.

        Events still waiting for their room key are left out. A refusal for lack of trust is
        the verdict at the event's arrival, as a running Element shows it (js-sdk never retries
        those): to rule out a race with this client's download of the sender's keys, wait for
        ``wait_device_status`` before the event is sent. ``recheck=True`` re-judges such
        refusals once against fresh keys, as an Element reload would."""
        answer = await self.call("messages", room=room, sender=sender, min_count=min_count,
                                 timeout=timeout, recheck=recheck,
                                 _deadline=timeout + _DEFAULT_TIMEOUT)
        events: list[dict[str, Any]] = answer["events"]
        return events

    async def device_status(self, user_id: str, device_id: str) -> dict[str, bool]:
        """``{known, signed_by_owner, cross_signing_verified, locally_verified}`` for a device,
        as this client's Rust crypto store sees it after a fresh key download."""
        answer = await self.call("device_status", user_id=user_id, device_id=device_id)
        return {key: bool(answer[key]) for key in
                ("known", "signed_by_owner", "cross_signing_verified", "locally_verified")}

    async def wait_device_status(self, user_id: str, device_id: str, *, signed_by_owner: bool,
                                 timeout: float = 60.0) -> dict[str, bool]:
        """Poll ``device_status`` until ``signed_by_owner`` has the wanted value: a change of
        someone's keys reaches this client through its sync, a little later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.device_status(user_id, device_id)
            if status["known"] and status["signed_by_owner"] == signed_by_owner:
                return status
            if loop.time() > deadline:
                raise JsMemberError(
                    f"{device_id} of {user_id} still {status} after {timeout:.0f} s"
                    f"{self._stderr_tail()}")
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Log out (deleting the device) and end the process; safe to call twice."""
        process = self._process
        if process is None:
            return
        try:
            if process.returncode is None:
                with contextlib.suppress(JsMemberError, OSError):
                    await self.call("stop", _deadline=_STOP_TIMEOUT)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        finally:
            self._process = None
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    # ---- protocol -----------------------------------------------------------------------

    async def call(self, cmd: str, *, _deadline: float = _DEFAULT_TIMEOUT,
                   **args: Any) -> dict[str, Any]:
        """Send one command and return its answer; raise JsMemberError on an error answer."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise JsMemberError(f"{self.name} is not running")
        async with self._lock:
            line = json.dumps({"cmd": cmd, **args}) + "\n"
            try:
                process.stdin.write(line.encode())
                await process.stdin.drain()
                raw = await asyncio.wait_for(process.stdout.readline(), _deadline)
            except TimeoutError:
                raise JsMemberError(
                    f"{self.name}: no answer to {cmd} in {_deadline:.0f} s"
                    f"{self._stderr_tail()}") from None
            except (BrokenPipeError, ConnectionResetError) as e:
                raise JsMemberError(f"{self.name} died{self._stderr_tail()}") from e
        if not raw:
            await process.wait()
            raise JsMemberError(
                f"{self.name} exited ({process.returncode}) during {cmd}{self._stderr_tail()}")
        answer: dict[str, Any] = json.loads(raw)
        if "error" in answer:
            raise JsMemberError(
                f"{self.name}: {cmd} failed: {answer['error']}{self._stderr_tail()}", answer)
        return answer

    def _stderr_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- {self.stderr_path} (last {lines} lines) ---\n{tail}" if tail else ""
