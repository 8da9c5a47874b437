"""``./dev demo`` (``python -m tests.support.demo``): the main job end to end on loopback,
with nothing to configure. ``./dev demo xmpp``: the same on a throwaway Prosody.

A throwaway Synapse, a local feed of an association's news, the bot posting into a room,
and a member's own client printing each message as it receives it. It lives beside the test
harness it runs on, so that neither ships in the wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.config import load_config
from bot.logs import setup_logging
from tests.botkit import InProcessBot, bot_config, load, write_config
from tests.support import FeedItem, FeedServer, MemberClient, SynapseServer
from tests.support.xmppmember import Received

DEMO_ITEMS = [
    ("Lettre techno-juridique n° 12 : l'hébergement des données de santé",
     "<p>Le point sur l'entrepôt national des données de santé et la souveraineté "
     "numérique&nbsp;: ce qui change cette année.</p>"),
    ("Goupile 3.0 : formulaires libres pour la recherche clinique",
     "<p>Une nouvelle version de notre outil libre de conception de formulaires.</p>"),
    ("Assemblée générale : l'ordre du jour",
     "<p>Rendez-vous le 14 décembre, en ligne et à Paris.</p>"),
]


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="newsbot-demo-") as tmp:
        yield Path(tmp)


async def run_demo(keep: Path | None = None, network: str = "matrix") -> int:
    with _workdir(keep) as work:
        return await (_demo_xmpp(work) if network == "xmpp" else _demo(work))


def _items(feeds: FeedServer) -> list[FeedItem]:
    base = datetime.now(UTC) - timedelta(days=3)
    return [FeedItem(guid=f"urn:demo:{i}", title=title, link=f"{feeds.base_url}/n/{i}",
                     summary=summary, published=base + timedelta(days=i))
            for i, (title, summary) in enumerate(DEMO_ITEMS[:2])]


def _fresh(feeds: FeedServer) -> FeedItem:
    return FeedItem(guid="urn:demo:2", title=DEMO_ITEMS[2][0], link=f"{feeds.base_url}/n/2",
                    summary=DEMO_ITEMS[2][1], published=datetime.now(UTC))


async def _demo_xmpp(work: Path) -> int:
    """The same story in an XMPP group chat: a member's own slixmpp client prints what
    it receives; then the member subscribes in a one-to-one chat."""
    from tests.support.prosody import ProsodyServer, prosody_available
    from tests.support.xmppmember import XmppMember
    if not prosody_available():
        _say("prosody is not installed: `apt-get install prosody` (./dev test installs it)")
        return 1
    started = time.monotonic()
    _say("Starting a throwaway Prosody XMPP server on 127.0.0.1 ...")
    async with ProsodyServer(work / "prosody") as xmpp, FeedServer() as feeds:
        bot_account = await xmpp.register("newsbot")
        alice_account = await xmpp.register("alice")
        room = f"actualites@{'conference.localhost'}"
        _say(f"  server 127.0.0.1:{xmpp.port}; bot {bot_account.jid}; member "
             f"{alice_account.jid}")
        items = _items(feeds)
        feeds.set_feed("/actualites.xml", list(reversed(items)), title="InterHop — Actualités")
        settings = {
            "xmpp": {"jid": bot_account.jid, "password": bot_account.password,
                     "nick": "Actualités", "host": xmpp.host, "port": xmpp.port, "tls": False},
            "storage": {"path": str(work / "state")}, "language": "fr",
            "fetch": {"allow_private_networks": True},
            "rooms": [{"alias": f"xmpp:{room}", "name": "Actualités InterHop",
                       "topic": "Les nouvelles d'InterHop", "topic_latest": True}],
            "feeds": [{"name": "actualites", "url": feeds.url("/actualites.xml"),
                       "rooms": [f"xmpp:{room}"], "interval": "2s", "backfill": 2,
                       "public": True}]}
        config, _ = load_config(write_config(work / "config.yaml", settings))
        _say(f"  feed {feeds.url('/actualites.xml')} -> group chat xmpp:{room}\n")
        logging.getLogger("bot").setLevel(logging.WARNING)
        async with InProcessBot(config) as bot, XmppMember(xmpp, alice_account) as alice:
            _say("The bot creates its announcement group chat (persistent, moderated), then "
                 "posts the feed's newest 2 items.")
            async with asyncio.timeout(60):     # the bot makes the room: it is its owner
                while not bot.app.rooms.reports:
                    await asyncio.sleep(0.1)
            await alice.join(room, history=10)
            _say("What the member's client receives:\n")
            got = await alice.wait_for(lambda inbox: len(_from_bot(inbox, room)) >= 2, 60)
            for message in _from_bot(got, room):
                _print_xmpp(message)
            _say("A new issue is published in the feed ...\n")
            feeds.set_feed("/actualites.xml", [_fresh(feeds), *reversed(items)],
                           title="InterHop — Actualités")
            got = await alice.wait_for(lambda inbox: len(_from_bot(inbox, room)) >= 3, 60)
            _print_xmpp(_from_bot(got, room)[-1])
            _say("The member writes to the bot in a one-to-one chat: \"subscribe actualites\"\n")
            alice.say(bot_account.jid, "subscribe actualites", group=False)
            got = await alice.wait_for(
                lambda inbox: any(m.room == bot_account.jid for m in inbox), 60)
            _print_xmpp([m for m in got if m.room == bot_account.jid][0])
            total = len(_from_bot(alice.inbox, room))
    _say(f"Done in {time.monotonic() - started:.1f} s: {total} messages in the group chat, "
         "each posted once.")
    return 0


def _from_bot(inbox: list[Received], room: str) -> list[Received]:
    seen: dict[str, Received] = {}       # history at join and live: each message once
    for message in inbox:
        if message.room == room and message.sender == "Actualités":
            seen.setdefault(message.origin_id or message.body, message)
    return list(seen.values())


def _print_xmpp(message: Received) -> None:
    _say(f"  from {message.sender}" + (f" (picture: {message.oob})" if message.oob else ""))
    for line in message.body.splitlines():
        _say(f"  | {line}")
    _say("")


async def _demo(work: Path) -> int:
    started = time.monotonic()
    _say("Starting a throwaway Synapse homeserver on 127.0.0.1 ...")
    async with SynapseServer(work / "synapse") as hs, FeedServer() as feeds:
        bot_user = await hs.register("newsbot", password="demo-bot-password")
        alice = await hs.register("alice", password="demo-alice-password", admin=True)
        _say(f"  homeserver {hs.base_url}; bot {bot_user.user_id}; member {alice.user_id}")

        items = _items(feeds)
        feeds.set_feed("/actualites.xml", list(reversed(items)), title="InterHop — Actualités")

        async with MemberClient(hs.base_url, alice) as member:
            room_id = await member.create_room(name="Actualités", alias_localpart="actualites")
            settings = bot_config(
                homeserver=hs.base_url, bot=bot_user, storage=work / "state", auth="password",
                language="fr", admins=[alice.user_id],
                feeds=[{"name": "actualites", "url": feeds.url("/actualites.xml"),
                        "rooms": ["#actualites:localhost"], "interval": "2s", "backfill": 2}])
            settings["matrix"]["display_name"] = "Actualités InterHop"
            config = load(write_config(work / "config.yaml", settings), bot_user)
            _say(f"  feed {feeds.url('/actualites.xml')} -> room #actualites:localhost\n")

            logging.getLogger("bot").setLevel(logging.WARNING)
            async with InProcessBot(config):
                _say("The bot sees the feed for the first time and posts its newest 2 items.")
                _say("What the member's client receives:\n")
                seen = await member.wait_for_messages(room_id, 2, sender=bot_user.user_id,
                                                      timeout=60)
                for event in seen:
                    _print_event(event)

                _say("A new issue is published in the feed ...\n")
                feeds.set_feed("/actualites.xml", [_fresh(feeds), *reversed(items)],
                               title="InterHop — Actualités")
                seen = await member.wait_for_messages(room_id, 3, sender=bot_user.user_id,
                                                      timeout=60)
                _print_event(seen[-1])
            total = len(await member.messages(room_id, sender=bot_user.user_id))
    _say(f"Done in {time.monotonic() - started:.1f} s: {total} messages, each posted once.")
    return 0


def _print_event(event: dict[str, object]) -> None:
    content = event.get("content")
    assert isinstance(content, dict)
    _say(f"  [{content.get('msgtype')}] from {event.get('sender')}")
    for line in str(content.get("body", "")).splitlines():
        _say(f"  | {line}")
    _say("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev demo",
        description="run the bot against a throwaway local Synapse (or Prosody) and print "
                    "what a member receives")
    parser.add_argument("network", nargs="?", choices=("matrix", "xmpp"), default="matrix",
                        help="the network to show (default: matrix)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the demo's files in this directory instead of a temporary one")
    args = parser.parse_args(argv)
    setup_logging(fmt="text", level="WARNING")
    try:
        return asyncio.run(run_demo(args.keep, args.network))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
