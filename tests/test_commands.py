"""Room commands against a real Synapse: a moderator's and a member's own clients talk to
the bot and read its answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.botkit import BotRunner, InProcessBot, bot_config, load, write_config
from tests.support import (
    FeedServer,
    MemberClient,
    MemberFactory,
    NewUserFactory,
    RegisteredUser,
    SynapseServer,
    make_items,
)


async def ask(client: MemberClient, room: str, bot: RegisteredUser, body: str,
              timeout: float = 20) -> str:
    """Send a command; return the body of the bot's reply to it."""
    event_id = await client.send_text(room, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await client.messages(room, sender=bot.user_id):
            relates = event["content"].get("m.relates_to", {})
            if relates.get("m.in_reply_to", {}).get("event_id") == event_id:
                assert event["content"]["msgtype"] == "m.notice"
                assert event["content"]["m.mentions"] == {"user_ids": [client.user_id]}
                return str(event["content"]["body"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no reply to {body!r}")


async def settled(feed_server: FeedServer, path: str, running: InProcessBot, since: float,
                  *, status: int | None = None, timeout: float = 30) -> None:
    """Until the bot, after ``since``, polled ``path`` (answered ``status``, if given), polled
    it once more, and has nothing left to send: what the first poll found is committed (a
    feed's polls follow one another) and delivered, so a message it made is in the room."""
    def done() -> bool:
        found = [r.at for r in feed_server.requests(path)
                 if r.at >= since and status in (None, r.status)]
        return bool(found) and any(r.at > found[0] for r in feed_server.requests(path))
    deadline = time.monotonic() + timeout
    while not done() or await running.app.store.pending_count():
        assert time.monotonic() < deadline, f"the bot did not poll {path} twice"
        await asyncio.sleep(0.05)


async def no_reply(client: MemberClient, room: str, bot: RegisteredUser, event_id: str,
                   wait: float = 2.0) -> None:
    await asyncio.sleep(wait)
    for event in await client.messages(room, sender=bot.user_id):
        relates = event["content"].get("m.relates_to", {})
        assert relates.get("m.in_reply_to", {}).get("event_id") != event_id


class Rig:
    """A room with a moderator and a member, and the bot running for it (a backfilled item)."""

    def __init__(self, bot: RegisteredUser, moderator: MemberClient, member: MemberClient,
                 room: str, config_path: Path, running: InProcessBot) -> None:
        self.bot, self.moderator, self.member = bot, moderator, member
        self.room, self.config_path, self.running = room, config_path, running


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
def make_rig(synapse: SynapseServer, feed_server: FeedServer, feed_path: str,
             new_user: NewUserFactory, member: MemberFactory, run_bot: BotRunner,
             tmp_path: Path) -> RigFactory:
    """``await make_rig(**config)``: a Rig whose bot has these extra config sections."""

    async def make(**extra: Any) -> Rig:
        bot = await new_user("newsbot")
        moderator = await member(await new_user("moderator"))
        reader = await member(await new_user("reader"))
        room = await moderator.create_room(name="actus")
        await reader.join(room)
        feed_server.set_feed(feed_path, make_items(2))
        commands = {"default_interval": "1s", "rate_limit": 50, **extra.pop("commands", {})}
        config_path = write_config(tmp_path / "c.yaml", bot_config(
            homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
            feeds=[{"name": "officiel", "url": feed_server.url(feed_path), "rooms": [room],
                    "backfill": 1, "max_per_poll": 20}], commands=commands, **extra))
        running = await run_bot(load(config_path, bot))
        await moderator.wait_for_messages(room, 1, sender=bot.user_id)   # the backfill
        return Rig(bot, moderator, reader, room, config_path, running)

    return make


@pytest.fixture
async def rig(make_rig: RigFactory) -> Rig:
    return await make_rig()


async def test_moderator_adds_a_feed_and_its_next_item_arrives(
        rig: Rig, feed_server: FeedServer, feed_path: str) -> None:
    path = feed_path + "-added"
    feed_server.set_feed(path, make_items(3, prefix="blog"), title="Le blog d'InterHop")
    answer = await ask(rig.moderator, rig.room, rig.bot,
                       f"!news add {feed_server.url(path)}")
    assert answer == ("Added “le-blog-d-interhop”: Le blog d'InterHop (3 entries). "
                      "Its new items will be posted here.")
    before = len(await rig.member.messages(rig.room, sender=rig.bot.user_id))
    # `add` saw the 3 entries: its polls post none.
    await settled(feed_server, path, rig.running, time.time())
    assert len(await rig.member.messages(rig.room, sender=rig.bot.user_id)) == before
    newer = make_items(4, prefix="blog")
    feed_server.set_feed(path, newer, title="Le blog d'InterHop")
    seen = await rig.member.wait_for_messages(rig.room, before + 1, sender=rig.bot.user_id)
    assert seen[-1]["content"]["body"].splitlines()[0] == newer[0].title
    listing = await ask(rig.moderator, rig.room, rig.bot, "!news list")
    assert "le-blog-d-interhop" in listing
    assert "officiel" in listing and "(from the configuration file)" in listing


async def test_member_without_power_is_refused_with_the_reason(rig: Rig) -> None:
    answer = await ask(rig.member, rig.room, rig.bot, "!news add http://127.0.0.1/x")
    assert answer == "Sorry, you need power level 50 in this room to do that."
    answer = await ask(rig.member, rig.room, rig.bot, "!news pause officiel")
    assert "power level 50" in answer
    # Everyone may ask for help, the list, the latest items and the status.
    assert "!news add URL [name]" in await ask(rig.member, rig.room, rig.bot, "!news help")
    latest = await ask(rig.member, rig.room, rig.bot, "!news latest 2")
    assert latest.splitlines()[0] == "The newest items:"
    assert make_items(2)[0].title in latest.splitlines()[1]
    assert len(latest.splitlines()) == 3


async def test_list_and_status_show_a_failing_feed(
        rig: Rig, feed_server: FeedServer, feed_path: str) -> None:
    feed_server.set_raw(feed_path, b"oops", status=500, content_type="text/plain")
    deadline = time.monotonic() + 30
    while not ((state := await rig.running.app.store.feed_state("officiel")) and
               state.failures):
        assert time.monotonic() < deadline, "the bot did not record the failure"
        await asyncio.sleep(0.05)
    listing = await ask(rig.member, rig.room, rig.bot, "!news list")
    assert "last error: HTTP 500" in listing
    status = await ask(rig.member, rig.room, rig.bot, "!news status")
    line = [li for li in status.splitlines() if li.startswith("• officiel")][0]
    assert "failure(s) in a row" in line
    assert " 0 failure" not in line


async def test_french_and_english_answers(rig: Rig) -> None:
    assert await ask(rig.moderator, rig.room, rig.bot, "!news lang fr") == \
        "Je parlerai français dans ce salon."
    assert await ask(rig.member, rig.room, rig.bot, "!news pause officiel") == \
        "Désolé, il faut un niveau de pouvoir de 50 dans ce salon pour faire cela."
    help_fr = await ask(rig.member, rig.room, rig.bot, "!news")
    assert help_fr.startswith("newsbot publie ici")
    assert await ask(rig.member, rig.room, rig.bot, "!news frobnicate") == \
        "Je ne connais pas « frobnicate ». Essayez « !news help »."
    assert await ask(rig.moderator, rig.room, rig.bot, "!news lang en") == \
        "I will speak English in this room."
    assert await ask(rig.member, rig.room, rig.bot, "!news frobnicate") == \
        "I don’t know “frobnicate”. Try “!news help”."


async def test_bad_arguments_get_the_usage_line_and_config_feeds_stay(rig: Rig) -> None:
    assert await ask(rig.moderator, rig.room, rig.bot, "!news interval officiel") == \
        "Usage: !news interval NAME 30m"
    assert await ask(rig.moderator, rig.room, rig.bot, "!news latest many") == \
        "Usage: !news latest [n]"
    assert await ask(rig.moderator, rig.room, rig.bot, "!news remove officiel") == \
        ("“officiel” comes from the configuration file: edit that file to remove it "
         "(you can pause it here).")
    assert await ask(rig.moderator, rig.room, rig.bot, "!news pause nope") == \
        "This room has no feed named “nope”. See !news list."
    assert await ask(rig.moderator, rig.room, rig.bot, "!news latest ²") == \
        "Usage: !news latest [n]"
    assert await ask(rig.moderator, rig.room, rig.bot, "!news latest " + "9" * 5000) == \
        "Usage: !news latest [n]"
    assert await ask(rig.moderator, rig.room, rig.bot, "!news interval officiel 5s") == \
        "“5s” is not a duration from 1 min to 30 d (examples: 30m, 2h)."
    assert await ask(rig.moderator, rig.room, rig.bot, "!news interval officiel 3000000d") \
        == "“3000000d” is not a duration from 1 min to 30 d (examples: 30m, 2h)."
    assert await ask(rig.moderator, rig.room, rig.bot, "!news interval officiel 2h") == \
        "“officiel” will be fetched every 2 h."


async def test_pause_resume_and_filters(
        rig: Rig, feed_server: FeedServer, feed_path: str) -> None:
    bot, room, member = rig.bot, rig.room, rig.member
    assert await ask(rig.moderator, room, bot, "!news pause officiel") == \
        "Paused “officiel” in this room."
    since = time.time()
    feed_server.set_feed(feed_path, make_items(3))
    await settled(feed_server, feed_path, rig.running, since, status=200)
    assert "PAUSED" in await ask(member, room, bot, "!news list")
    assert await ask(rig.moderator, room, bot, "!news resume officiel") == \
        "Resumed “officiel”: new items will be posted again."
    answer = await ask(rig.moderator, room, bot,
                       '!news filter officiel include sante "portes ouvertes"')
    assert answer == ("“officiel” in this room: only items mentioning “sante”, "
                      "“portes ouvertes”.")
    await ask(rig.moderator, room, bot, "!news filter officiel exclude comité")
    # make_items titles cycle through 8 topics: item 4 is "Journée portes ouvertes à
    # l'hôpital", item 9 "Réunion du comité de pilotage", item 11 "Sécurité des données
    # de santé"; items 4 to 11 are new now.
    items = make_items(11)
    since = time.time()
    feed_server.set_feed(feed_path, items[:8])
    await settled(feed_server, feed_path, rig.running, since, status=200)
    titles = [e["content"]["body"].splitlines()[0]
              for e in await member.messages(room, sender=bot.user_id, msgtypes=["m.notice"])
              if "m.relates_to" not in e["content"]]
    posted = titles[1:]    # after the backfill
    # Item 3 appeared while paused: never posted. Then only "santé" or "portes ouvertes",
    # and never "comité": item 4, then item 11.
    assert posted == [items[7].title, items[0].title], posted
    assert await ask(rig.moderator, room, bot, "!news filter officiel clear") == \
        "“officiel” in this room: no filter, every item is posted."


async def test_rate_limit_and_feed_cap_are_answered(
        make_rig: RigFactory, feed_server: FeedServer, feed_path: str) -> None:
    rig = await make_rig(
        commands={"rate_limit": 3, "rate_window": "30s", "max_feeds_per_room": 1})
    assert await ask(rig.moderator, rig.room, rig.bot,
                     f"!news add {feed_server.url(feed_path + '-x')}") == \
        "This room already follows 1 feeds, the most allowed. Remove one first."
    await ask(rig.member, rig.room, rig.bot, "!news help")
    await ask(rig.member, rig.room, rig.bot, "!news help")
    await ask(rig.member, rig.room, rig.bot, "!news help")
    assert await ask(rig.member, rig.room, rig.bot, "!news help") == \
        "Please slow down: at most 3 commands every 30 seconds."
    # Told once per window, not once per extra command.
    event_id = await rig.member.send_text(rig.room, "!news help")
    await no_reply(rig.member, rig.room, rig.bot, event_id)


async def test_restart_keeps_added_feeds_and_does_not_replay_commands(
        rig: Rig, feed_server: FeedServer, feed_path: str) -> None:
    path = feed_path + "-added"
    feed_server.set_feed(path, make_items(1, prefix="blog"), title="Blog")
    await ask(rig.moderator, rig.room, rig.bot, f"!news add {feed_server.url(path)} blog")
    await ask(rig.moderator, rig.room, rig.bot, "!news interval blog 1m")
    await rig.running.stop()
    # Sent while the bot is down: not answered after the restart.
    missed = await rig.moderator.send_text(rig.room, "!news help")
    replies_before = len(await rig.member.messages(rig.room, sender=rig.bot.user_id))
    await rig.running.start()
    listing = await ask(rig.member, rig.room, rig.bot, "!news list")
    assert "• blog:" in listing
    assert "every 1 min" in listing
    await no_reply(rig.member, rig.room, rig.bot, missed, wait=0.5)
    after = await rig.member.messages(rig.room, sender=rig.bot.user_id)
    assert len(after) == replies_before + 1          # only the answer to `list`
    assert await ask(rig.moderator, rig.room, rig.bot, "!news remove blog") == \
        "Removed “blog” from this room."
    assert "• blog:" not in await ask(rig.member, rig.room, rig.bot, "!news list")


async def test_notices_edits_and_other_rooms_are_ignored(rig: Rig) -> None:
    notice = await rig.moderator.send_text(rig.room, "!news help", msgtype="m.notice")
    edit = await rig.moderator.send_event(rig.room, "m.room.message", {
        "msgtype": "m.text", "body": "* !news help",
        "m.new_content": {"msgtype": "m.text", "body": "!news help"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": notice}})
    chat = await rig.moderator.send_text(rig.room, "bonjour, !news help")
    # A room's commands are handled, and its replies sent, in order: once a later
    # command is answered, any reply to those three would be in the room.
    await ask(rig.moderator, rig.room, rig.bot, "!news help")
    for event_id in (notice, edit, chat):
        await no_reply(rig.moderator, rig.room, rig.bot, event_id, wait=0)
