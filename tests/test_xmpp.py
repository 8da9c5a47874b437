"""XMPP group chats served from the same configuration, feeds and outbox as Matrix rooms,
against a real Prosody and a real Synapse, checked from each member's own client."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from slixmpp import JID

from bot.config import ConfigError, load_config, load_config_text
from bot.errors import TemporaryTransportError
from bot.model import delivery_key
from bot.store import SqliteStore
from tests.botkit import BotProcess, InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedItem,
    FeedServer,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)
from tests.support.prosody import ProsodyServer, XmppAccount
from tests.support.xmppmember import XmppMember
from tests.test_crash import fetched_since


def xmpp_section(prosody: ProsodyServer, account: XmppAccount, **extra: Any) -> dict[str, Any]:
    return {"jid": account.jid, "password": account.password, "nick": "Actualités",
            "host": prosody.host, "port": prosody.port, "tls": False, **extra}


def titles(bodies: list[str]) -> list[str]:
    return [body.split("\n", 1)[0] for body in bodies]


async def test_one_item_reaches_a_matrix_room_and_an_xmpp_group_chat_once_each(
        synapse: SynapseServer, prosody: ProsodyServer, feed_server: FeedServer,
        feed_path: str, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    matrix_room = await alice.create_room(name="actualités")
    bot_xmpp = await prosody.register("newsbot")
    group = prosody.new_room("actualites")
    items = make_items(2)
    feed_server.set_feed(feed_path, items)
    data = bot_config(homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
                      feeds=[{"name": "lettre", "url": feed_server.url(feed_path),
                              "rooms": [matrix_room, f"xmpp:{group}"], "backfill": 2}])
    data["xmpp"] = xmpp_section(prosody, bot_xmpp)
    cfg = load(write_config(tmp_path / "c.yaml", data), bot)
    async with XmppMember(prosody, await prosody.register("bob")) as bob:
        await bob.join(group)
        await alice.invite(matrix_room, bot.user_id)
        async with InProcessBot(cfg):
            seen = await alice.wait_for_messages(matrix_room, 2, sender=bot.user_id)
            await bob.wait_for(lambda inbox: len([m for m in inbox if m.room == group
                                                  and m.sender == "Actualités"]) >= 2)
        oldest_first = [items[1], items[0]]
        assert [e["content"]["body"].split("\n", 1)[0] for e in seen] == \
            [i.title for i in oldest_first]
        async with InProcessBot(cfg):       # a restart: nothing is posted again, anywhere
            newer = make_items(3)[:1]
            feed_server.set_feed(feed_path, newer + items)
            await alice.wait_for_messages(matrix_room, 3, sender=bot.user_id)
            await bob.wait_for(lambda inbox: len([m for m in inbox if m.room == group
                                                  and m.sender == "Actualités"]) >= 3)
        archive = [m for m in await bob.archive(group) if m.sender == "Actualités"]
    expected = [i.title for i in [*oldest_first, *newer]]
    assert titles([m.body for m in archive]) == [f"*{t}*" for t in expected]
    assert [m.origin_id for m in archive] == [
        delivery_key("lettre", i.guid, f"xmpp:{group}") for i in [*oldest_first, *newer]]
    # Plain text every client reads: the title styled, the link on its own line.
    first = archive[0].body.split("\n")
    assert first[-1] == items[1].link
    assert len(await alice.messages(matrix_room, sender=bot.user_id)) == 3


async def test_an_xmpp_only_bot_needs_no_matrix_section(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    bot_xmpp = await prosody.register("newsbot")
    group = prosody.new_room("seul")
    items = make_items(1)
    feed_server.set_feed(feed_path, items)
    data = {"xmpp": xmpp_section(prosody, bot_xmpp), "storage": {"path": str(tmp_path / "s")},
            "fetch": {"allow_private_networks": True},
            "feeds": [{"name": "blog", "url": feed_server.url(feed_path), "interval": "1s",
                       "rooms": [f"xmpp:{group}"], "backfill": 1}]}
    cfg, _ = load_config(write_config(tmp_path / "c.yaml", data))
    assert cfg.matrix is None and cfg.xmpp is not None
    async with XmppMember(prosody, await prosody.register("carol")) as carol:
        await carol.join(group)
        async with InProcessBot(cfg):
            inbox = await carol.wait_for(
                lambda inbox: any(m.sender == "Actualités" for m in inbox))
    assert [m.body.split("\n", 1)[0] for m in inbox if m.sender == "Actualités"] == \
        [f"*{items[0].title}*"]


async def test_hostile_text_stays_plain_and_cannot_break_the_stream(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    """Characters XML cannot carry would make the server close the bot's stream (and a
    feed could do it at every poll): they are dropped, markup stays text, and the next
    item still arrives."""
    bot_xmpp = await prosody.register("newsbot")
    group = prosody.new_room("hostile")
    hostile = FeedItem(guid="h1", title="Alerte\x01\x0b <script>alert(1)</script> \u202efdp",
                       link="https://example.org/h1",
                       summary="<p>Texte\x00 <img src=x onerror=alert(1)> "
                                   "<a href='javascript:alert(1)'>clic</a></p>")
    feed_server.set_feed(feed_path, [hostile])
    data = {"xmpp": xmpp_section(prosody, bot_xmpp), "storage": {"path": str(tmp_path / "s")},
            "fetch": {"allow_private_networks": True},
            "feeds": [{"name": "h", "url": feed_server.url(feed_path), "interval": "1s",
                       "rooms": [f"xmpp:{group}"], "backfill": 1}]}
    cfg, _ = load_config(write_config(tmp_path / "c.yaml", data))
    async with XmppMember(prosody, await prosody.register("dave")) as dave:
        await dave.join(group)
        async with InProcessBot(cfg):
            await dave.wait_for(lambda inbox: any(m.sender == "Actualités" for m in inbox))
            after = FeedItem(guid="h2", title="Suite", link="https://example.org/h2")
            feed_server.set_feed(feed_path, [after, hostile])
            inbox = await dave.wait_for(
                lambda inbox: len([m for m in inbox if m.sender == "Actualités"]) >= 2)
    bodies = [m.body for m in inbox if m.sender == "Actualités"]
    assert bodies[0].startswith("*Alerte <script>alert(1)</script> fdp*")
    assert not any(ch in bodies[0] for ch in "\x00\x01\x0b\u202e")
    assert "javascript:" not in bodies[0]
    assert bodies[1].startswith("*Suite*")


@pytest.mark.parametrize(("rooms", "sections", "problem"), [
    (["xmpp:news@conference.example.org"], ("matrix",),
     "feeds[0].rooms[0]: xmpp:news@conference.example.org is on XMPP, but the "
     "configuration has no xmpp: section"),
    (["#news:example.org"], ("xmpp",),
     "feeds[0].rooms[0]: #news:example.org is on Matrix, but the configuration has no "
     "matrix: section"),
    (["xmpp:not an address"], ("xmpp",), "is not a room alias"),
    (["#news:example.org"], (), "matrix: required section is missing"),
])
def test_check_config_names_a_room_whose_network_has_no_section(
        rooms: list[str], sections: tuple[str, ...], problem: str) -> None:
    text = "storage: {path: /tmp/x}\nfeeds:\n  - name: n\n    url: https://example.org/f\n" \
           f"    rooms: {rooms!r}\n".replace("'", '"')
    if "matrix" in sections:
        text += "matrix: {homeserver: https://example.org, user_id: '@bot:example.org', " \
                "password: hunter2-real}\n"
    if "xmpp" in sections:
        text += "xmpp: {jid: bot@example.org, password: hunter2-real}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_xmpp_without_tls_is_only_for_loopback_and_the_password_never_shows() -> None:
    text = ("storage: {path: /tmp/x}\nfeeds:\n  - {name: n, url: 'https://example.org/f', "
            "rooms: ['xmpp:n@conference.example.org']}\n"
            "xmpp: {jid: bot@example.org, password: s3cret-word, host: example.org, "
            "tls: false}\n")
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert any("xmpp.tls" in p and "loopback" in p for p in caught.value.problems)
    config, _ = load_config_text(text.replace("host: example.org", "host: 127.0.0.1"))
    assert config.xmpp is not None and "s3cret" not in repr(config.xmpp)
    assert "s3cret" not in repr(config)


async def xmpp_bot(prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
                   tmp_path: Path, group: str, **extra: Any) -> Any:
    bot_xmpp = await prosody.register("newsbot")
    feed_server.set_feed(feed_path, make_items(1))
    data = {"xmpp": xmpp_section(prosody, bot_xmpp), "storage": {"path": str(tmp_path / "s")},
            "fetch": {"allow_private_networks": True},
            "feeds": [{"name": "lettre", "url": feed_server.url(feed_path), "interval": "1s",
                       "rooms": [f"xmpp:{group}"]}], **extra}
    cfg, _ = load_config(write_config(tmp_path / "c.yaml", data))
    return cfg


def answers(inbox: list[Any], group: str) -> list[Any]:
    return [m for m in inbox if m.room == group and m.sender == "Actualités"]


async def test_commands_from_a_moderator_and_refusals_for_a_participant(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    group = prosody.new_room("commandes")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group, language="fr")
    async with XmppMember(prosody, await prosody.register("owner")) as owner, \
            XmppMember(prosody, await prosody.register("guest")) as guest:
        await owner.join(group)          # the first occupant: the room's owner
        await guest.join(group)          # a participant, no affiliation
        async with InProcessBot(cfg):
            await guest.wait_occupant(group, "Actualités")
            guest.say(group, "!news pause lettre")
            refused = await guest.wait_for(lambda inbox: len(answers(inbox, group)) >= 1)
            owner.say(group, "!news pause lettre")
            await owner.wait_for(lambda inbox: len(answers(inbox, group)) >= 2)
            guest.say(group, "!news list")
            listed = await guest.wait_for(lambda inbox: len(answers(inbox, group)) >= 3)
    refusal, paused, listing = answers(listed, group)
    assert refusal.body == "Désolé, seuls les modérateurs de ce salon peuvent faire cela."
    assert paused.body == "Flux « lettre » mis en pause dans ce salon."
    assert listing.body.startswith("Flux de ce salon :") and "lettre" in listing.body
    # Each answer refers to its command (XEP-0461) by the id the room gave it.
    commands = [m for m in refused + listed if m.body.startswith("!news")]
    by_room_id = {m.stanza_id: m.body for m in commands if m.stanza_id}
    assert by_room_id[refusal.reply_to] == "!news pause lettre"
    assert by_room_id[listing.reply_to] == "!news list"


async def test_a_one_to_one_subscription_then_forget_me(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    """Personal subscriptions in a one-to-one chat, as in a Matrix direct message: the
    person's next items arrive there; after "forget me" nothing does and nothing is kept."""
    group = prosody.new_room("publique")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group)
    cfg = replace(cfg, feeds=tuple(replace(feed, public=True) for feed in cfg.feeds))
    assert cfg.xmpp is not None
    bot_jid = cfg.xmpp.jid
    items = make_items(3)
    feed_server.set_feed(feed_path, items[2:])
    async with XmppMember(prosody, await prosody.register("erin")) as erin:
        async with InProcessBot(cfg) as running:
            await bot_online(running, group)
            await first_poll_done(feed_server, feed_path)
            erin.say(bot_jid, "subscribe lettre", group=False)
            await erin.wait_for(lambda inbox: len(private(inbox, bot_jid)) >= 1)
            feed_server.set_feed(feed_path, items[1:])
            await erin.wait_for(lambda inbox: len(private(inbox, bot_jid)) >= 2)
            erin.say(bot_jid, "forget me", group=False)
            await erin.wait_for(lambda inbox: len(private(inbox, bot_jid)) >= 3)
            store = running.app.store
            feed_server.clear_requests(feed_path)
            feed_server.set_feed(feed_path, items)
            async with asyncio.timeout(30):     # two polls: the first saw the new item
                while len(feed_server.requests(feed_path)) < 2:
                    await asyncio.sleep(0.1)
            person = f"xmpp:{erin.account.jid}"
            subscriber = await store.subscriber(person)
            pending = await store.pending_count(person)
    said = private(erin.inbox, bot_jid)
    assert "lettre" in said[0].body
    assert said[1].body.split("\n", 1)[0] == f"*{items[1].title}*"
    assert subscriber is None and pending == 0
    assert len(private(erin.inbox, bot_jid)) == 3


