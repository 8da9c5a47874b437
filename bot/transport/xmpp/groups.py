"""Announcement rooms as XMPP group chats: created as declared or corrected at start.

A group chat is configured through its owner's form (XEP-0045 §10): persistent, listed and
open (public) or members only, moderated (only those with voice speak: visitors read), its
name and description, and the subject only moderators change. The bot creates the room by
joining it first (it is then its owner); a room it does not own cannot be corrected, and
that is reported rather than ignored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from bot.errors import TemporaryTransportError
from bot.transport.base import GroupChatReport, GroupChatSpec
from bot.transport.xmpp.addresses import bare_jid

if TYPE_CHECKING:
    from bot.transport.xmpp import XmppTransport

log = logging.getLogger(__name__)

ROOM_CONFIG = "http://jabber.org/protocol/muc#roomconfig"
_LABELS = {
    "muc#roomconfig_persistentroom": "persistent",
    "muc#roomconfig_publicroom": "listed publicly",
    "muc#roomconfig_membersonly": "members only",
    "muc#roomconfig_moderatedroom": "moderated",
    "muc#roomconfig_changesubject": "occupants may change the subject",
    "muc#roomconfig_roomname": "name",
    "muc#roomconfig_roomdesc": "description",
}


def wanted_config(spec: GroupChatSpec) -> dict[str, bool | str]:
    wanted: dict[str, bool | str] = {
        "muc#roomconfig_persistentroom": True,
        "muc#roomconfig_publicroom": spec.public,
        "muc#roomconfig_membersonly": not spec.public,
        "muc#roomconfig_moderatedroom": True,
        "muc#roomconfig_changesubject": False,
    }
    if spec.name is not None:
        wanted["muc#roomconfig_roomname"] = spec.name
    if spec.description is not None:
        wanted["muc#roomconfig_roomdesc"] = spec.description
    return wanted


def _current(value: Any, like: bool | str) -> bool | str:
    if isinstance(like, bool):
        return value in (True, "1", "true")
    return "" if value is None else str(value)


class GroupAdmin:
    def __init__(self, transport: XmppTransport) -> None:
        self._transport = transport
        self._client = transport.client

    async def ensure_group(self, spec: GroupChatSpec) -> GroupChatReport:
        report = GroupChatReport()
        jid = bare_jid(spec.address)
        report.created = await self._transport.join_group(spec.address)
        muc = self._client.plugin["xep_0045"]
        try:
            form = await muc.get_room_config(JID(jid), timeout=15)
        except IqTimeout as exc:
            raise TemporaryTransportError(f"{spec.address} did not answer") from exc
        except IqError as exc:
            report.problems.append(
                f"cannot read its configuration ({exc.condition}): the bot is not its owner, "
                "so it is left as it is")
            return report
        fields = form.get_fields()
        changes: dict[str, bool | str] = {}
        for var, value in wanted_config(spec).items():
            if var not in fields:
                report.problems.append(f"the service offers no setting for "
                                       f"'{_LABELS[var]}'")
                continue
            now = _current(fields[var]["value"], value)
            if now != value:
                changes[var] = value
                if not report.created:
                    report.corrections.append(f"{_LABELS[var]}: {now!r} -> {value!r}")
        if changes or report.created:
            # A new room may be locked until its owner submits a form: submit even then.
            submit = self._client.plugin["xep_0004"].make_form(ftype="submit")
            submit.add_field(var="FORM_TYPE", ftype="hidden", value=ROOM_CONFIG)
            for var, value in changes.items():
                submit.add_field(var=var, value=value)
            try:
                await muc.set_room_config(JID(jid), submit, timeout=15)
            except (IqError, IqTimeout) as exc:
                report.problems.append(f"its configuration was refused: {exc}")
                report.corrections.clear()
        await self._moderators(spec, report)
        if report.created and spec.description:
            await self.set_group_subject(spec.address, spec.description)
        return report

    async def _moderators(self, spec: GroupChatSpec, report: GroupChatReport) -> None:
        if not spec.moderators:
            return
        muc = self._client.plugin["xep_0045"]
        jid = JID(bare_jid(spec.address))
        try:
            ranked = {str(JID(str(j)).bare) for affiliation in ("owner", "admin")
                      for j in await muc.get_affiliation_list(jid, affiliation, timeout=15)}
            for person in spec.moderators:
                person_jid = bare_jid(person)
                if person_jid in ranked:
                    continue        # never lowered: an owner stays an owner
                await muc.set_affiliation(jid, "admin", jid=JID(person_jid), timeout=15)
                if not report.created:
                    report.corrections.append(f"{person} made a moderator (admin)")
        except (IqError, IqTimeout) as exc:
            report.problems.append(f"could not give moderators their rights: {exc}")

    async def group_subject(self, room: str) -> str:
        return self._transport.subject_of(room)

    async def set_group_subject(self, room: str, subject: str) -> None:
        self._transport.session.check_ready()
        self._client.plugin["xep_0045"].set_subject(JID(bare_jid(room)), subject)
