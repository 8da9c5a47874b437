"""A room's invitation answered after its delivery worker joined it: no second join (a
hundred rooms made a hundred more joins, one after the other in the sync loop, while the
first items were being delivered), and one answered invitation wakes its room's worker,
not every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.transport.matrix import MatrixTransport
from tests.botkit import InProcessBot, bot_config, load, matrix_transport, write_config
from tests.support import MemberFactory, NewUserFactory, SynapseServer


def _count_joins(transport: MatrixTransport) -> list[str]:
    """The rooms the transport's client asks to join, from now on."""
    client = transport._client
    joins: list[str] = []
    join = client.join

    async def counted(room: str, *args: Any, **kwargs: Any) -> Any:
        joins.append(room)
        return await join(room, *args, **kwargs)

    client.join = counted  # type: ignore[method-assign]
    return joins


async def _accept(transport: MatrixTransport, room_id: str) -> bool:
    async def yes(_room: str, _inviter: str, _direct: bool) -> bool:
        return True
    invites = transport._sync._invites
    handle: Callable[..., Awaitable[bool]] = invites.handle
    return await handle(room_id, SimpleNamespace(invite_state=[]), yes)


async def test_an_invitation_the_workers_join_answered_is_not_joined_again(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="news", invite=[bot.user_id])
    async with matrix_transport(synapse.base_url, bot, [room], tmp_path) as (transport, _):
        assert await transport.join_room(room) == room      # the delivery worker's join
        joins = _count_joins(transport)
        # The sync computed before that join brings the invitation: it is answered, and
        # the bot is in the room, without joining again.
        assert await _accept(transport, room)
        assert joins == []
        assert bot.user_id in await alice.joined_members(room)

        # Kicked and invited again: this invitation is a new one, and it is joined.
        await alice.kick(room, bot.user_id)
        await alice.invite(room, bot.user_id)
        assert await _accept(transport, room)
        assert joins == [room]
        assert bot.user_id in await alice.joined_members(room)


async def test_an_invitation_never_joined_before_is_joined(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    room = await alice.create_room(name="elsewhere", invite=[bot.user_id])
    async with matrix_transport(synapse.base_url, bot, [room], tmp_path) as (transport, _):
        joins = _count_joins(transport)
        assert await _accept(transport, room)
        assert joins == [room]
        assert bot.user_id in await alice.joined_members(room)


async def test_an_answered_invitation_wakes_its_rooms_worker_only(
        synapse: SynapseServer, new_user: NewUserFactory, member: MemberFactory,
        tmp_path: Path) -> None:
    bot = await new_user("newsbot")
    alice = await member(await new_user("alice"))
    rooms = [await alice.create_room(name=f"news {i}") for i in range(3)]
    cfg = load(write_config(tmp_path / "c.yaml", bot_config(
        homeserver=synapse.base_url, bot=bot, storage=tmp_path / "state",
        feeds=[{"name": "news", "url": "http://127.0.0.1:9/feed", "rooms": rooms}])), bot)
    running = InProcessBot(cfg)
    app = running.build()
    woken: list[list[str] | None] = []
    wake, wake_all = app.deliverer.wake, app.deliverer.wake_all

    def record(rooms: list[str]) -> None:
        woken.append(list(rooms))
        wake(rooms)

    def record_all() -> None:
        woken.append(None)
        wake_all()

    app.deliverer.wake, app.deliverer.wake_all = record, record_all  # type: ignore[method-assign]
    async with running:
        deadline = asyncio.get_running_loop().time() + 60
        while sorted(app.delivery_workers()) != sorted(rooms):
            assert asyncio.get_running_loop().time() < deadline, "workers never started"
            await asyncio.sleep(0.1)
        woken.clear()
        app._joined(rooms[1])
        assert woken == [[rooms[1]]]
        # A room no worker is known for (an alias not resolved yet may be it): all.
        app._joined("!unknown:localhost")
        assert woken == [[rooms[1]], None]
