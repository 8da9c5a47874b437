"""XMPP addresses as rooms are named in the configuration and in the outbox.

A target on XMPP is written ``xmpp:`` followed by a bare JID: ``xmpp:news@conference.example.org``
is a group chat, ``xmpp:person@example.org`` a one-to-one chat. People are named the same
way (``xmpp:alice@example.org``), so that an XMPP id never looks like a Matrix one.
"""

from __future__ import annotations

from bot.model import XMPP_ADDRESS_RE, XMPP_PREFIX, network_of

PREFIX = XMPP_PREFIX


def is_xmpp(ref: str) -> bool:
    return network_of(ref) == "xmpp"


def bare_jid(ref: str) -> str:
    """The bare JID of an ``xmpp:`` reference (domain lowercased), or ValueError."""
    if not is_xmpp(ref):
        raise ValueError(f"{ref!r} is not an xmpp: address")
    jid = ref[len(PREFIX):].split("?", 1)[0]
    if not XMPP_ADDRESS_RE.fullmatch(PREFIX + jid):
        raise ValueError(f"{ref!r} is not an address like xmpp:room@conference.example.org")
    local, domain = jid.split("@", 1)
    return f"{local}@{domain.lower()}"


def ref_of(jid: str) -> str:
    """The reference naming a bare JID (any resource dropped)."""
    return PREFIX + jid.split("/", 1)[0]
