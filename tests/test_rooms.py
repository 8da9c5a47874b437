"""Announcement rooms the bot owns (the rooms: section): created as declared, drift
corrected at start, members may react but not post, the latest issue pinned and shown in
the topic. Checked against a real Synapse, from members' own raw clients."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio

from bot.config import Config, RoomConfig, load_config_text
from bot.errors import ConfigError
from bot.model import Delivery, DeliveryKind, Message
from bot.rooms import (
    RoomManager,
    RoomReport,
    RoomState,
    blocked,
    expected_topic,
    join_topic,
    plan,
    split_topic,
)
from bot.store import NewDelivery, PollOutcome, SqliteStore, Store
from bot.transport.base import Transport
from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MatrixAPIError,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)
from tests.support.e2emember import ENCRYPTION_STATE
from tests.support.synapse import matrix_request

# --- pure parts: the plan and the topic ------------------------------------------------

BOT = "@newsbot:example.org"


def state(*events: tuple[str, str, dict[str, Any]], version: str = "12",
          creator: str = "@alice:example.org") -> RoomState:
    create = {"type": "m.room.create", "state_key": "", "sender": creator,
              "content": {"room_version": version}}
    return RoomState.parse([create, *({"type": t, "state_key": k, "content": c}
                                      for t, k, c in events)])


def settled(room: RoomConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """The state of a room that matches its declaration (power levels aside)."""
    return [("m.room.name", "", {"name": room.name}), ("m.room.topic", "", {"topic": room.topic}),
            ("m.room.join_rules", "", {"join_rule": room.join_rule}),
            ("m.room.history_visibility", "", {"history_visibility": room.history}),
            ("m.room.canonical_alias", "", {"alias": room.alias})]


def test_plan_enforces_announcement_rules_and_keeps_people_promoted_by_hand() -> None:
    room = RoomConfig("#news:example.org", name="News", topic="T",
                      moderators=("@mod:example.org", "@boss:example.org", "@alice:example.org"))
    levels = {"users": {BOT: 100, "@boss:example.org": 100, "@carol:example.org": 75},
              "users_default": 0, "events_default": 0, "state_default": 50,
              "events": {"m.room.encrypted": 0, "m.room.name": 50}}
    corrections, problems = plan(room, state(*settled(room),
                                             ("m.room.power_levels", "", levels)), BOT)
    assert problems == []
    [power] = corrections
    content = power.content
    assert content["events_default"] == 50 and content["users_default"] == 0
    assert content["events"] == {"m.room.encrypted": 50, "m.room.name": 50, "m.reaction": 0,
                                 "m.room.redaction": 0}
    assert content["invite"] == 0           # a public room: anyone may invite
    # Kept: the boss stays at 100, carol at 75; the mod is raised; the v12 creator
    # (alice) is never put in the users map, where Synapse would refuse her.
    assert content["users"] == {BOT: 100, "@boss:example.org": 100, "@carol:example.org": 75,
                                "@mod:example.org": 50}
    assert "power level events_default changed from 0 to 50" in power.changes
    assert blocked(power, state(("m.room.power_levels", "", levels)), BOT) is None
    # Nothing left to do once applied.
    assert plan(room, state(*settled(room), ("m.room.power_levels", "", content)), BOT) == \
        ([], [])


def test_plan_reports_what_it_cannot_do() -> None:
    room = RoomConfig("#news:example.org", topic="New", encrypted=False)
    levels = {"users": {BOT: 10}, "events_default": 50, "state_default": 50,
              "events": {"m.reaction": 0, "m.room.redaction": 0}, "invite": 0}
    current = state(("m.room.topic", "", {"topic": "Old"}),
                    ("m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2"}),
                    ("m.room.join_rules", "", {"join_rule": "public"}),
                    ("m.room.history_visibility", "", {"history_visibility": "shared"}),
                    ("m.room.canonical_alias", "", {"alias": room.alias}),
                    ("m.room.power_levels", "", levels))
    corrections, problems = plan(room, current, BOT)
    assert [p for p in problems if "can never be turned off" in p]
    [topic] = corrections
    assert topic.changes == ('topic changed from "Old" to "New"',)
    assert blocked(topic, current, BOT) == (
        'cannot correct: topic changed from "Old" to "New": newsbot has power level 10 in '
        "the room, 50 is needed")
    # A creator outranks every level from room version 12 on, not before.
    assert blocked(topic, state(("m.room.power_levels", "", levels), creator=BOT), BOT) is None
    assert blocked(topic, state(("m.room.power_levels", "", levels), creator=BOT,
                                version="11"), BOT) is not None


def test_plan_restores_the_main_address_and_keeps_the_former_one() -> None:
    room = RoomConfig("#news:example.org", join_rule="invite", history="joined")
    current = [*settled(room)[2:4], ("m.room.canonical_alias", "", {"alias": "#old:example.org"})]
    corrections, _ = plan(room, state(*current), BOT)
    assert [(c.event_type, c.content) for c in corrections][0] == (
        "m.room.canonical_alias", {"alias": room.alias, "alt_aliases": ["#old:example.org"]})
    # No power-levels event at all: the announcement rules are written in full, and a
    # creator before room version 12 keeps the 100 it implicitly held.
    power = plan(room, state(*current, version="10"), BOT)[0][-1]
    assert power.content["users"] == {"@alice:example.org": 100}
    assert power.content["invite"] == 50     # not a public room


def test_topic_keeps_its_latest_issue_part() -> None:
    room = RoomConfig("#n:x", topic="Les nouvelles", topic_latest=True)
    assert split_topic("Les nouvelles — Dernier numéro : Titre http://l") == \
        ("Les nouvelles", "Dernier numéro : Titre http://l")
    assert split_topic("Latest: X") == ("", "Latest: X")
    assert split_topic("Plain — not latest") == ("Plain — not latest", None)
    assert expected_topic(room, "Hacked — Latest: X http://x") == "Les nouvelles — Latest: X http://x"
    assert expected_topic(room, "Hacked") == "Les nouvelles"
    assert expected_topic(RoomConfig("#n:x", topic="T"), "T — Latest: X") == "T"
    assert expected_topic(RoomConfig("#n:x"), "anything") is None
    assert join_topic("", "Latest: X") == "Latest: X"


CONFIG = """\
matrix:
  homeserver: https://matrix.example.org
  user_id: "@newsbot:example.org"
  access_token: syt_bmV3c2JvdA_abcdefghijklmnop_0a1b2c
  device_id: DEV
