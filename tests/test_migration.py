"""Upgrading a state made by an older newsbot: nothing lost, nothing posted twice.

tests/data/state-v6.sql is a database made by newsbot at schema 6 (before the outbox had
a target and a network-neutral message): items pending, one item attempted whose answer
was lost, a correction waiting as an edit of a sent item, an inline and a separate
picture, a digest queued for one subscriber and digest items waiting for another, and a
410 notice. After the migration every pending row goes out once, as the older newsbot
would have sent it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.clock import SystemClock
from bot.delivery import Deliverer
from bot.media import ImageSource
from bot.model import Outgoing, Sent, delivery_key
from bot.store import MediaRow, SqliteStore, Store
from bot.store.schema import SCHEMA_VERSION
from bot.store.sqlite import DB_FILENAME
from bot.transport.matrix.events import DELIVERY_KEY_FIELD, MatrixMessages, txn_id_for

DUMP = Path(__file__).parent / "data" / "state-v6.sql"
ROOM, BOB_DM = "#news:legacy.test", "!dmbob:legacy.test"


class RecordingMatrix:
    """Matrix encoding and idempotency as the real transport has them; sends recorded."""

    def __init__(self) -> None:
        self.login_generation = 0
        self.sent: list[tuple[str, dict[str, Any], str]] = []
        self.messages = MatrixMessages(self)

    async def join_room(self, room: str) -> str:
        return room

    async def prepare(self, outgoing: Outgoing, images: ImageSource | None,
                      ) -> dict[str, Any] | None:
        return await self.messages.prepare(outgoing, images)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float) -> Sent:
        return await self.messages.send(room_id, payload, key, attempted_at=attempted_at,
                                        now=now)

    async def send_message(self, room_id: str, content: dict[str, Any], txn_id: str,
                           fence: Callable[[], bool] | None = None) -> str:
        self.sent.append((room_id, content, txn_id))
        return f"$new-{len(self.sent)}"

    async def find_delivery(self, room_id: str, key: str, *,
                            max_events: int = 500) -> str | None:
        return None


class Pictures:
    async def image(self, url: str) -> MediaRow | None:
        return MediaRow(url, "mxc://legacy.test/" + url.rsplit("/", 1)[-1], "image/png",
                        1000, 100, 80)


def old_state(directory: Path) -> Path:
    directory.mkdir()
    conn = sqlite3.connect(directory / DB_FILENAME)
    conn.executescript(DUMP.read_text())
    conn.close()
    return directory


async def deliver(store: Store, transport: RecordingMatrix, rooms: list[str]) -> None:
    deliverer = Deliverer(store, transport, SystemClock(), media=Pictures(), retry_base=0.05)
    workers = [asyncio.create_task(deliverer.run_room(room)) for room in rooms]
    try:
        async with asyncio.timeout(10):
            while await store.pending_count():
                await asyncio.sleep(0.01)
    finally:
        deliverer.stop()
        await asyncio.gather(*workers)


async def test_an_older_state_is_migrated_and_its_pending_rows_go_out_once(
        tmp_path: Path) -> None:
    directory = old_state(tmp_path / "state")
    conn = sqlite3.connect(directory / DB_FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
    conn.close()

    store = SqliteStore.open(directory)
    columns = {r[1] for r in store._conn.execute("PRAGMA table_info(outbox)")}
    assert {"kind", "network", "room", "message", "payload"} <= columns
    assert "content" not in columns
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = store._conn.execute(
        "SELECT entry_id, kind, network, state FROM outbox ORDER BY seq").fetchall()
    assert rows == [
        ("e1", "item", "matrix", "sent"), ("e2", "item", "matrix", "pending"),
        ("e3", "item", "matrix", "pending"), ("e4", "item", "matrix", "pending"),
        ("e5", "item", "matrix", "pending"), ("e5#image", "image", "matrix", "pending"),
        ("e1#edit#1", "edit", "matrix", "pending"),
        ("newsbot:digest:1500", "digest", "matrix", "pending"),
        ("newsbot:gone:https://example.org/blog.xml", "notice", "matrix", "pending")]

    transport = RecordingMatrix()
    await deliver(store, transport, [ROOM, BOB_DM])
    by_key = {txn: (room, content) for room, content, txn in transport.sent}
    assert len(by_key) == len(transport.sent) == 8            # each pending row once
    # The same transaction ids as the older newsbot used: an attempt it made is not
    # posted a second time.
    for entry_id in ("e2", "e3", "e4", "e5", "e5#image", "e1#edit#1",
                     "newsbot:gone:https://example.org/blog.xml"):
        assert txn_id_for(delivery_key("lettre" if "gone" not in entry_id else "blog",
                                       entry_id, ROOM)) in by_key, entry_id
    in_room = [c for room, c, _ in transport.sent if room == ROOM]
    assert [str(c.get("body", "")).split("\n")[0] for c in in_room] == [
        "Deux", "Trois (corrigé)", "Quatre", "Cinq", "Cinq", "* Un (corrigé)", "gone"]
    trois, quatre, image, edit = in_room[1], in_room[2], in_room[4], in_room[5]
    assert trois["msgtype"] == "m.text"                       # as its feed was configured
    assert '<img src="mxc://legacy.test/4.png"' in quatre["formatted_body"]
    assert "org.interhop.newsbot.image" not in quatre
    assert image["msgtype"] == "m.image" and image["url"] == "mxc://legacy.test/5.png"
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$sent-e1"}
    assert edit["m.new_content"]["body"].startswith("Un (corrigé)")
    assert all(c[DELIVERY_KEY_FIELD] for _, c, _ in transport.sent)
    digest = [c for room, c, _ in transport.sent if room == BOB_DM]
    assert len(digest) == 1 and digest[0]["body"].startswith("Votre résumé hebdomadaire")

    # What waits for the next digest is still there; a restart sends nothing again.
    assert [i.entry_id for i in await store.digest_items("@ada:legacy.test")] == ["e1", "e2"]
    store.close()
    store = SqliteStore.open(directory)
    again = RecordingMatrix()
    await deliver(store, again, [ROOM, BOB_DM])
    assert again.sent == []
    store.close()
