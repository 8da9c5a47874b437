"""An in-memory chat network, written for the tests: the proof that delivery's seam holds
for a network that is not Matrix.

Its idempotency works the other way round from Matrix's, as XMPP's does: the network
never deduplicates; every message carries the sender's own id for it (like XEP-0359's
origin-id), and a sender that is not sure a message arrived looks for that id in the
room's history (like XEP-0313's archive) before sending it again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.errors import RoomUnavailableError, TemporaryTransportError
from bot.media import ImageSource
from bot.model import Outgoing, Sent


@dataclass
class Posted:
    sender: str
    origin_id: str
    text: str
    replaces: str | None = None
    answers: str | None = None
    stanza_id: str = ""


@dataclass
class MemoryNetwork:
    """Rooms and what was posted in them; faults to inject."""

    rooms: dict[str, list[Posted]] = field(default_factory=dict)
    down: bool = False                      # every request fails, temporarily
    lose_next_answer: bool = False          # the next send arrives, its answer is lost
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def room(self, name: str) -> list[Posted]:
        return self.rooms.setdefault(name, [])

    def texts(self, name: str) -> list[str]:
        return [p.text for p in self.room(name)]


class MemoryTransport:
    """newsbot's side of the in-memory network: a DeliveryTransport."""

    def __init__(self, network: MemoryNetwork, account: str = "newsbot") -> None:
        self.network = network
        self.account = account
        self.sends = 0
        self.lookups = 0

    async def join_room(self, room: str) -> str:
        await asyncio.sleep(0)
        if self.network.down:
            raise TemporaryTransportError("network down")
        if room.startswith("gone:"):
            raise RoomUnavailableError(f"{room} does not exist")
        self.network.room(room)
        return room

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        message = outgoing.message
        if message is None:
            return None         # rows of older newsbots are Matrix rows: never ours
        if outgoing.kind == "image":
            # This network shows a picture by its address, when the checks let it through.
            media = await images.image(message.image.url) if images and message.image else None
            return None if media is None else {"text": message.image.url if message.image
                                               else "", "origin_id": outgoing.key}
        payload: dict[str, Any] = {"text": message.body, "origin_id": outgoing.key}
        if outgoing.kind == "edit":
            if outgoing.relates_to is None:
                return None
            payload["replaces"] = outgoing.relates_to
        if outgoing.kind in ("reply", "goodbye"):
            payload["answers"] = outgoing.relates_to
        return payload

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        await asyncio.sleep(0)
        if fence is not None and not fence():
            raise TemporaryTransportError("claim lapsed")
        if self.network.down:
            raise TemporaryTransportError("network down")
        history = self.network.room(room_id)
        if attempted_at is not None:
            # Tried before: it may have arrived. No network-side deduplication here.
            self.lookups += 1
            for posted in history:
                if posted.sender == self.account and posted.origin_id == key:
                    return Sent(posted.stanza_id, already_there=True)
        posted = Posted(self.account, str(payload["origin_id"]), str(payload["text"]),
                        payload.get("replaces"), payload.get("answers"),
                        stanza_id=f"stanza-{next(self.network._ids)}")
        history.append(posted)
        self.sends += 1
        if self.network.lose_next_answer:
            self.network.lose_next_answer = False
            raise TemporaryTransportError("the answer was lost")
        return Sent(posted.stanza_id)
