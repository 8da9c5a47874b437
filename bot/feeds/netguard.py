"""Which hosts and network addresses the fetcher may connect to (the SSRF policy).

Pure functions only: the fetcher applies them to the host of every URL (first one and
each redirect), to literal IPs in URLs and to every address its DNS resolver returns,
at connect time.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# (host as written in the URL, one of its addresses) -> why it is refused, or None.
AddressPolicy: TypeAlias = Callable[[str, IPAddress], str | None]

_RFC1918 = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_ULA = ipaddress.IPv6Network("fc00::/7")
# NAT64 well-known prefix: on an IPv6-only network with DNS64 every IPv4-only site
# resolves into it, so judge the IPv4 address it carries rather than refuse it wholesale.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address forwards to, for the forms that reach it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # 6to4 (2002::/16) routes to the IPv4 address in bits 16..48.
    return ip.sixtofour


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from by default, as a noun phrase; None if public.

    >>> blocked_reason(ipaddress.ip_address("127.0.0.1"))
    'a loopback address'
    """
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            inner_reason = blocked_reason(inner)
            if inner_reason is None:
                return None
            return f"an IPv6 address embedding {inner}, {inner_reason}"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address):
        if any(ip in net for net in _RFC1918):
            return "a private (RFC 1918) address"
        if ip in _CGNAT:
            return "a carrier-grade NAT (100.64.0.0/10) address"
    else:
        if ip in _ULA:
            return "a unique local (fc00::/7) address"
        if ip.is_site_local:
            return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    # Documentation, benchmarking, 0.0.0.0/8, Teredo and the like: not reachable on
    # the public internet, so nothing a public feed can legitimately live on.
    if not ip.is_global:
        return "a non-public address"
    return None


def default_policy(host: str, ip: IPAddress) -> str | None:
    """The policy used unless private networks are allowed: judge the address alone."""
    del host  # the same address is as dangerous under any name
    return blocked_reason(ip)


# One DNS label: letters, digits and hyphens, 1 to 63 of them, no hyphen at either end.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII | re.IGNORECASE)
# A last label that URL parsers (WHATWG's "ends in a number") and the C library read as
# a number, which makes the whole host an IPv4 address in some legacy spelling.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.ASCII | re.IGNORECASE)


def host_problem(host: str) -> str | None:
    """Why ``host`` (as written in a URL, IDNA-encoded) may not be fetched from whatever
    the address policy; None for a canonical IP literal or a valid DNS name.

    ``2130706433``, ``127.1``, ``0177.0.0.1`` or ``0x7f.1`` are 127.0.0.1 to the C
    library but no IP address to Python, so an address check that trusts one parser
    while the socket uses the other is bypassed (aiohttp before 3.14.1 connected to
    them without asking the resolver). Such spellings have no legitimate use: refused.

    >>> host_problem("127.1")
    "host '127.1' is neither a canonical IP address nor a DNS name"
    """
    refused = f"host {host[:100]!r} is neither a canonical IP address nor a DNS name"
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed or ":" in host:  # yarl gives IPv6 hosts without their brackets
        try:
            ipaddress.IPv6Address(host[1:-1] if bracketed else host)
        except ValueError:
            return refused
        return None
    try:
        ipv4 = ipaddress.IPv4Address(host)
    except ValueError:
        ipv4 = None
    if ipv4 is not None:
        # Python's parser takes the dotted quad only: four decimal parts, no leading zero.
        return None if str(ipv4) == host else refused
    name = host.removesuffix(".")  # a fully qualified name's root dot
    labels = name.split(".")
    if (len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
            or _NUMERIC_LABEL.fullmatch(labels[-1])):
        return refused
    try:
        # Whatever else the C library would read as an IPv4 address (belt and braces:
        # the rules above already refuse every form it is known to accept).
        socket.inet_aton(host)
    except OSError:
        return None
    return refused


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is a literal one (brackets and zone allowed)."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def refusal_message(host: str, ip: IPAddress, reason: str) -> str:
    """The one-line error shown when ``host`` is refused because of ``ip``."""
    where = f"{host} is" if host == str(ip) or parse_ip(host) == ip else f"{host} resolves to {ip},"
    return f"{where} {reason}; set fetch.allow_private_networks to allow"