storage:
  path: data
feeds:
  - name: news
    url: https://interhop.org/feed.xml
    rooms: ["#actus:example.org"]
rooms:
"""


def rooms_config(text: str) -> tuple[Config, list[str]]:
    return load_config_text(CONFIG + textwrap.dedent(text), source="c.yaml",
                            base_dir=Path("/srv"), environ={})


def test_config_rooms_section() -> None:
    config, warnings = rooms_config("""\
      - alias: actus
        name: Actualités
        topic: Les nouvelles d'InterHop
        join_rule: knock
        history: world_readable
        directory: true
        space: interhop
        topic_latest: true
        moderators: ["@alice:example.org"]
    """)
    assert config.rooms == (RoomConfig(
        "#actus:example.org", name="Actualités", topic="Les nouvelles d'InterHop",
        join_rule="knock", history="world_readable", directory=True,
        space="#interhop:example.org", topic_latest=True,
        moderators=("@alice:example.org",)),)
    assert warnings == []
    with pytest.raises(ConfigError) as info:
        rooms_config("""\
          - alias: "!notanalias:example.org"
            avatar: https://example.org/logo.png
            history: forever
            encrypted: maybe
            moderators: [alice]
          - alias: "#actus:example.org"
          - {alias: actus}
        """)
    assert info.value.problems == [
        'c.yaml:13: rooms[0].alias: "!notanalias:example.org" is not a room alias '
        "(#news:example.org) or its localpart (news)",
        'c.yaml:14: rooms[0].avatar: "https://example.org/logo.png" is not an mxc:// URI '
        "(upload the image to the homeserver first)",
        'c.yaml:15: rooms[0].history: "forever" is not one of: shared, world_readable, '
        "joined, invited",
        'c.yaml:16: rooms[0].encrypted: "maybe" is not true or false',
        'c.yaml:17: rooms[0].moderators[0]: "alice" is not a Matrix user id like '
        "@alice:example.org or an XMPP address like xmpp:alice@example.org",
        'c.yaml:19: rooms[2].alias: "#actus:example.org" is already declared by rooms[1]',
    ]
    _, warnings = rooms_config("""\
      - alias: "#elsewhere:other.org"
    """)
    assert warnings == [
        "c.yaml:13: rooms[0].alias: newsbot can only create rooms on its own server "
        "(example.org): #elsewhere:other.org must exist already, with newsbot in it",
        "c.yaml:13: rooms[0]: no feed posts into #elsewhere:other.org (name it in a "
        "feed's rooms)"]


# --- against a real Synapse --------------------------------------------------------------


class PublishingSynapse(SynapseServer):
    """Synapse lets nobody publish rooms in its directory by default; operators who want
    announcement rooms listed allow it (room_list_publication_rules)."""

    def config(self) -> dict[str, object]:
        return {**super().config(), "room_list_publication_rules": [{"action": "allow"}]}


@pytest_asyncio.fixture(scope="module")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    """This module's own Synapse (the conftest's new_user and member use it)."""
    async with PublishingSynapse(tmp_path_factory.mktemp("synapse-rooms")) as server:
        yield server


async def api(synapse: SynapseServer, user: RegisteredUser, method: str, path: str,
              body: object | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        return await matrix_request(session, method,
                                    f"{synapse.base_url}/_matrix/client/v3{path}",
                                    access_token=user.access_token, json_body=body)


def q(value: str) -> str:
    return quote(value, safe="")


async def state_of(client: MemberClient, room_id: str) -> dict[tuple[str, str], Any]:
    return {(e["type"], e["state_key"]): e["content"] for e in await client.room_state(room_id)}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def prepared(running: InProcessBot, count: int) -> list[RoomReport]:
    """The start-up reports, once every declared room was handled."""
    async def done() -> bool:
        app = running.app
        return app is not None and len(app.rooms.reports) == count
    await eventually(done, timeout=30)
    assert running.app is not None
    return running.app.rooms.reports


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def scene_config(synapse: SynapseServer, bot: RegisteredUser, tmp_path: Path,
                 rooms: list[dict[str, Any]], feed_url: str, posts_into: list[str],
                 **extra: Any) -> Config:
    return load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": feed_url, "rooms": posts_into, "backfill": 1}],
        rooms=rooms, **extra)), bot)


async def test_declared_rooms_are_created_as_members_see_them(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot, mod_user = await new_user("newsbot"), await new_user("mod")
    alice = await member(await new_user("alice"))
    public, private = unique("actus"), unique("bureau")
    public_alias, private_alias = f"#{public}:localhost", f"#{private}:localhost"
    feed_server.set_feed(feed_path, make_items(1))
    cfg = scene_config(synapse, bot, tmp_path, [
        {"alias": public, "name": "Actualités InterHop", "topic": "Les nouvelles",
         "history": "world_readable", "directory": True, "moderators": [mod_user.user_id]},
        {"alias": private_alias, "name": "Bureau", "topic": "Entre nous",
         "join_rule": "invite", "history": "joined", "encrypted": True},
    ], feed_server.url(feed_path), [public_alias])
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg) as running:
        reports = await prepared(running, 2)
        assert [(r.created, r.problems) for r in reports] == [(True, []), (True, [])]
        room_id = await alice.join(public_alias)
        assert room_id == await alice.resolve_alias(public_alias) == reports[0].room_id
        seen = await state_of(alice, room_id)
        assert seen[("m.room.name", "")]["name"] == "Actualités InterHop"
        assert seen[("m.room.topic", "")]["topic"] == "Les nouvelles"
        assert seen[("m.room.join_rules", "")]["join_rule"] == "public"
        assert seen[("m.room.history_visibility", "")]["history_visibility"] == \
            "world_readable"
        assert ("m.room.encryption", "") not in seen
        assert seen[("m.room.canonical_alias", "")]["alias"] == public_alias
        assert seen[("m.room.create", "")]["room_version"] == "12"
        levels = seen[("m.room.power_levels", "")]
        assert (levels["events_default"], levels["users_default"], levels["state_default"],
                levels["redact"], levels["invite"]) == (50, 0, 50, 50, 0)
        assert levels["events"]["m.reaction"] == 0
        # The bot created it: in room version 12 it outranks everyone without an entry.
        assert levels["users"] == {mod_user.user_id: 50}

        listed = await api(synapse, alice.user, "GET", "/publicRooms")
        listed_ids = [r["room_id"] for r in listed["chunk"]]
        assert room_id in listed_ids and reports[1].room_id not in listed_ids
        assert (await api(synapse, alice.user, "GET", f"/directory/list/room/{q(room_id)}")
                )["visibility"] == "public"

        # The invite-only room: nobody gets in uninvited; what its members will see.
        private_id = reports[1].room_id
        assert private_id is not None
        with pytest.raises(MatrixAPIError) as refused:
            await alice.join(private_alias)
        assert refused.value.status == 403
        async with MemberClient(synapse.base_url, bot) as bot_view:
            private_state = await state_of(bot_view, private_id)
        assert private_state[("m.room.encryption", "")] == ENCRYPTION_STATE["content"]
        assert private_state[("m.room.join_rules", "")]["join_rule"] == "invite"
        assert private_state[("m.room.history_visibility", "")]["history_visibility"] == \
            "joined"
        assert private_state[("m.room.power_levels", "")]["invite"] == 50
        assert (await api(synapse, alice.user, "GET", f"/directory/list/room/{q(private_id)}")
                )["visibility"] == "private"
        # The feed posts into the room by its alias.
        await alice.wait_for_messages(room_id, 1, sender=bot.user_id)
    logs = [r.getMessage() for r in caplog.records if r.name == "bot.rooms"]
    assert f"room {public_alias}: created ({room_id}): join rule public, history " \
           "world_readable, not encrypted, listed in the directory, 1 moderator(s)" in logs
    assert not [r for r in caplog.records if r.name == "bot.rooms" and r.levelno >= logging.WARNING]


async def test_members_react_only_moderators_post_and_the_pin_and_topic_follow_the_news(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice, mod = await member(await new_user("alice")), await member(await new_user("mod"))
    alias = f"#{unique('lettre')}:localhost"
    items = make_items(1)
    feed_server.set_feed(feed_path, items)
    cfg = scene_config(synapse, bot, tmp_path, [
        {"alias": alias, "name": "Lettre", "topic": "Les nouvelles", "topic_latest": True,
         "moderators": [mod.user_id]}], feed_server.url(feed_path), [alias], language="fr")

    async def pinned(room_id: str) -> list[str]:
        content = (await state_of(alice, room_id)).get(("m.room.pinned_events", ""), {})
        return list(content.get("pinned", []))

    async def topic(room_id: str) -> str:
        return str((await state_of(alice, room_id))[("m.room.topic", "")]["topic"])

    async with InProcessBot(cfg) as running:
        await prepared(running, 1)
        room_id = await alice.join(alias)
        await mod.join(alias)
        [first] = await alice.wait_for_messages(room_id, 1, sender=bot.user_id)
        await eventually(lambda: _equals(pinned(room_id), [first["event_id"]]))
        await eventually(lambda: _equals(topic(room_id), f"Les nouvelles — Dernier numéro : "
                                                         f"{items[0].title} {items[0].link}"))

        # A member may react, and take the reaction back, but not post.
        with pytest.raises(MatrixAPIError) as refused:
            await alice.send_text(room_id, "bonjour")
        assert refused.value.status == 403 and refused.value.errcode == "M_FORBIDDEN"
        reaction = await alice.send_event(room_id, "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": first["event_id"], "key": "👍"}})
        await api(synapse, alice.user, "PUT",
                  f"/rooms/{q(room_id)}/redact/{q(reaction)}/{uuid.uuid4().hex}", {})
        # A moderator posts, and pins her own message next to the bot's.
        note = await mod.send_text(room_id, "Bienvenue !")
        await mod.send_state(room_id, "m.room.pinned_events",
                             {"pinned": [first["event_id"], note]})

        # Two new issues at once: the newest is pinned in place of the bot's earlier pin;
        # the moderator's pin stays.
        newer = make_items(3)[:2]
        feed_server.set_feed(feed_path, newer + items)
        seen = await alice.wait_for_messages(room_id, 3, sender=bot.user_id)
        newest = seen[-1]
        await eventually(lambda: _equals(pinned(room_id), [note, newest["event_id"]]))
        await eventually(lambda: _equals(topic(room_id), f"Les nouvelles — Dernier numéro : "
                                                         f"{newer[0].title} {newer[0].link}"))


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_drift_is_corrected_at_restart_and_logged(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot = await new_user("newsbot")
    mod = await member(await new_user("mod"))
    alias = f"#{unique('veille')}:localhost"
    feed_server.set_feed(feed_path, make_items(1))
    cfg = scene_config(synapse, bot, tmp_path, [
        {"alias": alias, "name": "Veille", "topic": "La veille", "directory": True,
         "moderators": [mod.user_id]}], feed_server.url(feed_path), [alias])
    async with InProcessBot(cfg) as running:
        [report] = await prepared(running, 1)
    room_id = report.room_id
    assert room_id is not None
    # A moderator changes what she may change; the bot is stopped.
    await mod.join(alias)
    await mod.send_state(room_id, "m.room.topic", {"topic": "Sujet libre"})
    await mod.send_state(room_id, "m.room.join_rules", {"join_rule": "invite"})
    await api(synapse, mod.user, "PUT", f"/directory/list/room/{q(room_id)}",
              {"visibility": "private"})

    caplog.clear()
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    async with InProcessBot(cfg) as running:
        [report] = await prepared(running, 1)
        restart = time.monotonic() - started
    assert not report.created and report.problems == []
    seen = await state_of(mod, room_id)
    assert seen[("m.room.topic", "")]["topic"] == "La veille"
    assert seen[("m.room.join_rules", "")]["join_rule"] == "public"
    assert (await api(synapse, mod.user, "GET", f"/directory/list/room/{q(room_id)}")
            )["visibility"] == "public"
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "bot.rooms" and r.levelno == logging.WARNING]
    assert warnings == [
        f'room {alias}: topic changed from "Sujet libre" to "La veille" (restored)',
        f'room {alias}: join rule changed from "invite" to "public" (restored)',
        f"room {alias}: directory listing changed from unlisted to listed (restored)"]
    assert restart < 10, restart


async def test_existing_rooms_are_adopted_and_what_cannot_be_corrected_is_reported(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bot, carol, mod = await new_user("newsbot"), await new_user("carol"), await new_user("mod")
    alice = await member(await new_user("alice"))
    adopted, locked = unique("adopted"), unique("locked")
    # People made these rooms: newsbot is invited with power 100 in one, 0 in the other.
    adopted_id = await alice.create_room(
        name="Adoptée", alias_localpart=adopted, invite=[bot.user_id],
        power_level_content_override={"users": {bot.user_id: 100, carol.user_id: 75}})
    await alice.send_state(adopted_id, "m.room.topic", {"topic": "Ancien sujet"})
    locked_id = await alice.create_room(name="Verrouillée", alias_localpart=locked,
                                        invite=[bot.user_id], initial_state=[ENCRYPTION_STATE])
    await alice.send_state(locked_id, "m.room.topic", {"topic": "Ancien sujet"})
    feed_server.set_feed(feed_path, make_items(1))
    cfg = scene_config(synapse, bot, tmp_path, [
        {"alias": adopted, "topic": "Nouveau sujet", "join_rule": "knock", "history": "joined",
         "moderators": [mod.user_id]},
        {"alias": locked, "topic": "Nouveau sujet"},
        {"alias": "#ailleurs:elsewhere.example"},
    ], feed_server.url(feed_path), [f"#{adopted}:localhost"])
    caplog.set_level(logging.INFO)
    async with InProcessBot(cfg) as running:
        reports = await prepared(running, 3)
        await alice.wait_for_messages(adopted_id, 1, sender=bot.user_id)   # still posting
    assert [r.created for r in reports] == [False, False, False]
    assert reports[0].problems == []
    seen = await state_of(alice, adopted_id)
    assert seen[("m.room.topic", "")]["topic"] == "Nouveau sujet"
    assert seen[("m.room.join_rules", "")]["join_rule"] == "knock"
    assert seen[("m.room.history_visibility", "")]["history_visibility"] == "joined"
    levels = seen[("m.room.power_levels", "")]
    assert (levels["events_default"], levels["invite"], levels["events"]["m.reaction"]) == \
        (50, 50, 0)
    # Nobody demoted: alice (the creator) outranks all, carol keeps 75, the bot 100.
    assert levels["users"] == {bot.user_id: 100, carol.user_id: 75, mod.user_id: 50}
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "bot.rooms" and r.levelno == logging.WARNING]
    assert f'room #{adopted}:localhost: topic changed from "Ancien sujet" to "Nouveau sujet" ' \
           "(restored)" in warnings

    # The locked room: too little power, and encryption that can never be turned off.
    assert (await state_of(alice, locked_id))[("m.room.topic", "")]["topic"] == "Ancien sujet"
    problems = reports[1].problems
    assert any("encryption can never be turned off" in p for p in problems), problems
    assert any(p.startswith('cannot correct: topic changed from "Ancien sujet" to "Nouveau '
                            'sujet": newsbot has power level 0 in the room, 50 is needed')
               for p in problems), problems
    assert reports[2].problems, reports[2]
    errors = [r.getMessage() for r in caplog.records
              if r.name == "bot.rooms" and r.levelno == logging.ERROR]
    assert len(errors) == len(problems) + len(reports[2].problems)


async def test_rooms_join_their_space(
        synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
        new_user: NewUserFactory, member: MemberFactory, tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    space, closed = unique("interhop"), unique("ferme")
    # The bot's own space, and someone else's that newsbot may not enter.
    space_id = (await api(synapse, bot, "POST", "/createRoom", {
        "name": "InterHop", "room_alias_name": space, "preset": "public_chat",
        "creation_content": {"type": "m.space"}}))["room_id"]
    await api(synapse, alice.user, "POST", "/createRoom", {
        "name": "Fermé", "room_alias_name": closed, "preset": "private_chat",
        "creation_content": {"type": "m.space"}})
    child, orphan = unique("actus"), unique("orphelin")
    feed_server.set_feed(feed_path, make_items(1))
    cfg = scene_config(synapse, bot, tmp_path, [
        {"alias": child, "space": space},
        {"alias": orphan, "space": f"#{closed}:localhost"},
    ], feed_server.url(feed_path), [f"#{child}:localhost"])
    async with InProcessBot(cfg) as running:
        reports = await prepared(running, 2)
    room_id = reports[0].room_id
    assert room_id is not None and reports[0].problems == []
    await alice.join(space_id)
    space_state = await state_of(alice, space_id)
    assert space_state[("m.space.child", room_id)] == {"via": ["localhost"]}
    room_state = await state_of(alice, await alice.join(f"#{child}:localhost"))
    assert room_state[("m.space.parent", space_id)] == {"via": ["localhost"], "canonical": True}
    # The room whose space is closed to newsbot exists all the same; the space is reported.
    assert reports[1].created and reports[1].room_id
    assert [p for p in reports[1].problems if p.startswith("newsbot cannot enter its space")]


async def test_without_rooms_section_no_room_is_touched(tmp_path: Path) -> None:
    config, _ = load_config_text(CONFIG.replace("rooms:\n", ""), base_dir=tmp_path,
                                 environ={})
    assert config.rooms == ()
    manager = RoomManager(config, cast(Transport, _NoRooms()), cast(Store, None))
    assert await manager.prepare() == []
    delivery = Delivery("k", "news", "entry", "#actus:example.org", {"msgtype": "m.notice"})
    await manager.on_delivered(delivery, "!room", "$event")


class _NoRooms:
    login_generation = 0

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected transport call: {name}")


class _PinRecorder(_NoRooms):
    """Two pins already: one a person's, one newsbot's earlier issue."""

    def __init__(self) -> None:
        self.pinned: list[list[str]] = []

    async def state_event(self, room_id: str, event_type: str,
                          state_key: str = "") -> dict[str, Any] | None:
        assert event_type == "m.room.pinned_events"
        return {"pinned": ["$human", "$earlier"]}

    async def room_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return {"sender": BOT if event_id == "$earlier" else "@alice:example.org"}

    async def set_state(self, room_id: str, event_type: str, content: dict[str, Any],
                        state_key: str = "") -> str:
        self.pinned.append(content["pinned"])
        return "$state"


async def test_only_the_newest_feed_item_is_pinned(tmp_path: Path) -> None:
    config, _ = rooms_config("  - alias: actus\n")
    transport = _PinRecorder()
    store = SqliteStore.open(tmp_path)
    manager = RoomManager(config, cast(Transport, transport), store)
    room = "#actus:example.org"

    def delivery(entry_id: str, kind: DeliveryKind = "item", **content: Any) -> Delivery:
        return Delivery("k", "news", entry_id, room, {"msgtype": "m.notice", **content},
                        kind=kind, subject=entry_id)

    # Not issues: a notice of newsbot's, an edit of an earlier item, a separate image.
    await manager.on_delivered(delivery("newsbot:gone:https://x/feed", "notice"), "!r", "$1")
    await manager.on_delivered(delivery("e1", "edit"), "!r", "$2")
    await manager.on_delivered(delivery("e1", "image", msgtype="m.image"), "!r", "$3")
    # A newer item is about to be posted: it will be the one pinned.
    await store.ensure_feed("news", "https://x/feed")
    await store.record_poll(PollOutcome(
        feed="news", now=1.0, next_fetch=2.0, etag=None, last_modified=None, body_hash=None,
        title=None, new_url=None, seen_entry_ids=["e2"],
        deliveries=[NewDelivery("e2", room, Message("e2", "e2"))]))
    await manager.on_delivered(delivery("e1"), "!r", "$4")
    assert transport.pinned == []
    pending = await store.next_pending(room)
    assert pending is not None
    await store.mark_sent(pending.key, "$5", 3.0)
    await manager.on_delivered(delivery("e2"), "!r", "$5")
    assert transport.pinned == [["$human", "$5"]]
    store.close()
