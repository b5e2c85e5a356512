"""IP addresses as the model keeps them: checked and canonical, and an endpoint's packed.

A Service's addresses are text (its A and PTR records use them as they are). An endpoint's are
held in binary, all of a Subset's in one bytes object (``pack``): a million endpoints are a million
addresses that only a headless Service's records read, so 4 (or 16) bytes each rather than their
text and a separator (docs/performance.md). ``unpack`` gives back the text ``canonical_ip`` would
have given.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

# A packed sequence's first byte: every address is 4 bytes (4), every one 16 (6), or each follows its length (0).
_V4, _V6 = 4, 6
_V4_LEAD, _V6_LEAD = bytes((_V4,)), bytes((_V6,))
_inet_pton, _inet_ntop, _AF_INET = socket.inet_pton, socket.inet_ntop, socket.AF_INET


def canonical_ip(value: Any) -> str:
    """``value`` as an IPv4 or IPv6 address in canonical text; ValueError if it is not one."""
    text = value if value.__class__ is str else str(value)
    try:
        # inet_pton is much cheaper than ipaddress, and as strict for IPv4 (no leading zeros, no short
        # forms, no spaces): what it takes is written canonically already, so no inet_ntop back.
        _inet_pton(_AF_INET, text)
        return text
    except OSError:
        pass
    return str(_parsed(text, value))


def packed_ip(value: Any) -> bytes:
    """``value`` as an address in binary (4 or 16 bytes); ValueError if it is not one, or names a scope
    (``fe80::1%eth0``: no record can carry that)."""
    text = value if value.__class__ is str else str(value)
    try:
        return _inet_pton(_AF_INET, text)  # the common case, and the cheap one: once per endpoint
    except OSError:
        pass
    ip = _parsed(text, value)
    if getattr(ip, "scope_id", None):
        raise ValueError(f"bad IP address {value!r}: an endpoint's address has no scope")
    return ip.packed


def _parsed(text: str, value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The slow path of both: ``ipaddress``, for what ``inet_pton`` refused as IPv4."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"bad IP address {value!r}") from None


def pack(addresses: list[bytes]) -> bytes:
    """Addresses from ``packed_ip`` as one bytes object, in order (b"" for none)."""
    if not addresses:
        return b""
    data = b"".join(addresses)
    if len(data) == 4 * len(addresses):  # 4 and 16 bytes mixed never add up to 4 or 16 a piece
        return _V4_LEAD + data
    if len(data) == 16 * len(addresses):
        return _V6_LEAD + data
    return b"\x00" + b"".join([bytes((len(a),)) + a for a in addresses])


def unpack(data: bytes) -> list[str]:
    """The addresses ``pack`` was given, as canonical text (what ``canonical_ip`` gives)."""
    if not data:
        return []
    kind = data[0]
    if kind == _V4:
        return [_inet_ntop(_AF_INET, data[i : i + 4]) for i in range(1, len(data), 4)]
    if kind == _V6:
        return [_text(data[i : i + 16]) for i in range(1, len(data), 16)]
    out, i = [], 1
    while i < len(data):
        size = data[i]
        out.append(_text(data[i + 1 : i + 1 + size]))
        i += 1 + size
    return out


def _text(packed: bytes) -> str:
    return _inet_ntop(_AF_INET, packed) if len(packed) == 4 else str(ipaddress.IPv6Address(packed))


__all__ = ["canonical_ip", "pack", "packed_ip", "unpack"]