async def first_poll_done(feed_server: FeedServer, feed_path: str) -> None:
    """Until the bot's first poll of the feed is done (its second one began): what the
    feed shows from then on is new, not first sight."""
    async with asyncio.timeout(60):
        while len(feed_server.requests(feed_path)) < 2:
            await asyncio.sleep(0.05)


async def bot_online(running: InProcessBot, group: str) -> None:
    """Until the bot is connected (it joins its group chat then)."""
    async with asyncio.timeout(30):
        while True:
            try:
                await running.app.transport.join_room(f"xmpp:{group}")
                return
            except TemporaryTransportError:
                await asyncio.sleep(0.1)


def private(inbox: list[Any], bot_jid: str) -> list[Any]:
    return [m for m in inbox if m.room == bot_jid and m.sender == bot_jid]


async def test_items_published_while_prosody_is_down_arrive_after_it_returns_in_order(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    group = prosody.new_room("panne")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group)
    items = make_items(4)
    feed_server.set_feed(feed_path, items[3:])
    owner_account = await prosody.register("owner")
    async with XmppMember(prosody, owner_account) as owner:
        await owner.join(group)
        # A persistent room: it outlives its occupants and the server's restart.
        await owner.configure(group, {"muc#roomconfig_persistentroom": "1"})
    async with InProcessBot(cfg) as running:
        await bot_online(running, group)
        await first_poll_done(feed_server, feed_path)
        store = running.app.store
        await prosody.stop()
        feed_server.set_feed(feed_path, items)      # three new items while it is down
        room = f"xmpp:{group}"
        async with asyncio.timeout(60):
            while await store.pending_count(room) < 3:
                await asyncio.sleep(0.1)
        await prosody.start()
        async with asyncio.timeout(90):
            while await store.pending_count(room):
                await asyncio.sleep(0.2)
    async with XmppMember(prosody, owner_account) as owner:
        archive = [m for m in await owner.archive(group) if m.sender == "Actualités"]
    assert titles([m.body for m in archive]) == [f"*{i.title}*" for i in reversed(items[:3])]


