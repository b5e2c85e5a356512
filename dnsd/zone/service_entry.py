"""The answers a ClusterIP Service's one index entry (records.ServiceData) stands for.

Given the entry at the Service's name ``base``: A/AAAA at ``base`` (its addresses, sorted), an SRV
there per port number (``0 100 <port> base``), an SRV per named port at ``_<port>._<proto>.base``,
and ``_<proto>.base`` an empty non-terminal: exactly what records.cluster_ip_records() spells out.
No other owner has records at these names (a Service's name is its own, and the ``_`` names are
below it), so they are answered from the entry alone, when asked: replies are cached.

Pure functions of (base, entry); the index finds the entry (index.py).
"""

from __future__ import annotations

from dnsd.dns.const import AAAA, SRV, A
from dnsd.zone.records import ServiceData, SrvData

_SHARED_MAX = 4096  # a cluster has few distinct port lists: the tables below never grow for ever
# A port list -> the prefixes of the names below a Service it makes ("_tcp.", "_http._tcp."), and how
# many SRV records it stands for (one per port number at the name, one per named port below it).
_prefixes: dict[tuple[object, ...], tuple[str, ...]] = {}
_srv_counts: dict[tuple[object, ...], int] = {}


def below_names(base: str, data: ServiceData) -> list[str]:
    """The names below ``base`` that the entry makes exist: ``_<proto>.base`` and ``_<port>._<proto>.base``."""
    prefixes = _prefixes.get(data.ports)
    if prefixes is None:
        named = [(f"_{p.protocol}.", f"_{p.name}._{p.protocol}.") for p in data.ports if p.name]
        prefixes = tuple(dict.fromkeys([proto for proto, _ in named] + [port for _, port in named]))
        if len(_prefixes) >= _SHARED_MAX:
            _prefixes.clear()
        _prefixes[data.ports] = prefixes
    return [prefix + base for prefix in prefixes]


def size(data: ServiceData) -> int:
    """How many records the entry stands for."""
    count = _srv_counts.get(data.ports)
    if count is None:
        count = len({p.port for p in data.ports}) + len({p for p in data.ports if p.name})
        if len(_srv_counts) >= _SHARED_MAX:
            _srv_counts.clear()
        _srv_counts[data.ports] = count
    return len(data.ips) + count


def rrset(base: str, data: ServiceData, name: str, rtype: int) -> tuple[object, ...]:
    """The rrset of ``name`` (``base`` or a name below it) and ``rtype``, sorted as the index sorts records."""
    if name == base:
        if rtype == A:
            return tuple(sorted(ip for ip in data.ips if ":" not in ip))
        if rtype == AAAA:
            return tuple(sorted(ip for ip in data.ips if ":" in ip))
        if rtype == SRV:
            return tuple(sorted({SrvData(0, 100, p.port, base) for p in data.ports}))
        return ()
    if rtype != SRV:
        return ()
    port, _, rest = name.partition(".")
    proto, _, under = rest.partition(".")
    if under != base or port[:1] != "_" or proto[:1] != "_":
        return ()
    port, proto = port[1:], proto[1:]
    return tuple(sorted({SrvData(0, 100, p.port, base) for p in data.ports if p.name == port and p.protocol == proto}))


def has_children(base: str, data: ServiceData, name: str) -> bool:
    """Whether ``name`` (``base`` or ``_<proto>.base``) has names below it that the entry makes exist."""
    if name == base:
        return any(p.name for p in data.ports)
    proto, _, under = name.partition(".")
    return under == base and proto[:1] == "_" and any(p.name and p.protocol == proto[1:] for p in data.ports)


def owner(name: str) -> str | None:
    """The name of the Service whose entry could answer for ``name`` below it (``_<proto>.base`` or
    ``_<port>._<proto>.base``): ``base``; None for a name that cannot be one."""
    if name[:1] != "_":
        return None
    rest = name.partition(".")[2]
    return rest.partition(".")[2] if rest[:1] == "_" else rest


__all__ = ["below_names", "has_children", "owner", "rrset", "size"]
