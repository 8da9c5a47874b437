"""check-config compares the configuration with the stored state, without writing it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bot.config import load_config_text
from bot.model import Message
from bot.statecheck import state_warnings
from bot.store import NewDelivery, PollOutcome, RoomFeed, SqliteStore
from bot.store.sqlite import DB_FILENAME

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
matrix:
  homeserver: http://127.0.0.1:8008
  user_id: "@bot:localhost"
  access_token: "${TOKEN}"
  device_id: BOT
storage:
  path: ./state
feeds:
  - name: actus
    url: http://127.0.0.1/new-actus.xml
    rooms: ["!room:localhost"]
  - name: blog
    url: http://127.0.0.1/blog.xml
    rooms: ["!room:localhost"]
"""


async def test_disagreements_are_listed_and_the_database_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    store = SqliteStore.open(tmp_path / "state")
    await store.ensure_feed("actus", "http://127.0.0.1/old-actus.xml")
    await store.ensure_feed("old", "http://127.0.0.1/old.xml")
    await store.ensure_feed("blog", "http://127.0.0.1/blog.xml")
    await store.disable_feed("blog", "HTTP 410 Gone at http://127.0.0.1/blog.xml", now=1.0,
                       notices=[])
    await store.add_room_feed(RoomFeed("actus", "http://x/y", "!other:localhost", 60, "@m:x", 1.0))
    await store.record_poll(PollOutcome("old", 1.0, 2.0, None, None, None, None, None, ["e"],
                                  [NewDelivery("e", "!gone:localhost", Message("x", "x"))]))
    store.close()
    before = hashlib.sha256((tmp_path / "state" / DB_FILENAME).read_bytes()).hexdigest()
    config, _ = load_config_text(CONFIG, base_dir=tmp_path, environ={"TOKEN": "t0ken-value"})
    warnings = state_warnings(config)
    assert any(w.startswith("feed actus: added by command in !other:localhost") for w in warnings)
    assert any("feed actus: its url changed from http://127.0.0.1/old-actus.xml" in w
               for w in warnings)
    assert any(w.startswith("feed old: has stored state but is no longer configured")
               for w in warnings)
    assert any(w.startswith("feed blog: switched off (HTTP 410 Gone") for w in warnings)
    assert any(w.startswith("room !gone:localhost: 1 item(s) wait") for w in warnings)
    after = hashlib.sha256((tmp_path / "state" / DB_FILENAME).read_bytes()).hexdigest()
    assert before == after

    result = subprocess.run(  # noqa: ASYNC221 - a short command; nothing else runs here
        [sys.executable, "-m", "bot", "check-config", "-c", str(tmp_path / "c.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "TOKEN": "t0ken-value", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0
    assert "warning: feed old: has stored state" in result.stderr


def test_no_database_no_warning(tmp_path: Path) -> None:
    config, _ = load_config_text(CONFIG, base_dir=tmp_path, environ={"TOKEN": "t0ken-value"})
    assert state_warnings(config) == []
