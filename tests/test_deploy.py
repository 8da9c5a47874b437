"""The deploy examples: the Dockerfile's health check run against a real listener, the
compose example's shape, the systemd unit's sandboxing. (No image is built here.)"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import yaml

from bot.clock import SystemClock
from bot.http import HttpListener, Loop
from bot.store import SqliteStore
from tests.test_http import listening

ROOT = Path(__file__).resolve().parent.parent


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_image_runs_newsbot_in_exec_form_so_sigterm_reaches_it() -> None:
    instructions = dict(dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["newsbot"]
    assert json.loads(instructions["CMD"]) == ["run", "-c", "/data/config.yaml"]
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert instructions["USER"] == "newsbot"


async def health_check(url: str | None) -> tuple[int, str]:
    """The image's HEALTHCHECK command, run here with this Python."""
    check = dict(dockerfile_instructions())["HEALTHCHECK"]
    command = json.loads(check[check.index("CMD ") + 4:])
    assert command[:2] == ["python", "-c"]
    env = {"NEWSBOT_HEALTH_URL": url} if url is not None else {}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_the_image_health_check_asks_healthz(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    sync = asyncio.create_task(asyncio.Event().wait())
    listener = HttpListener(store, SystemClock(), loops=lambda: [Loop("sync", sync)])
    async with listening(listener) as base:
        assert await health_check(f"{base}/healthz") == (0, "")
        sync.cancel()
        await asyncio.sleep(1.5)            # past the listener's one-second memory
        code, err = await health_check(f"{base}/healthz")
        assert code == 1 and err == "503: sync: stopped\n\n"
    code, err = await health_check(f"{base}/healthz")      # nobody listens any more
    assert code == 1 and "Connection refused" in err
    assert await health_check("") == (0, "")               # a bot without a listener
    default = dict(dockerfile_instructions())["ENV"]
    assert "NEWSBOT_HEALTH_URL=http://127.0.0.1:9180/healthz" in default.split()
    store.close()


def test_the_compose_example_is_newsbot_synapse_and_its_postgresql() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.example.yml").read_text())
    services = compose["services"]
    assert set(services) == {"newsbot", "synapse", "postgres"}
    bot = services["newsbot"]
    assert bot["build"] == "."
    assert bot["depends_on"]["synapse"]["condition"] == "service_healthy"
    assert services["synapse"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "--lc-collate=C" in services["postgres"]["environment"]["POSTGRES_INITDB_ARGS"]
    assert bot["stop_grace_period"] == "30s"                # longer than the drain
    assert bot["read_only"] is True and bot["cap_drop"] == ["ALL"]
    # Published on the host's loopback only.
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_systemd_unit_is_sandboxed() -> None:
    service = unit_settings(ROOT / "deploy" / "newsbot.service")["Service"]
    expected = {"DynamicUser": "yes", "StateDirectory": "newsbot", "ProtectSystem": "strict",
                "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
                "PrivateDevices": "yes", "KillSignal": "SIGTERM", "CapabilityBoundingSet": "",
                "RestrictSUIDSGID": "yes", "RestartPreventExitStatus": "2", "UMask": "0077"}
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["ExecStart"][0].endswith("newsbot run -c /etc/newsbot/config.yaml")
    assert int(service["TimeoutStopSec"][0]) > 10           # longer than the drain
    assert "@system-service" in service["SystemCallFilter"]