async def test_kill_9_during_xmpp_sends_posts_each_item_once_in_order(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path) -> None:
    """The crash matrix of Matrix, on XMPP: a bot process killed -9 at random points while
    it sends into two group chats, restarted each time; in the end each chat's archive has
    every item once, in order (no server-side deduplication helps here)."""
    groups = [prosody.new_room(f"crash{i}") for i in range(2)]
    bot_xmpp = await prosody.register("newsbot")
    all_items = make_items(10 * 2 + 1)          # newest first
    published = 1
    feed_server.set_feed(feed_path, all_items[-published:])
    config_path = write_config(tmp_path / "c.yaml", {
        "xmpp": xmpp_section(prosody, bot_xmpp), "storage": {"path": str(tmp_path / "s")},
        "fetch": {"allow_private_networks": True},
        "feeds": [{"name": "news", "url": feed_server.url(feed_path), "interval": "1s",
                   "backfill": 1, "max_per_poll": 10,
                   "rooms": [f"xmpp:{group}" for group in groups]}]})
    nobody = RegisteredUser("@nobody:localhost", "", "", "", "nobody")   # no Matrix here
    log_path = tmp_path / "bot.log"
    async with XmppMember(prosody, await prosody.register("owner")) as owner:
        for group in groups:
            await owner.join(group)
        process = BotProcess(config_path, nobody, log_path)
        await process.start()
        await owner.wait_for(lambda inbox: all(
            answers(inbox, group) for group in groups), timeout=60)
        assert await process.terminate() == 0
        rng = random.Random(20261130)
        # As for Matrix (tests/test_crash.py): each next process imports while the current
        # one works, and each is killed a random time after it read the new items.
        upcoming = BotProcess(config_path, nobody, log_path)
        await upcoming.prepare()
        try:
            for cycle in range(10):
                process, upcoming = upcoming, BotProcess(config_path, nobody, log_path)
                await process.start()
                await upcoming.prepare()
                async with asyncio.timeout(60):
                    while process.log().count("watching ") < cycle + 2:
                        await asyncio.sleep(0.05)
                published += 2
                since = time.time()
                feed_server.set_feed(feed_path, all_items[-published:])
                await fetched_since(feed_server, feed_path, since)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                process.kill9()
                await process.wait()
        except BaseException:
            await upcoming.discard()
            raise
        process = upcoming
        await process.start()
        try:
            async with asyncio.timeout(60):     # the last process finishes what is left
                while process.log().count("watching ") < 12:
                    await asyncio.sleep(0.05)
            store = SqliteStore.open(tmp_path / "s")
            try:
                async with asyncio.timeout(90):
                    while True:
                        got = [len(answers(await owner.archive(g), g)) for g in groups]
                        if got == [published] * 2 and not await store.pending_count():
                            break
                        await asyncio.sleep(0.5)
            finally:
                store.close()
        finally:
            assert await process.terminate() == 0
        expected = [f"*{item.title}*" for item in reversed(all_items[-published:])]
        for group in groups:
            archived = answers(await owner.archive(group), group)
            assert titles([m.body for m in archived]) == expected, f"{group}: duplicates"


