"""A network-neutral Message as an XMPP message: plain text every client reads.

The body is the message's plain text (title, date, summary, the link on its own line),
with the title set in XEP-0393 styling (``*title*``) and nothing else assumed of the
client. A picture travels as its address in XEP-0066 out-of-band data, which clients show
inline, and only once it passed the same fetch checks as for Matrix. Text from a feed can
hold characters XML 1.0 cannot carry; a server closes the stream of whoever sends one, so
they are dropped here, the one place every message passes.
"""

from __future__ import annotations

import re
from typing import Any

from bot.model import Message, Outgoing

# Characters XML 1.0 forbids (C0 controls but tab/newline/return, lone surrogates,
# U+FFFE/U+FFFF), and bidi overrides that would let a title reverse what follows it.
_NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
                         "\u202a-\u202e\u2066-\u2069]")
# Longest body sent: a hostile feed cannot make the bot send megabytes into a room.
MAX_BODY_CHARS = 20_000


def xml_text(text: str) -> str:
    return _NOT_XML_RE.sub("", text)


def styled_body(message: Message) -> str:
    """The plain body, its first line set in bold when the HTML opens with that title.

    XEP-0393 styling spans one line and must touch non-space characters at both ends; a
    title holding the directive itself is left plain rather than half styled.
    """
    body = xml_text(message.body)[:MAX_BODY_CHARS]
    first, sep, rest = body.partition("\n")
    title = first.strip()
    if title and title == first and "*" not in title and \
            message.html.lstrip().startswith(("<p><strong>", "<strong>")):
        return f"*{title}*{sep}{rest}"
    return body


def encode(outgoing: Outgoing, message: Message, image_ok: bool) -> dict[str, Any]:
    """The payload stored for a row: what ``send`` puts into the stanza."""
    payload: dict[str, Any] = {"body": styled_body(message)}
    if outgoing.kind == "image":
        assert message.image is not None
        payload["body"] = xml_text(message.image.url)
    if message.image is not None and image_ok:
        payload["oob"] = xml_text(message.image.url)
    if outgoing.kind == "edit" and outgoing.relates_to:
        payload["replace"] = outgoing.relates_to
    if outgoing.kind in ("reply", "goodbye") and outgoing.relates_to:
        payload["reply_to"] = outgoing.relates_to
    if message.mentions:
        payload["mentions"] = list(message.mentions)
    return payload
