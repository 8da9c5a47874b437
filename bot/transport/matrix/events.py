"""Matrix messages: an outbox row's network-neutral message turned into event content, and
sent exactly once.

Idempotency on Matrix has two parts: the transaction id derives from the row's delivery
key (a resend within the homeserver's memory of it returns the first event), and every
event carries that key in its content (a resend after the homeserver forgot the
transaction id is preceded by a look into the room's recent events).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from bot.clean import defang_text
from bot.model import Message, Outgoing, Sent
from bot.render import sanitize_html

if TYPE_CHECKING:
    from bot.media import ImageSource
    from bot.store import MediaRow

log = logging.getLogger(__name__)

# Every event we send carries its delivery key under this content key, so a delivery whose
# acknowledgement was lost can be recognised in the room's history.
DELIVERY_KEY_FIELD = "org.interhop.newsbot.delivery"
# Rows queued by newsbot before schema 7 carry this placeholder for their picture.
LEGACY_IMAGE_FIELD = "org.interhop.newsbot.image"
# Less than Synapse's 30 minutes, to leave room for clock drift and slow requests.
TXN_MEMORY_SECONDS = 25 * 60
DISPLAY_WIDTH = 640
HTML_FORMAT = "org.matrix.custom.html"


def txn_id_for(key: str) -> str:
    return f"newsbot.{key}"


def message_content(message: Message, *, key: str) -> dict[str, Any]:
    """An m.room.message for a message: plain and HTML bodies, and nobody pinged but the
    people it addresses."""
    content: dict[str, Any] = {
        "msgtype": "m.notice" if message.notice else "m.text",
        "body": message.body,
        "format": HTML_FORMAT,
        "formatted_body": message.html,
        "m.mentions": {"user_ids": list(message.mentions)} if message.mentions else {},
        DELIVERY_KEY_FIELD: key,
    }
    return content


def edit_content(new: dict[str, Any], *, original_event_id: str, key: str) -> dict[str, Any]:
    """An m.replace edit showing ``new`` (a message_content) in place of the original."""
    replacement = {k: v for k, v in new.items()
                   if k in ("msgtype", "body", "format", "formatted_body")}
    replacement["m.mentions"] = {}
    # What clients without edit support show: "* " and the title only, so that the edit
    # (which carries the whole new version in m.new_content) stays within the size limit.
    title = str(new["body"]).split("\n", 1)[0]
    return {
        "msgtype": new["msgtype"],
        "body": f"* {title}",
        "format": HTML_FORMAT,
        "formatted_body": f"* {html.escape(title, quote=False)}",
        "m.new_content": replacement,
        "m.relates_to": {"rel_type": "m.replace", "event_id": original_event_id},
        "m.mentions": {},
        DELIVERY_KEY_FIELD: key,
    }


def image_content(media: MediaRow, *, alt: str, key: str) -> dict[str, Any]:
    """A picture as its own m.image event."""
    return {"msgtype": "m.image", "body": alt[:200] or "image", "m.mentions": {},
            "url": media.mxc, "info": {"mimetype": media.mimetype, "size": media.size,
                                       "w": media.width, "h": media.height},
            DELIVERY_KEY_FIELD: key}


def with_inline_image(formatted: str, media: MediaRow, alt: str) -> str:
    width, height = media.width or 0, media.height or 0
    if width > DISPLAY_WIDTH:
        height = round(height * DISPLAY_WIDTH / width)
        width = DISPLAY_WIDTH
    tag = (f'<p><img src="{html.escape(media.mxc or "")}" alt="{html.escape(alt)}" '
           f'width="{width}" height="{height}"></p>')
    # After the title paragraph: the picture illustrates the item, it does not lead it.
    match = re.search(r"</p>", formatted)
    if match is None:
        return tag + formatted
    return formatted[:match.end()] + tag + formatted[match.end():]


def safe_event_content(content: dict[str, Any]) -> dict[str, Any]:
    """``content`` as it may leave the bot: its HTML (and an edit's) through the one
    sanitiser, its plain text with hostile addresses broken (``defang_text``).

    Called on every message sent, whichever feature wrote it, so no code path (a reply,
    a digest, a row queued by an older newsbot) can send an unsafe link. Idempotent; a
    message rendered by bot.render comes out unchanged.
    """
    safe = _safe_text_fields(content)
    replacement = safe.get("m.new_content")
    if isinstance(replacement, dict):
        safe["m.new_content"] = _safe_text_fields(replacement)
    return safe


def _safe_text_fields(content: dict[str, Any]) -> dict[str, Any]:
    safe = dict(content)
    body, formatted = safe.get("body"), safe.get("formatted_body")
    if isinstance(body, str):
        safe["body"] = defang_text(body)
    if isinstance(formatted, str):
        safe["formatted_body"] = defang_text(sanitize_html(formatted, images=True))
    return safe


class _Client(Protocol):
    login_generation: int

    async def send_message(self, room_id: str, content: dict[str, Any], txn_id: str,
                           fence: Callable[[], bool] | None = None) -> str: ...

    async def find_delivery(self, room_id: str, key: str, *,
                            max_events: int = 500) -> str | None: ...


class MatrixMessages:
    """Encodes an outbox row for Matrix, and sends it exactly once."""

    def __init__(self, client: _Client, *, shared: bool = False) -> None:
        self._client = client
        # Login generation of each attempt made by this process: after a re-login the
        # homeserver may no longer recognise our earlier transaction ids.
        self._attempt_generation: dict[str, int] = {}
        # Several instances on one database: a row attempted by another process may have
        # been attempted by another instance's device, whose transaction ids are not ours.
        self._shared = shared

    async def prepare(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        """The event content to send for a row (its picture uploaded), or None when there
        is nothing to show (a picture of its own that cannot be shown)."""
        message = outgoing.message
        if message is None:
            return await self._legacy(outgoing, images)
        if outgoing.kind == "image":
            media = await _image(images, message.image.url) if message.image else None
            if media is None or message.image is None:
                return None
            return image_content(media, alt=message.image.alt, key=outgoing.key)
        content = message_content(message, key=outgoing.key)
        if message.image is not None and message.image.mode == "inline":
            media = await _image(images, message.image.url)
            if media is not None:
                content["formatted_body"] = with_inline_image(
                    content["formatted_body"], media, message.image.alt)
        if outgoing.kind == "edit":
            if outgoing.relates_to is None:
                return None
            return edit_content(content, original_event_id=outgoing.relates_to,
                                key=outgoing.key)
        if outgoing.kind in ("reply", "goodbye") and outgoing.relates_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": outgoing.relates_to}}
        return content

    async def _legacy(self, outgoing: Outgoing,
                      images: ImageSource | None) -> dict[str, Any] | None:
        """A row queued by newsbot before schema 7: its event content, as it was meant to
        be sent (its picture resolved, an edit made an m.replace of its original)."""
        content = dict(outgoing.payload or {})
        wanted = content.pop(LEGACY_IMAGE_FIELD, None)
        if isinstance(wanted, dict):
            url, alt = str(wanted.get("url")), str(wanted.get("alt", ""))
            media = await _image(images, url)
            if wanted.get("mode") == "separate":
                if media is None:
                    return None
                content.update(image_content(media, alt=alt, key=outgoing.key))
            elif media is not None and isinstance(content.get("formatted_body"), str):
                content["formatted_body"] = with_inline_image(content["formatted_body"],
                                                              media, alt)
        if outgoing.kind == "edit" and "m.new_content" not in content:
            if outgoing.relates_to is None:
                return None
            content = edit_content(content, original_event_id=outgoing.relates_to,
                                   key=outgoing.key)
        return content

    async def send(self, room_id: str, payload: dict[str, Any], key: str, *,
                   attempted_at: float | None, now: float,
                   fence: Callable[[], bool] | None = None) -> Sent:
        """Send a row's payload; the event id. A row attempted before may already be in
        the room: after the homeserver may have forgotten our transaction id, it is looked
        for (by its delivery key) before it is sent again."""
        if self._txn_may_be_forgotten(key, attempted_at, now):
            found = await self._client.find_delivery(room_id, key)
            if found is not None:
                return Sent(found, already_there=True)
        self._attempt_generation[key] = self._client.login_generation
        if fence is None:
            event_id = await self._client.send_message(room_id, payload, txn_id_for(key))
        else:
            event_id = await self._client.send_message(room_id, payload, txn_id_for(key),
                                                       fence=fence)
        self._attempt_generation.pop(key, None)
        return Sent(event_id)

    def _txn_may_be_forgotten(self, key: str, attempted_at: float | None, now: float) -> bool:
        if attempted_at is None:
            return False           # never tried: nothing to find
        if self._shared:
            # Several instances: another may have sent it (from its own device) since this
            # one tried, whoever tried first.
            return True
        if now - attempted_at > TXN_MEMORY_SECONDS:
            return True
        ours = self._attempt_generation.get(key)
        if ours is not None:
            return ours != self._client.login_generation
        # Attempted by an earlier process of this device, under login generation 0: its
        # transaction id is still known.
        return self._client.login_generation != 0


async def _image(images: ImageSource | None, url: str) -> MediaRow | None:
    return None if images is None else await images.image(url)