async def room_report(running: InProcessBot) -> Any:
    """The announcement room's report, once the bot prepared it at start."""
    async with asyncio.timeout(30):
        while not running.app.rooms.reports:
            await asyncio.sleep(0.05)
    return running.app.rooms.reports[0]


async def room_features(member: XmppMember, room: str) -> tuple[set[str], str]:
    info = await member.client.plugin["xep_0030"].get_info(jid=JID(room), timeout=15)
    identities = info["disco_info"]["identities"]
    name = next((i[3] for i in identities if i[0] == "conference"), "") or ""
    return set(info["disco_info"]["features"]), str(name)


async def test_an_announcement_group_chat_is_created_as_declared_and_drift_corrected(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    group = prosody.new_room("annonces")
    moderator = await prosody.register("moderatrice")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group, rooms=[{
        "alias": f"xmpp:{group}", "name": "Annonces InterHop", "topic": "Les nouvelles",
        "join_rule": "public", "topic_latest": True,
        "moderators": [f"xmpp:{moderator.jid}"]}])
    items = make_items(2)
    feed_server.set_feed(feed_path, items[1:])
    async with XmppMember(prosody, await prosody.register("visiteur")) as visitor:
        async with InProcessBot(cfg) as running:
            report = await room_report(running)
            assert report.created and not report.problems, report
            features, name = await room_features(visitor, group)
            assert {"muc_persistent", "muc_public", "muc_open", "muc_moderated"} <= features
            assert name == "Annonces InterHop"
            await first_poll_done(feed_server, feed_path)
            await visitor.join(group)
            muc = visitor.client.plugin["xep_0045"]
            assert muc.get_jid_property(JID(group), visitor.nick, "role") == "visitor"
            assert "moderatrice" in " ".join(
                str(j) for j in await running.app.transport.on(f"xmpp:{group}").client
                .plugin["xep_0045"].get_affiliation_list(JID(group), "admin"))
            feed_server.set_feed(feed_path, items)
            await visitor.wait_for(lambda inbox: len(answers(inbox, group)) >= 1)
            async with asyncio.timeout(30):     # the subject follows the latest issue
                while items[0].title not in running.app.transport.on(
                        f"xmpp:{group}").subject_of(f"xmpp:{group}"):
                    await asyncio.sleep(0.1)
            subject = running.app.transport.on(f"xmpp:{group}").subject_of(f"xmpp:{group}")
            assert subject.startswith("Les nouvelles")
    # Someone with the owner's rights closes the room and renames it: at the next start,
    # the bot restores what the configuration says, and says so in the log.
    assert cfg.xmpp is not None and cfg.xmpp.password is not None
    owner = XmppAccount(cfg.xmpp.jid, cfg.xmpp.password)
    async with XmppMember(prosody, owner, nick="someone") as hand:
        await hand.join(group)
        await hand.configure(group, {"muc#roomconfig_membersonly": "1",
                                     "muc#roomconfig_roomname": "Autre nom"})
    caplog.clear()
    async with InProcessBot(cfg) as running:
        report = await room_report(running)
        async with XmppMember(prosody, await prosody.register("lecteur")) as reader:
            features, name = await room_features(reader, group)
    assert not report.created and not report.problems
    assert any("members only" in c for c in report.corrections)
    assert any("name" in c for c in report.corrections)
    assert "muc_open" in features and name == "Annonces InterHop"
    assert any("(restored)" in r.message and "members only" in r.message
               for r in caplog.records)


