"""XMPP as a transport: group chats (XEP-0045) and one-to-one chats, through slixmpp.

Exactly once, the XMPP way: the server never deduplicates, so every message carries an
XEP-0359 ``origin-id`` equal to its delivery key. A group chat message counts as sent when
the room reflects it back with that id; a one-to-one message when the server answered a
ping sent after it (a server handles one stream's stanzas in order). A row tried before
(``attempted_at``) is first looked for, by that id, in what the join's history showed and in
the room's archive (XEP-0313), or the bot's own archive for a one-to-one chat.

Rooms are named ``xmpp:room@service`` (see addresses); the reference is also the room's id
in the outbox. Group chats are rejoined after a reconnect without replaying their history
into the pipeline: history only teaches which of our messages a room already has.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout, PresenceError

from bot.errors import ClaimLapsedError, RoomUnavailableError, TemporaryTransportError
from bot.model import Outgoing, Sent
from bot.transport.base import EventHandlers, GroupChatReport, GroupChatSpec, IncomingMessage
from bot.transport.xmpp.addresses import bare_jid, is_xmpp, ref_of
from bot.transport.xmpp.encoding import encode
from bot.transport.xmpp.groups import GroupAdmin
from bot.transport.xmpp.session import Session, XmppAccount

if TYPE_CHECKING:
    from slixmpp.stanza import Message as Stanza
    from slixmpp.stanza import Presence

    from bot.config import XmppConfig
    from bot.media import ImageSource
    from bot.store.base import KeyValueStore

log = logging.getLogger(__name__)

__all__ = ["XmppAccount", "XmppTransport", "account_of"]

DIRECTS_KEY = "xmpp.direct_conversations"
SEND_TIMEOUT = 30.0          # no reflection by then: unknown, looked for before a resend
JOIN_TIMEOUT = 30.0
JOIN_HISTORY = 20            # stanzas of history asked at join, to learn what we sent
LOOKUP_DEPTH = 500           # messages of an archive searched for a delivery
KNOWN_IDS = 1000             # origin ids of ours remembered per room
MAX_BACKGROUND = 1000        # incoming messages and invitations being looked at, at most
# Presence errors that mean "this room will not have us" rather than "try again later".
_REFUSALS = {"forbidden", "not-allowed", "registration-required", "item-not-found",
             "not-authorized", "conflict", "service-unavailable", "jid-malformed"}
_MODERATOR_LEVEL = 50.0      # a role of moderator: commands.min_power_level's default
_ADMIN_LEVEL = 100.0         # an owner or admin affiliation


def account_of(config: XmppConfig, instance: str | None = None) -> XmppAccount:
    """``instance``: this instance's name when several share the state: each connects
    with its own resource (one resource, one session: a second would push the first out)."""
    assert config.password is not None      # the config refuses a section without one
    resource = "newsbot" if instance is None else f"newsbot.{instance}"
    return XmppAccount(config.jid, config.password, nick=config.nick, host=config.host,
                       port=config.port, tls=config.tls, resource=resource)


@dataclass
class GroupChat:
    jid: str
    joined: bool = False
    removed: str | None = None           # why the room no longer has us (kick, ban)
    created: bool = False                # our join created it
    subject: str = ""
    ours: collections.OrderedDict[str, str] = field(default_factory=collections.OrderedDict)
    last_ours: str | None = None         # origin id of the last message we sent there

    def remember(self, origin_id: str, stanza_id: str) -> None:
        self.ours[origin_id] = stanza_id
        self.ours.move_to_end(origin_id)
        while len(self.ours) > KNOWN_IDS:
            self.ours.popitem(last=False)
        self.last_ours = origin_id


class XmppTransport:
    def __init__(self, account: XmppAccount, store: KeyValueStore, *,
                 join_history: int = JOIN_HISTORY) -> None:
        self.account = account
        self._join_history = join_history
        self._store = store
        self.session = Session(account)
        self.client = self.session.client
        self._groups: dict[str, GroupChat] = {}
        self._services: dict[str, bool] = {}       # domain -> hosts group chats
        self._join_locks: dict[str, asyncio.Lock] = {}
        self._reflections: dict[str, asyncio.Future[str]] = {}
        # Several instances: the fence of each stanza on its way (by its id), asked by
        # the stream's last filter, right before the stanza is written; the ids of those
        # it held back.
        self._fences: dict[str, Callable[[], bool]] = {}
        self._held_back: set[str] = set()
        self._directs: dict[str, str] = {}        # conversation -> its person
        self._handlers: EventHandlers | None = None
        # Work started from slixmpp's handlers (which cannot wait): held until done, and
        # cancelled at close.
        self._background: set[asyncio.Task[None]] = set()
        self._admin = GroupAdmin(self)
        client = self.client
        client.add_event_handler("groupchat_message", self._on_groupchat)
        client.add_event_handler("message", self._on_message)
        client.add_event_handler("message_error", self._on_message_error)
        client.add_event_handler("groupchat_presence", self._on_room_presence)
        client.add_event_handler("groupchat_direct_invite", self._on_direct_invite)
        client.add_event_handler("groupchat_invite", self._on_mediated_invite)
        client.add_event_handler("session_start", self._on_new_session)
        client.add_event_handler("groupchat_subject", self._on_subject)
        # Synchronous filters run last, just before the stanza is serialised and written.
        client.add_filter("out_sync", self._fence_filter)

    # -- connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        raw = await self._store.get(DIRECTS_KEY)
        if raw:
            with contextlib.suppress(ValueError, TypeError):
                self._directs = {str(k): str(v) for k, v in json.loads(raw).items()}
        await self.session.connect()

    async def close(self) -> None:
        for waiting in self._reflections.values():
            waiting.cancel()
        for task in list(self._background):
            task.cancel()
        await self.session.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._background) >= MAX_BACKGROUND:
            # A flood of messages or invitations from strangers: dropped, not queued.
            work.close()
            log.warning("too much XMPP work waiting; dropping an incoming message")
            return
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_new_session(self, _event: object) -> None:
        """A new session (not a resumed one) is in no room: rejoin every group chat."""
        rejoin = [g.jid for g in self._groups.values() if g.joined]
        for group in self._groups.values():
            group.joined = False
        for jid in rejoin:
            self._spawn(self._rejoin(jid))

    async def _rejoin(self, jid: str) -> None:
        try:
            await self.join_room(ref_of(jid))
        except (TemporaryTransportError, RoomUnavailableError) as exc:
            log.warning("could not rejoin %s after reconnecting: %s (its worker retries)",
                        ref_of(jid), exc)

    # -- rooms --------------------------------------------------------------------------

    async def resolve_room(self, room: str) -> str:
        try:
            return ref_of(bare_jid(room))
        except ValueError as exc:
            raise RoomUnavailableError(str(exc)) from exc

    async def _is_group_service(self, domain: str) -> bool:
        known = self._services.get(domain)
        if known is not None:
            return known
        self.session.check_ready()
        try:
            info = await self.client.plugin["xep_0030"].get_info(jid=JID(domain), timeout=15)
        except IqTimeout as exc:
            raise TemporaryTransportError(f"{domain} did not answer") from exc
        except IqError:
            self._services[domain] = False     # no disco: an account's server, not a MUC
            return False
        identities = info["disco_info"]["identities"]
        group = any(category == "conference" for category, *_ in identities)
        self._services[domain] = group
        return group

    async def is_group(self, ref: str) -> bool:
        jid = bare_jid(ref)
        return jid in self._groups or await self._is_group_service(jid.split("@", 1)[1])

    async def join_room(self, room: str) -> str:
        ref = await self.resolve_room(room)
        jid = bare_jid(ref)
        if not await self.is_group(ref):
            return ref          # a one-to-one chat: nothing to join
        group = self._groups.setdefault(jid, GroupChat(jid))
        if group.removed:
            raise RoomUnavailableError(f"{ref}: {group.removed}")
        async with self._join_locks.setdefault(jid, asyncio.Lock()):
            if not group.joined:
                await self._join(group)
        return ref

    async def _join(self, group: GroupChat) -> None:
        self.session.check_ready()
        try:
            muc = self.client.plugin["xep_0045"]
            own, subject, _occupants, history = await muc.join_muc_wait(
                JID(group.jid), self.account.nick, maxstanzas=self._join_history,
                timeout=JOIN_TIMEOUT)
        except PresenceError as exc:
            condition = str(exc.condition)
            if condition in _REFUSALS:
                raise RoomUnavailableError(f"{ref_of(group.jid)} refused us: {condition}") \
                    from exc
            raise TemporaryTransportError(f"joining {ref_of(group.jid)}: {condition}") from exc
        except TimeoutError as exc:
            raise TemporaryTransportError(f"joining {ref_of(group.jid)} timed out") from exc
        # History teaches which of our messages the room has; it never reaches commands.
        for message in history:
            if message["mucnick"] == self.account.nick:
                origin = message["origin_id"]["id"]
                if origin:
                    group.remember(origin, self._stanza_id(message, group.jid))
        group.joined = True
        group.created = 201 in own["muc"]["status_codes"]
        group.subject = str(subject["subject"] or "") if subject is not None else ""
        log.info("%s %s", "created" if group.created else "joined", ref_of(group.jid))

    async def join_group(self, room: str) -> bool:
        """Join a group chat; whether that join created it (the bot is then its owner)."""
        ref = await self.join_room(room)
        group = self._groups.get(bare_jid(ref))
        if group is None:
            raise RoomUnavailableError(f"{ref} is not a group chat")
        return group.created

    def subject_of(self, room: str) -> str:
        group = self._groups.get(bare_jid(room))
        return group.subject if group is not None else ""

    async def ensure_group(self, spec: GroupChatSpec) -> GroupChatReport:
        return await self._admin.ensure_group(spec)

    async def group_subject(self, room: str) -> str:
        return await self._admin.group_subject(room)

    async def set_group_subject(self, room: str, subject: str) -> None:
        await self._admin.set_group_subject(room, subject)

    async def joined_members(self, room_id: str) -> list[str]:
        jid = bare_jid(room_id)
        if jid not in self._groups:
            person = self._directs.get(room_id)
            return [ref_of(self.session.bare_jid), *([person] if person else [])]
        muc = self.client.plugin["xep_0045"]
        return [self._occupant_ref(jid, nick) for nick in muc.get_roster(JID(jid)) or []]

    def _occupant_ref(self, room: str, nick: str) -> str:
        """Who an occupant is: their own address when the room shows it, else their seat."""
        real = self.client.plugin["xep_0045"].get_jid_property(JID(room), nick, "jid")
        if nick == self.account.nick:
            return ref_of(self.session.bare_jid)
        return ref_of(str(real)) if real else f"{ref_of(room)}/{nick}"

    async def power_level(self, room_id: str, user_id: str) -> float:
        """XMPP has no power levels: an owner or admin counts as 100, a moderator as 50."""
        if self.is_direct(room_id):
            return _ADMIN_LEVEL if self._directs.get(room_id) == user_id else 0.0
        jid = bare_jid(room_id)
        muc = self.client.plugin["xep_0045"]
        for nick in muc.get_roster(JID(jid)) or []:
            if self._occupant_ref(jid, nick) != user_id:
                continue
            affiliation = muc.get_jid_property(JID(jid), nick, "affiliation")
            role = muc.get_jid_property(JID(jid), nick, "role")
            if affiliation in ("owner", "admin"):
                return _ADMIN_LEVEL
            return _MODERATOR_LEVEL if role == "moderator" else 0.0
        return 0.0

    async def may_read(self, room_id: str, user_id: str) -> bool:
        """An open, listed group chat anyone may join; else its occupants now and its
        members (what the bot may see of them)."""
        if self.is_direct(room_id):
            return self._directs.get(room_id) == user_id
        jid = bare_jid(room_id)
        try:
            info = await self.client.plugin["xep_0030"].get_info(jid=JID(jid), timeout=15)
        except (IqError, IqTimeout) as exc:
            raise TemporaryTransportError(f"{room_id} did not say who may read it") from exc
        features = set(info["disco_info"]["features"])
        if {"muc_public", "muc_open", "muc_unsecured"} <= features:
            return True
        if user_id in await self.joined_members(room_id):
            return True
        muc = self.client.plugin["xep_0045"]
        person = bare_jid(user_id) if is_xmpp(user_id) else ""
        for affiliation in ("owner", "admin", "member"):
            try:
                listed = await muc.get_affiliation_list(JID(jid), affiliation, timeout=15)
            except (IqError, IqTimeout):
                return False        # cannot be checked: closed
            if person in {str(JID(str(j)).bare) for j in listed}:
                return True
        return False

    # -- one-to-one chats ---------------------------------------------------------------

    def is_direct(self, room_id: str) -> bool:
        return room_id in self._directs

    def direct_rooms(self) -> dict[str, str]:
        return dict(self._directs)

    async def create_direct_room(self, user_id: str) -> str:
        ref = await self.resolve_room(user_id)
        await self._remember_direct(ref, ref)
        return ref

    async def leave_direct(self, room_id: str) -> None:
        if self._directs.pop(room_id, None) is not None:
            await self._store.put(DIRECTS_KEY, json.dumps(self._directs))

    async def _remember_direct(self, room: str, person: str) -> None:
        if self._directs.get(room) != person:
            self._directs[room] = person
            await self._store.put(DIRECTS_KEY, json.dumps(self._directs))

    # -- sending ------------------------------------------------------------------------

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        message = outgoing.message
        if message is None:
            return None          # queued whole by an older newsbot: a Matrix row
        image_ok = False
        if message.image is not None and images is not None:
            image_ok = await images.checked(message.image.url)
        if outgoing.kind == "image" and not image_ok:
            return None
        if outgoing.kind == "edit":
            if outgoing.relates_to is None:
                return None
            group = self._groups.get(bare_jid(outgoing.room)) if outgoing.room else None
            last = await self._last_ours(group) if group is not None else None
            if group is not None and last != outgoing.relates_to:
                # Clients apply a correction to the last message only (XEP-0308).
                log.info("%s: a correction is not sent: the item it corrects is no longer "
                         "the bot's last message there", outgoing.room)
                return None
        return encode(outgoing, message, image_ok)

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        self.session.check_ready()
        jid = bare_jid(room_id)
        group = self._groups.get(jid)
        if group is not None and group.removed:
            raise RoomUnavailableError(f"{room_id}: {group.removed}")
        if attempted_at is not None:
            found = await self.find_delivery(room_id, key)
            if found is not None:
                return Sent(found, already_there=True)
        if fence is not None and not fence():
            raise ClaimLapsedError
        stanza = self._stanza(jid, payload, key, group=group is not None)
        if group is not None and not group.joined:
            raise TemporaryTransportError(f"not in {room_id} (rejoining)")
        if fence is not None:
            # slixmpp writes from its own task, a turn of the event loop or more later:
            # asked again there, by _fence_filter.
            self._fences[key] = fence
        try:
            if group is None:
                stanza.send()
                await self._server_has_it()
            else:
                await self._reflected(room_id, key, stanza)
        finally:
            self._fences.pop(key, None)
            if key in self._held_back:
                self._held_back.discard(key)
                raise ClaimLapsedError
        return Sent(key)

    async def _reflected(self, room_id: str, key: str, stanza: Stanza) -> None:
        """Send a group chat message and wait for the group chat to reflect it."""
        reflected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reflections[key] = reflected
        try:
            stanza.send()
            async with asyncio.timeout(SEND_TIMEOUT):
                await reflected
        except TimeoutError as exc:
            if key in self._held_back:
                return      # never written: said by send()
            raise TemporaryTransportError(f"{room_id} did not reflect our message") from exc
        finally:
            self._reflections.pop(key, None)

    def _fence_filter(self, stanza: Any) -> Any:
        """The stream's last outgoing filter: a message whose send's claim lapsed while
        it waited in slixmpp's queue is dropped unwritten (None)."""
        key = str(stanza["id"] or "") if stanza.name == "message" else ""
        fence = self._fences.get(key) if key else None
        if fence is None or fence():
            return stanza
        self._held_back.add(key)
        waiting = self._reflections.get(key)
        if waiting is not None and not waiting.done():
            waiting.set_exception(TimeoutError())      # no reflection will come
        return None

    def _stanza(self, jid: str, payload: dict[str, Any], key: str, *, group: bool) -> Stanza:
        message = self.client.make_message(mto=jid, mbody=str(payload.get("body", "")),
                                           mtype="groupchat" if group else "chat")
        # The stanza id is the origin id: corrections (XEP-0308) name the stanza id.
        message["id"] = key
        message["origin_id"]["id"] = key
        if payload.get("oob"):
            message["oob"]["url"] = str(payload["oob"])
        if payload.get("replace"):
            message["replace"]["id"] = str(payload["replace"])
        if payload.get("reply_to"):
            message["reply"]["id"] = str(payload["reply_to"])
            for mention in payload.get("mentions", ()):
                if is_xmpp(str(mention)):
                    message["reply"]["to"] = str(mention)[len("xmpp:"):]
                    break
        return message

    async def _server_has_it(self) -> None:
        """The server handles a stream's stanzas in order: once it answered a ping sent
        after our message, it has the message (stored, archived, or routed)."""
        try:
            await self.client.plugin["xep_0199"].send_ping(
                self.client.boundjid.domain, timeout=SEND_TIMEOUT)
        except IqError:
            return      # an error answer is an answer: everything before it was handled
        except IqTimeout as exc:
            raise TemporaryTransportError("the XMPP server did not answer") from exc

    async def _ours_in_archive(self, jid: str, group: bool) -> AsyncGenerator[str, None]:
        """The origin ids of our messages in a group chat's archive (or, for a one-to-one
        chat, our own archive with that person), newest first, LOOKUP_DEPTH messages at
        most. IqTimeout becomes a temporary error; IqError (no archive) propagates."""
        mam = self.client.plugin["xep_0313"]
        results = mam.iterate(jid=JID(jid), reverse=True, rsm={"max": 100}) if group else \
            mam.iterate(with_jid=JID(jid), reverse=True, rsm={"max": 100})
        ours = self.session.bare_jid
        scanned = 0
        try:
            async for result in results:
                archived = result["mam_result"]["forwarded"]["stanza"]
                sender = archived["from"]
                mine = str(sender.resource) == self.account.nick if group \
                    else str(sender.bare) == ours
                origin = str(archived["origin_id"]["id"] or "")
                if mine and origin:
                    yield origin
                scanned += 1
                if scanned >= LOOKUP_DEPTH:
                    return
        except IqTimeout as exc:
            raise TemporaryTransportError(f"{ref_of(jid)}'s archive did not answer") from exc

    async def find_delivery(self, room_id: str, key: str) -> str | None:
        """Our message with this origin id in the room's (or our own) archive."""
        jid = bare_jid(room_id)
        group = self._groups.get(jid)
        if group is not None and key in group.ours:
            return key
        try:
            async with contextlib.aclosing(self._ours_in_archive(jid, group is not None)) \
                    as found:
                async for origin in found:
                    if origin == key:
                        return key
        except IqError as exc:
            if group is None or group.joined is False:
                raise TemporaryTransportError(f"{room_id}'s archive: {exc}") from exc
            # No archive here: the join's history was all there was to look at.
            log.info("%s keeps no archive; relying on the history shown at join", room_id)
        return None

    async def _last_ours(self, group: GroupChat) -> str | None:
        """The origin id of our last message in a group chat: known since we joined, or
        read from the archive's end."""
        if group.last_ours is None:
            # No archive: unknown, and no correction is sent.
            with contextlib.suppress(IqError):
                async with contextlib.aclosing(self._ours_in_archive(group.jid, True)) \
                        as found:
                    async for origin in found:
                        group.last_ours = origin
                        break
        return group.last_ours

    async def upload_media(self, data: bytes, content_type: str, filename: str) -> str:
        raise RoomUnavailableError("XMPP messages show pictures by their address")

    # -- incoming -----------------------------------------------------------------------

    async def run_sync(self, handlers: EventHandlers) -> None:
        """Incoming stanzas arrive through slixmpp's handlers; this only holds them."""
        self._handlers = handlers
        try:
            await asyncio.Event().wait()
        finally:
            self._handlers = None

    @staticmethod
    def _stanza_id(message: Stanza, by: str) -> str:
        stanza_id = message["stanza_id"]
        if stanza_id["id"] and str(stanza_id["by"]) == by:
            return str(stanza_id["id"])
        return str(message["id"] or "")

    def _on_groupchat(self, message: Stanza) -> None:
        room = str(message["from"].bare)
        group = self._groups.get(room)
        if group is None:
            return
        nick = str(message["mucnick"])
        if nick == self.account.nick:
            origin = str(message["origin_id"]["id"] or "")
            if origin:
                group.remember(origin, self._stanza_id(message, room))
                waiting = self._reflections.get(origin)
                if waiting is not None and not waiting.done():
                    waiting.set_result(origin)
            return
        if message.get_plugin("delay", check=True) is not None:
            return              # history shown at join: from before the bot was there
        body = str(message["body"] or "")
        if not body or message.get_plugin("replace", check=True) is not None:
            return
        self._incoming(IncomingMessage(
            room_id=ref_of(room), sender=self._occupant_ref(room, nick),
            event_id=self._stanza_id(message, room), body=body,
            timestamp_ms=int(time.time() * 1000)))

    def _on_subject(self, message: Stanza) -> None:
        group = self._groups.get(str(message["from"].bare))
        if group is not None:
            group.subject = str(message["subject"] or "")

    def _on_message(self, message: Stanza) -> None:
        if message["type"] not in ("chat", "normal"):
            return
        sender = message["from"]
        if str(sender.bare) in self._groups or not sender.user:
            return      # a private message through a group chat, or a server: not a person
        if message.get_plugin("delay", check=True) is not None:
            return
        body = str(message["body"] or "")
        if not body or message.get_plugin("replace", check=True) is not None:
            return
        person = ref_of(str(sender.bare))
        # Our server's stanza-id (XEP-0359) when it gives one: unlike the sender's own
        # id, nobody else chooses it, so a reused id cannot silence a reply.
        incoming = IncomingMessage(room_id=person, sender=person,
                                   event_id=self._stanza_id(message, self.session.bare_jid),
                                   body=body,
                                   timestamp_ms=int(time.time() * 1000))
        self._spawn(self._from_person(person, incoming))

    async def _from_person(self, person: str, incoming: IncomingMessage) -> None:
        """A person writing to the bot opens a conversation, as an invitation does on
        Matrix: the same rules decide whether the bot takes it."""
        handlers = self._handlers
        if handlers is None:
            return
        if person not in self._directs:
            answer = await handlers.on_invite(person, person, True)
            if answer is not True:
                return
            await self._remember_direct(person, person)
        self._incoming(incoming)

    def _incoming(self, incoming: IncomingMessage) -> None:
        if self._handlers is not None and self._handlers.on_message is not None:
            self._handlers.on_message(incoming)

    def _on_message_error(self, message: Stanza) -> None:
        waiting = self._reflections.get(str(message["id"] or ""))
        if waiting is None or waiting.done():
            return
        condition = str(message["error"]["condition"] or "")
        if condition in ("forbidden", "not-allowed", "not-acceptable", "item-not-found"):
            waiting.set_exception(RoomUnavailableError(
                f"{ref_of(str(message['from'].bare))} refused our message: {condition}"))
        else:
            waiting.set_exception(TemporaryTransportError(f"message refused: {condition}"))

    def _on_room_presence(self, presence: Presence) -> None:
        room = str(presence["from"].bare)
        group = self._groups.get(room)
        if group is None or str(presence["from"].resource) != self.account.nick:
            return
        if presence["type"] != "unavailable":
            return
        codes = {int(status) for status in presence["muc"]["status_codes"]}
        why = "banned" if 301 in codes else "kicked" if 307 in codes else \
            "removed" if codes & {321, 322, 332} else None
        group.joined = False
        if why is not None and group.removed is None:
            group.removed = why
            log.warning("%s: the bot was %s; deliveries there wait", ref_of(room), why)

    def _on_direct_invite(self, message: Stanza) -> None:
        invite = message["groupchat_invite"]
        self._invited(str(invite["jid"]), str(message["from"].bare))

    def _on_mediated_invite(self, message: Stanza) -> None:
        invite = message["muc"]["invite"]
        self._invited(str(message["from"].bare), str(invite["from"].bare))

    def _invited(self, room: str, inviter: str) -> None:
        if self._handlers is None or not room:
            return
        self._spawn(self._answer_invite(ref_of(room),
                                                                   ref_of(inviter)))

    async def _answer_invite(self, room: str, inviter: str) -> None:
        assert self._handlers is not None
        if await self._handlers.on_invite(room, inviter, False) is not True:
            return
        group = self._groups.get(bare_jid(room))
        if group is not None:
            group.removed = None     # invited back after a kick or a ban
        try:
            await self.join_room(room)
        except (TemporaryTransportError, RoomUnavailableError) as exc:
            log.warning("could not join %s after an invitation: %s", room, exc)
            return
        if self._handlers is not None and self._handlers.on_joined is not None:
            self._handlers.on_joined(room)
