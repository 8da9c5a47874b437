"""Images and edits in place, against a real Synapse, checked from a member's client."""

from __future__ import annotations

import asyncio
import struct
import zlib
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.media import sniff_image
from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedItem,
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    SynapseServer,
)


def png(width: int, height: int) -> bytes:
    """A real PNG of the given size (grey pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00"
             b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def serve_bytes(feed_server: FeedServer, path: str, data: bytes, mime: str) -> str:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type=mime)
    feed_server.set_handler(path, handler)
    return feed_server.url(path)


def item(n: int, *, title: str | None = None, summary: str = "",
         link_suffix: str = "") -> FeedItem:
    return FeedItem(guid=f"urn:img:{n}", title=title or f"Numéro {n}",
                    link=f"http://127.0.0.1/n/{n}{link_suffix}", summary=summary,
                    published=datetime(2025, 3, n, tzinfo=UTC))


async def download(base_url: str, token: str, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/_matrix/client/v1/media/download/{server}/{media_id}",
            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


def test_images_are_recognised_by_their_bytes() -> None:
    info = sniff_image(png(64, 48))
    assert info is not None and (info.mimetype, info.width, info.height) == \
        ("image/png", 64, 48)
    gif = sniff_image(PIXEL_GIF)
    assert gif is not None and (gif.width, gif.height) == (1, 1)
    assert sniff_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert sniff_image(b"<html>not an image</html>") is None


async def test_inline_and_separate_images_reach_members_and_pixels_do_not(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice_user = await new_user("alice")
    alice = await member(alice_user)
    inline_room = await alice.create_room(name="inline")
    separate_room = await alice.create_room(name="separate")
    picture = png(800, 400)
    picture_url = serve_bytes(feed_server, feed_path + "/pic.png", picture, "image/jpeg")
    pixel_url = serve_bytes(feed_server, feed_path + "/pixel.gif", PIXEL_GIF, "image/gif")
    feed_server.set_feed(feed_path, [
        item(2, summary=f'<p>Avec un pixel <img src="{pixel_url}"></p>'),
        item(1, summary=f'<p>Illustré <img src="{picture_url}" alt="x"></p>'),
    ])
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "inline", "url": feed_server.url(feed_path), "backfill": 2,
                "rooms": [inline_room]},
               {"name": "separate", "url": feed_server.url(feed_path), "backfill": 2,
                "rooms": [separate_room], "images": "separate"}])), bot)
    async with InProcessBot(cfg):
        inline = await alice.wait_for_messages(inline_room, 2, sender=bot.user_id)
        separate = await alice.wait_for_messages(separate_room, 3, sender=bot.user_id)
        await asyncio.sleep(1)
    illustrated, with_pixel = inline
    html = illustrated["content"]["formatted_body"]
    assert '<img src="mxc://' in html
    assert 'width="640" height="320"' in html          # scaled for display, ratio kept
    mxc = html.split('<img src="', 1)[1].split('"', 1)[0]
    assert await download(synapse.base_url, alice_user.access_token, mxc) == picture
    assert "<img" not in with_pixel["content"]["formatted_body"]     # the pixel is dropped
    assert [e["content"]["msgtype"] for e in separate] == ["m.notice", "m.image", "m.notice"]
    image = separate[1]["content"]
    assert image["info"] == {"mimetype": "image/png", "size": len(picture), "w": 800, "h": 400}
    assert image["url"] == mxc                           # uploaded once, for both rooms
    picture_requests = feed_server.requests(feed_path + "/pic.png")
    assert len(picture_requests) == 1


async def test_a_corrected_issue_is_edited_in_place(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="edits")
    feed_server.set_feed(feed_path, [item(1, summary="<p>Texte d’origine.</p>")])
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "lettre", "url": feed_server.url(feed_path), "backfill": 1,
                "rooms": [room]}])), bot)
    async with InProcessBot(cfg):
        original = (await alice.wait_for_messages(room, 1, sender=bot.user_id))[0]
        # Cosmetic changes only: whitespace and a tracking parameter. Not an update.
        feed_server.set_feed(feed_path, [item(1, summary="<p>Texte   d’origine. </p>",
                                               link_suffix="?utm_source=rss")])
        await asyncio.sleep(2.5)
        assert len(await alice.messages(room, sender=bot.user_id)) == 1
        feed_server.set_feed(feed_path, [item(1, title="Numéro 1 (corrigé)",
                                              summary="<p>Texte corrigé.</p>")])
        events = await alice.wait_for_messages(room, 2, sender=bot.user_id)
        await asyncio.sleep(2)
        assert len(await alice.messages(room, sender=bot.user_id)) == 2
    edit = events[1]["content"]
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": original["event_id"]}
    assert edit["m.new_content"]["body"].splitlines()[0] == "Numéro 1 (corrigé)"
    assert "Texte corrigé." in edit["m.new_content"]["formatted_body"]
    assert edit["body"].startswith("* Numéro 1 (corrigé)")


@pytest.mark.parametrize("mode", ["ignore"])
async def test_updates_can_be_ignored(
        mode: str, synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="no edits")
    feed_server.set_feed(feed_path, [item(1)])
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "lettre", "url": feed_server.url(feed_path), "backfill": 1,
                "rooms": [room], "on_update": mode}])), bot)
    async with InProcessBot(cfg):
        await alice.wait_for_messages(room, 1, sender=bot.user_id)
        feed_server.set_feed(feed_path, [item(1, title="Autre titre")])
        await asyncio.sleep(2.5)
    assert len(await alice.messages(room, sender=bot.user_id)) == 1


async def test_an_edit_before_delivery_sends_the_corrected_version_only(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, tmp_path: Path) -> None:
    """Corrected while still in the outbox (the room was unreachable): one message, the
    corrected one — no original plus edit."""
    bot = await new_user("newsbot")
    owner = await new_user("owner")
    async with MemberClient(synapse.base_url, owner) as alice:
        room = await alice.create_room(name="late", preset="private_chat")
        feed_server.set_feed(feed_path, [])
        cfg = load(write_config(tmp_path / "c.yaml", bot_config(
            homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
            feeds=[{"name": "lettre", "url": feed_server.url(feed_path), "rooms": [room]}])),
            bot)
        async with InProcessBot(cfg):
            await asyncio.sleep(1.5)              # first sight of an empty feed
            feed_server.set_feed(feed_path, [item(1)])
            await asyncio.sleep(2)                 # queued; the bot is not invited yet
            feed_server.set_feed(feed_path, [item(1, title="Numéro 1, corrigé")])
            await asyncio.sleep(2)
        await alice.invite(room, bot.user_id)
        async with InProcessBot(cfg):
            seen = await alice.wait_for_messages(room, 1, sender=bot.user_id)
            await asyncio.sleep(1.5)
        seen = await alice.messages(room, sender=bot.user_id)
    assert [e["content"]["body"].splitlines()[0] for e in seen] == ["Numéro 1, corrigé"]
