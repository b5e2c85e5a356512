"""The answers a ClusterIP Service's one index entry (records.ServiceData) stands for.

Given the entry at the Service's name ``base``: A/AAAA at ``base`` (its addresses, sorted), an SRV
there per port number (``0 100 <port> base``), an SRV per named port at ``_<port>._<proto>.base``,
and ``_<proto>.base`` an empty non-terminal: exactly what records.cluster_ip_records() spells out.
No other owner has records at these names (a Service's name is its own, and the ``_`` names are
below it), so they are answered from the entry alone, when asked: replies are cached.

Pure functions of (base, entry); the index finds the entry (index.py).
"""

from __future__ import annotations

from typing import NamedTuple

from dnsd.cluster.ports import Port
from dnsd.dns.const import AAAA, SRV, A
from dnsd.zone.records import ServiceData, SrvData


class _Shape(NamedTuple):
    """What a port list makes of any Service holding it, worked out once per distinct list (a cluster
    has few, shared by every Service): answering is then a lookup and one SrvData per port."""

    below: tuple[str, ...]  # prefixes of the names below the Service's: "_tcp.", "_http._tcp."
    protos: frozenset[str]  # the ``_<proto>.`` prefixes among them: empty non-terminals
    bare: tuple[int, ...]  # the port numbers of the name's own SRV, one each, sorted
    named: dict[str, tuple[int, ...]]  # "_<port>._<proto>." -> its port numbers, sorted
    srvs: int  # SRV records the list stands for: one per port number, one per named port


_SHARED_MAX = 4096  # a cluster has few distinct port lists: never growing for ever
_shapes: dict[tuple[Port, ...], _Shape] = {}


def _shape(ports: tuple[Port, ...]) -> _Shape:
    shape = _shapes.get(ports)
    if shape is None:
        named: dict[str, set[int]] = {}
        for p in ports:
            if p.name:
                named.setdefault(f"_{p.name}._{p.protocol}.", set()).add(p.port)
        protos = dict.fromkeys(f"_{p.protocol}." for p in ports if p.name)
        bare = tuple(sorted({p.port for p in ports}))
        shape = _Shape((*protos, *named), frozenset(protos), bare,
                       {prefix: tuple(sorted(numbers)) for prefix, numbers in named.items()},
                       len(bare) + sum(map(len, named.values())))
        if len(_shapes) >= _SHARED_MAX:
            _shapes.clear()
        _shapes[ports] = shape
    return shape


def below_names(base: str, data: ServiceData) -> list[str]:
    """The names below ``base`` that the entry makes exist: ``_<proto>.base`` and ``_<port>._<proto>.base``."""
    return [prefix + base for prefix in _shape(data.ports).below]


def size(data: ServiceData) -> int:
    """How many records the entry stands for."""
    return len(data.ips) + _shape(data.ports).srvs


def rrset(base: str, data: ServiceData, name: str, rtype: int) -> tuple[object, ...]:
    """The rrset of ``name`` (``base`` or a name below it) and ``rtype``, sorted as the index sorts records."""
    if name == base:
        if rtype == A:
            return tuple(sorted(ip for ip in data.ips if ":" not in ip))
        if rtype == AAAA:
            return tuple(sorted(ip for ip in data.ips if ":" in ip))
        numbers = _shape(data.ports).bare if rtype == SRV else ()
    else:
        numbers = _shape(data.ports).named.get(_prefix(base, name), ()) if rtype == SRV else ()
    return tuple([SrvData(0, 100, port, base) for port in numbers])


def holds(base: str, data: ServiceData, name: str) -> bool:
    """Whether ``name``, below ``base``, holds an SRV rrset (a named port's)."""
    return _prefix(base, name) in _shape(data.ports).named


def has_children(base: str, data: ServiceData, name: str) -> bool:
    """Whether ``name`` (``base`` or ``_<proto>.base``) has names below it that the entry makes exist."""
    protos = _shape(data.ports).protos
    return bool(protos) if name == base else _prefix(base, name) in protos


def _prefix(base: str, name: str) -> str:
    """``name`` without ``base`` at its end, the dot kept ("_http._tcp."); "" if it is not below ``base``."""
    cut = len(name) - len(base)
    return name[:cut] if cut > 0 and name.endswith(base) and name[cut - 1] == "." else ""


def owner(name: str) -> str | None:
    """The name of the Service whose entry could answer for ``name`` below it (``_<proto>.base`` or
    ``_<port>._<proto>.base``): ``base``; None for a name that cannot be one."""
    if name[:1] != "_":
        return None
    rest = name.partition(".")[2]
    return rest.partition(".")[2] if rest[:1] == "_" else rest


__all__ = ["below_names", "has_children", "holds", "owner", "rrset", "size"]
