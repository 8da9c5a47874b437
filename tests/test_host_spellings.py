"""SSRF through numeric host spellings (issue 10, case 5), end to end.

A real bot against a real Synapse and a feed server on 127.0.0.1. ``2130706433``,
``127.1``, ``0177.0.0.1``, ``017700000001``, ``0`` and ``0x7f.1`` all mean 127.0.0.1 to
the C library. aiohttp before 3.14.1 connected to them without asking the resolver, so
the test disables aiohttp's own refusal (as if that older aiohttp were installed): the
bot's guard must refuse them by itself, as a feed URL, after a redirect and as an image.
Private networks are allowed here (the feed server is on loopback): a host spelled
neither as a canonical IP address nor as a DNS name is refused whatever that setting.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import aiohttp.connector
import pytest
from aiohttp import web

from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import FeedItem, FeedServer, MemberFactory, NewUserFactory, SynapseServer

SPELLINGS = ["2130706433", "127.1", "0177.0.0.1", "017700000001", "0", "0x7f.1"]


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def old_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp as it was before 3.14.1: any digits-and-dots host is an IP literal."""
    if not hasattr(aiohttp.connector, "is_canonical_ipv4_address"):
        pytest.skip("this aiohttp has no numeric-host check to disable")
    monkeypatch.setattr(aiohttp.connector, "is_canonical_ipv4_address", lambda host: True)


@pytest.mark.usefixtures("old_aiohttp")
async def test_numeric_spellings_of_loopback_never_reach_it(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bot = await new_user("newsbot")
    alice_user = await new_user("alice")
    alice = await member(alice_user)
    room = await alice.create_room(name="spellings")
    base = feed_path.rsplit("/", 1)[0]
    port = feed_server.port

    def spelled(host: str, path: str) -> str:
        return f"http://{host}:{port}{base}{path}"

    picture = png(64, 48)

    async def picture_handler(request: web.Request) -> web.Response:
        return web.Response(body=picture, content_type="image/png")

    # What each spelling would reach: a feed with an item, and a picture.
    for i, _ in enumerate(SPELLINGS):
        feed_server.set_feed(f"{base}/inside/{i}", [FeedItem(
            guid=f"urn:inside:{i}", title=f"Interne {i}", link=f"http://127.0.0.1/in/{i}",
            published=datetime(2025, 3, 1, tzinfo=UTC))])
        feed_server.set_handler(f"{base}/secret/{i}.png", picture_handler)

    async def redirect(request: web.Request) -> web.Response:
        i = int(request.path.rsplit("/", 1)[-1])
        raise web.HTTPFound(spelled(SPELLINGS[i], f"/inside/{i}"))

    feeds: list[dict[str, object]] = []
    for i, host in enumerate(SPELLINGS):
        feed_server.set_handler(f"{base}/hop/{i}", redirect)
        feeds += [{"name": f"direct-{i}", "url": spelled(host, f"/inside/{i}"),
                   "rooms": [room]},
                  {"name": f"redirect-{i}", "url": feed_server.url(f"{base}/hop/{i}"),
                   "rooms": [room]}]
    # The control: the same picture under the canonical spelling is shown.
    feed_server.set_handler(f"{base}/public.png", picture_handler)
    images = [FeedItem(guid="urn:img:ok", title="Image publique",
                       link="http://127.0.0.1/img/ok",
                       summary=f'<p>Ok <img src="{feed_server.url(base + "/public.png")}"></p>',
                       published=datetime(2025, 3, 1, tzinfo=UTC))]
    images += [FeedItem(guid=f"urn:img:{i}", title=f"Image {i}", link=f"http://127.0.0.1/img/{i}",
                        summary=f'<p>Voir <img src="{spelled(host, f"/secret/{i}.png")}"></p>',
                        published=datetime(2025, 3, 2 + i, tzinfo=UTC))
               for i, host in enumerate(SPELLINGS)]
    feed_server.set_feed(feed_path, images)
    feeds.append({"name": "images", "url": feed_server.url(feed_path), "rooms": [room],
                  "backfill": len(images)})
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state", feeds=feeds)), bot)

    def refused(name: str) -> bool:
        return any(r.levelno == logging.WARNING and r.getMessage().startswith(f"feed {name}: ")
                   and "is neither a canonical IP address nor a DNS name" in r.getMessage()
                   for r in caplog.records)

    async with InProcessBot(cfg):
        messages = await alice.wait_for_messages(room, len(images), sender=bot.user_id)
        deadline = time.monotonic() + 30
        names = [f"{kind}-{i}" for kind in ("direct", "redirect") for i in range(len(SPELLINGS))]
        while not all(refused(name) for name in names) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for i in range(len(SPELLINGS)):  # every redirecting feed was asked at least once
            assert feed_server.requests(f"{base}/hop/{i}")
        await asyncio.sleep(1.5)  # a poll interval more: nothing else arrives
        messages = await alice.messages(room)
    assert [path for i, _ in enumerate(SPELLINGS)
            for path in (f"{base}/inside/{i}", f"{base}/secret/{i}.png")
            if feed_server.requests(path)] == []               # the server saw nothing
    bodies = {m["content"]["body"].split("\n", 1)[0]: m["content"] for m in messages
              if m["sender"] == bot.user_id}
    assert not any("Interne" in body for body in bodies)      # no feed reached inside
    [ok] = [c for body, c in bodies.items() if "Image publique" in body]
    assert '<img src="mxc://' in ok["formatted_body"]          # the control got its picture
    spelled_items = [c for body, c in bodies.items() if body.startswith("Image ")
                     and "publique" not in body]
    assert len(spelled_items) == len(SPELLINGS)                # the items still go out...
    assert not any("<img" in c.get("formatted_body", "") for c in spelled_items)  # ...bare
    assert len(feed_server.requests(f"{base}/public.png")) == 1
    assert [n for n in names if not refused(n)] == []          # each feed says why
