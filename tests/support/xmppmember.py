"""A person on XMPP, with their own slixmpp client: joins group chats, reads what arrives
(live, and from the room's archive), writes commands."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import slixmpp
from slixmpp import JID

from tests.support.prosody import ProsodyServer, XmppAccount


@dataclass(frozen=True, slots=True)
class Received:
    """One message as a person's client has it."""

    room: str            # bare JID of the group chat or of the person who wrote
    sender: str          # nick in a group chat, bare JID otherwise
    body: str
    origin_id: str
    stanza_id: str
    oob: str
    replaces: str
    reply_to: str
    delayed: bool


def received(message: Any, room: str) -> Received:
    stanza_id = message["stanza_id"]
    return Received(
        room=room,
        sender=str(message["mucnick"]) if message["type"] == "groupchat"
        else str(message["from"].bare),
        body=str(message["body"] or ""), origin_id=str(message["origin_id"]["id"] or ""),
        stanza_id=str(stanza_id["id"] or "") if str(stanza_id["by"]) == room else "",
        oob=str(message["oob"]["url"] or ""),
        replaces=str(message["replace"]["id"] or ""),
        reply_to=str(message["reply"]["id"] or ""),
        delayed=message.get_plugin("delay", check=True) is not None)


class XmppMember:
    """``async with XmppMember(server, account) as alice``."""

    def __init__(self, server: ProsodyServer, account: XmppAccount, nick: str | None = None,
                 ) -> None:
        self.server = server
        self.account = account
        self.nick = nick or account.localpart
        client = slixmpp.ClientXMPP(f"{account.jid}/member", account.password)
        for plugin in ("xep_0030", "xep_0004", "xep_0045", "xep_0059", "xep_0066",
                       "xep_0203", "xep_0249", "xep_0297", "xep_0308", "xep_0313",
                       "xep_0359", "xep_0461"):
            client.register_plugin(plugin)
        client.enable_direct_tls = False
        client.enable_starttls = False
        client.enable_plaintext = True
        client.plugin["feature_mechanisms"].unencrypted_scram = True
        self.client = client
        self.inbox: list[Received] = []
        self._arrived = asyncio.Condition()
        self._ready = asyncio.Event()
        client.add_event_handler("session_start", lambda _: self._started())
        # slixmpp raises "message" for every message, group chats' included.
        client.add_event_handler("message", self._on_message)

    def _started(self) -> None:
        self.client.send_presence()
        self._ready.set()

    def _on_message(self, message: Any) -> None:
        if message["type"] == "groupchat":
            if not message["body"]:
                return
            room = str(message["from"].bare)
        elif message["type"] in ("chat", "normal") and message["body"]:
            room = str(message["from"].bare)
        else:
            return
        self.inbox.append(received(message, room))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def __aenter__(self) -> XmppMember:
        self.client.connect(self.server.host, self.server.port)
        await asyncio.wait_for(self._ready.wait(), 30)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.client.disconnect(wait=1.0)
        await asyncio.sleep(0)

    async def join(self, room: str, *, history: int = 0) -> None:
        await self.client.plugin["xep_0045"].join_muc_wait(JID(room), self.nick,
                                                           maxstanzas=history, timeout=30)

    async def wait_occupant(self, room: str, nick: str, timeout: float = 30.0) -> None:
        """Until ``nick`` is in the room, as this person's client sees it."""
        muc = self.client.plugin["xep_0045"]
        async with asyncio.timeout(timeout):
            while nick not in (muc.get_roster(JID(room)) or []):
                await asyncio.sleep(0.05)

    async def configure(self, room: str, values: dict[str, Any]) -> None:
        """Set room configuration fields (muc#roomconfig_*) as the room's owner."""
        muc = self.client.plugin["xep_0045"]
        form = await muc.get_room_config(room)
        fields = form.get_fields()
        new = self.client.plugin["xep_0004"].make_form(ftype="submit")
        new.add_field(var="FORM_TYPE", ftype="hidden",
                      value="http://jabber.org/protocol/muc#roomconfig")
        for var, value in values.items():
            if var in fields:
                new.add_field(var=var, value=value)
        await muc.set_room_config(room, new)

    async def set_role(self, room: str, nick: str, role: str) -> None:
        await self.client.plugin["xep_0045"].set_role(JID(room), nick, role)  # type: ignore[arg-type]

    async def set_affiliation(self, room: str, jid: str, affiliation: str) -> None:
        await self.client.plugin["xep_0045"].set_affiliation(JID(room), affiliation, jid=JID(jid))  # type: ignore[arg-type]

    def say(self, to: str, body: str, *, group: bool = True) -> str:
        message = self.client.make_message(mto=to, mbody=body,
                                           mtype="groupchat" if group else "chat")
        message.send()
        return str(message["id"])

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[Received]:
        """Wait until ``predicate(inbox)`` is true; returns the inbox."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.inbox))
        return self.inbox

    def live(self, room: str, sender: str | None = None) -> list[Received]:
        return [m for m in self.inbox if m.room == room and not m.delayed
                and (sender is None or m.sender == sender)]

    async def archive(self, room: str | None = None, *, with_jid: str | None = None
                      ) -> list[Received]:
        """Every message of a room's archive (or of our own, with one person), oldest first."""
        mam = self.client.plugin["xep_0313"]
        found = []
        iterator = mam.iterate(jid=JID(room), rsm={"max": 100}) if room else \
            mam.iterate(with_jid=JID(with_jid) if with_jid else None, rsm={"max": 100})
        async for result in iterator:
            stanza = result["mam_result"]["forwarded"]["stanza"]
            if not stanza["body"]:
                continue
            found.append(received(stanza, room or str(stanza["from"].bare)))
        return found
