"""Several instances: a send is held back by its fence up to the moment its request is
written. A process frozen after the last question of its claim and before the write
(SIGSTOP, a suspended VM) must not, once woken, send what another instance took over.
On each network, a fence that holds when the send begins and has lapsed when its bytes
would leave (as for a process frozen in between) sends nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.errors import TemporaryTransportError
from bot.store import SqliteStore
from bot.transport.xmpp import XmppTransport
from bot.transport.xmpp.session import XmppAccount
from tests.botkit import matrix_transport
from tests.support import MemberFactory, NewUserFactory, SynapseServer
from tests.support.prosody import ProsodyServer
from tests.support.xmppmember import XmppMember


class LapsingFence:
    """Holds at its first question, lapsed at every later one."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked == 1


async def test_a_claim_that_lapses_after_its_last_check_sends_nothing(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(invite=[bot.user_id])
    async with matrix_transport(synapse.base_url, bot, [room], tmp_path) as (transport, _):
        await transport.join_room(room)
        fence = LapsingFence()
        with pytest.raises(TemporaryTransportError, match="claim on the message lapsed"):
            await transport.send_message(room, {"msgtype": "m.notice", "body": "too late"},
                                         "fence-too-late", fence=fence)
        assert fence.asked >= 2, "the fence was not asked again before the write"
        # The connection it would have used is gone; the next send, whose claim holds, goes.
        await transport.send_message(room, {"msgtype": "m.notice", "body": "in time"},
                                     "fence-in-time", fence=lambda: True)
        await transport.send_message(room, {"msgtype": "m.notice", "body": "unfenced"},
                                     "no-fence")
        await alice.wait_for_messages(room, 2, sender=bot.user_id, timeout=30)
        bodies = [e["content"]["body"] for e in await alice.messages(room, sender=bot.user_id)]
        assert bodies == ["in time", "unfenced"]


async def test_on_xmpp_a_claim_that_lapses_after_its_last_check_sends_nothing(
        prosody: ProsodyServer, tmp_path: Path) -> None:
    bot = await prosody.register("newsbot")
    room = prosody.new_room("fence")
    account = XmppAccount(bot.jid, bot.password, nick="newsbot", host=prosody.host,
                          port=prosody.port, tls=False)
    store = SqliteStore.open(tmp_path / "state")
    transport = XmppTransport(account, store, join_history=0)
    async with XmppMember(prosody, await prosody.register("alice")) as alice:
        await alice.join(room)
        try:
            await transport.connect()
            target = await transport.join_room(f"xmpp:{room}")
            fence = LapsingFence()
            with pytest.raises(TemporaryTransportError, match="claim on the message lapsed"):
                await transport.send(target, {"body": "too late"}, "fence-too-late",
                                     attempted_at=None, now=time.time(), fence=fence)
            assert fence.asked >= 2, "the fence was not asked again before the write"
            await transport.send(target, {"body": "in time"}, "fence-in-time",
                                 attempted_at=None, now=time.time(), fence=lambda: True)
            bodies = [m.body for m in await alice.archive(room) if m.sender == "newsbot"]
            assert bodies == ["in time"]
        finally:
            await transport.close()
            store.close()