async def test_pictures_travel_as_out_of_band_urls_and_the_last_item_is_corrected(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A picture that passes the checks goes as XEP-0066 data, a tracking pixel does not;
    a correction of the bot's last message is an XEP-0308 correction of it, and one of an
    older message is not sent (clients apply corrections to the last message only)."""
    from tests.test_images_edits import PIXEL_GIF, item, png, serve_bytes
    caplog.set_level(logging.INFO, logger="bot.transport.xmpp")
    group = prosody.new_room("images")
    picture_url = serve_bytes(feed_server, feed_path + "/pic.png", png(800, 400), "image/png")
    pixel_url = serve_bytes(feed_server, feed_path + "/pixel.gif", PIXEL_GIF, "image/gif")
    first = [item(2, summary=f'<p>Avec un pixel <img src="{pixel_url}"></p>'),
             item(1, summary=f'<p>Illustré <img src="{picture_url}" alt="x"></p>')]
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group)
    cfg = replace(cfg, feeds=tuple(replace(f, backfill=2) for f in cfg.feeds))
    feed_server.set_feed(feed_path, first)
    async with XmppMember(prosody, await prosody.register("bob")) as bob:
        await bob.join(group)
        async with InProcessBot(cfg):
            posted = answers(await bob.wait_for(
                lambda inbox: len(answers(inbox, group)) >= 2), group)
            illustrated, with_pixel = posted
            assert illustrated.oob == picture_url and with_pixel.oob == ""
            # Item 2 is the bot's last message: its correction is applied in place.
            feed_server.set_feed(feed_path, [item(2, title="Numéro 2 (corrigé)"), first[1]])
            corrected = answers(await bob.wait_for(
                lambda inbox: len(answers(inbox, group)) >= 3), group)[2]
            assert corrected.replaces == with_pixel.origin_id
            assert corrected.body.startswith("*Numéro 2 (corrigé)*")
            # Item 1 is not the last one any more: no correction a client would misplace.
            feed_server.set_feed(feed_path, [item(2, title="Numéro 2 (corrigé)"),
                                             item(1, title="Numéro 1 (corrigé)")])
            async with asyncio.timeout(30):
                while not any("no longer the bot's last message" in r.message
                              for r in caplog.records):
                    await asyncio.sleep(0.1)
    assert len(answers(bob.inbox, group)) == 3


async def test_a_kicked_bot_waits_says_so_once_and_resumes_when_invited_back(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    group = prosody.new_room("expulsion")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group)
    assert cfg.xmpp is not None
    items = make_items(3)
    feed_server.set_feed(feed_path, items[2:])
    async with XmppMember(prosody, await prosody.register("owner")) as owner:
        await owner.join(group)
        async with InProcessBot(cfg) as running:
            await owner.wait_occupant(group, "Actualités")
            await first_poll_done(feed_server, feed_path)
            await owner.set_role(group, "Actualités", "none")      # kicked
            feed_server.set_feed(feed_path, items[1:])
            store, room = running.app.store, f"xmpp:{group}"
            async with asyncio.timeout(30):
                while not await store.pending_count(room):
                    await asyncio.sleep(0.1)
            feed_server.set_feed(feed_path, items)
            async with asyncio.timeout(30):
                while await store.pending_count(room) < 2:
                    await asyncio.sleep(0.1)
            kicked = [r for r in caplog.records if "was kicked" in r.message]
            assert len(kicked) == 1
            assert not answers(owner.inbox, group)
            owner.client.plugin["xep_0045"].invite(JID(group), JID(cfg.xmpp.jid))
            inbox = await owner.wait_for(lambda inbox: len(answers(inbox, group)) >= 2)
    assert titles([m.body for m in answers(inbox, group)]) == \
        [f"*{i.title}*" for i in reversed(items[:2])]


@pytest.mark.parametrize("open_room", [True, False], ids=["open", "members-only"])
async def test_archive_in_a_one_to_one_chat_follows_who_may_read_the_group_chat(
        prosody: ProsodyServer, feed_server: FeedServer, feed_path: str, tmp_path: Path,
        open_room: bool) -> None:
    """The archive's privacy rule, on XMPP: the issues of a group chat anyone may join are
    anyone's to read; those of a members-only one only its members'."""
    group = prosody.new_room("archives")
    cfg = await xmpp_bot(prosody, feed_server, feed_path, tmp_path, group, rooms=[{
        "alias": f"xmpp:{group}", "join_rule": "public" if open_room else "invite"}])
    cfg = replace(cfg, feeds=tuple(replace(f, backfill=1) for f in cfg.feeds))
    assert cfg.xmpp is not None
    items = make_items(1)
    feed_server.set_feed(feed_path, items)
    async with XmppMember(prosody, await prosody.register("curieuse")) as reader, \
            InProcessBot(cfg) as running:
        await room_report(running)
        async with asyncio.timeout(30):      # the issue was posted (and so recorded)
            while await running.app.store.pending_count(f"xmpp:{group}") or \
                    not await running.app.store.latest(["lettre"], 1):
                await asyncio.sleep(0.1)
        reader.say(cfg.xmpp.jid, "archive", group=False)
        said = private(await reader.wait_for(
            lambda inbox: bool(private(inbox, cfg.xmpp.jid))), cfg.xmpp.jid)
    assert (items[0].title in said[0].body) is open_room, said[0].body
