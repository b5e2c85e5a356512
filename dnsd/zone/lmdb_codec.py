"""How the shared index file (lmdb_index.py) stores names and their records: in short, as every
process maps the whole file (less than half the pages of a plain encoding: docs/performance.md).

A key is the name packed (``Format.key``): the code of a suffix it ends with, then the rest of the
name. A value is marshalled (marshal, not pickle: loading a file that another process writes must
never run code), and is one of:

- an int: the count of the name's children that exist, for a name without rrsets;
- a str: the name's one record when it holds nothing else (most names: an address's PTR, a pod's
  A). A PTR as a packed name (which begins with a code, below " "), an A as its address;
- a tuple: that count << BITS | a mask of the types held (bit i: RTYPES[i]), then their rrsets.

In an rrset a lone record stands alone (not in a 1-tuple) unless it is a tuple itself; names are
packed; an A or AAAA that the owner's first label spells (a pod's ``10-244-1-20.<svc>...``, as
CoreDNS names them) is ""; SRV records are shortened as ``_srv_out`` says.
"""

from __future__ import annotations

import functools
import marshal
from collections.abc import Callable, Iterable
from typing import Any

from dnsd.dns.const import AAAA, CNAME, EXISTS, NS, PTR, SOA, SRV, A
from dnsd.zone.index import TYPES
from dnsd.zone.records import REVERSE_ZONES, SoaData, SrvData, SrvGroup, endpoint_label

MAX_KEY = 511  # LMDB's default key size limit; longer (invalid) names simply do not exist
MAX_CODES = 15  # suffix codes are chr(1..15), and + SPELLED: control characters, which start no name and no address
SPELLED = 16  # added to a packed name's code: the name begins with the label its owner's address spells
RTYPES = (*TYPES, EXISTS)
BITS = len(RTYPES)
_MASK = (1 << BITS) - 1
_BIT = {t: 1 << i for i, t in enumerate(RTYPES)}
_SPELLED = chr(SPELLED)
_NAMED = frozenset((PTR, CNAME, NS))  # rdata that is a name: packed as keys are
_new: Callable[..., Any] = tuple.__new__  # builds a NamedTuple as its own __new__ does, without a Python call


@functools.cache  # a few masks occur (A+SRV, SOA+NS, ...)
def _layout(mask: int) -> tuple[int, ...]:
    """The types that ``mask`` holds, in RTYPES order."""
    return tuple(t for t, bit in _BIT.items() if mask & bit)


def _up(name: str, labels: int) -> str:
    """``name`` without its first ``labels`` labels."""
    return name.split(".", labels)[labels] if labels else name


def _address(name: str, rtype: int) -> str:
    """The address that ``name``'s first label spells, as a pod's (``10-244-1-20.<svc>...``)."""
    return name.partition(".")[0].replace("-", "." if rtype == A else ":")


def _spelled(owner: str) -> str | None:
    """The label that the IPv4 address of the reverse name ``owner`` gives a pod (``10-244-1-20``,
    as CoreDNS names those without a hostname): their PTR targets begin with it."""
    if not owner.endswith(".in-addr.arpa"):
        return None
    octets = owner[:-13].split(".")
    return endpoint_label(".".join(reversed(octets))) if len(octets) == 4 else None


def _srv_out(name: str, r: SrvData | SrvGroup, shared: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[Any, ...]:
    """A headless Service's targets (``10-244-1-20.<svc>.<ns>.svc.<zone>``) end with the name of the
    Service that owns the SRV names: stored without it, as its distance up from the owner in labels,
    and priority, weight and port (16 bits each) as one int: (fields, targets, up) or (fields, up).
    Anything else as it is, (priority, weight, port, target or targets)."""
    if not all(f.__class__ is int and 0 <= f <= 0xFFFF for f in r[:3]):
        return tuple(r)
    fields, labels = r.port | r.weight << 16 | r.priority << 32, name.count(".")
    if isinstance(r, SrvGroup):
        for up in range(labels + 1):
            suffix = "." + _up(name, up)
            if all(t.endswith(suffix) for t in r.targets):
                rel = tuple([t[: -len(suffix)] for t in r.targets])
                # The same targets under several ports: one tuple, which marshal writes once (then a reference).
                return (fields, shared.setdefault(rel, rel), up)
        return tuple(r)
    for up in range(labels + 1):
        if _up(name, up) == r.target:
            return (fields, up)
    return tuple(r)


def _srvs(name: str, held: tuple[tuple[Any, ...], ...]) -> tuple[SrvData | SrvGroup, ...]:
    """The SRV rrset of ``name`` that _srv_out shortened."""
    out: list[SrvData | SrvGroup] = []
    rel: Any = None
    up, targets = -1, ()
    for r in held:
        if len(r) == 4:  # as it is
            out.append(_new(SrvGroup if r[3].__class__ is tuple else SrvData, r))
            continue
        f = r[0]
        if len(r) == 2:  # the target: the owner or its ancestor
            out.append(_new(SrvData, (f >> 32, f >> 16 & 0xFFFF, f & 0xFFFF, _up(name, r[1]))))
            continue
        if r[1] is not rel or r[2] != up:  # the same targets under several ports: stored once, built once
            rel, up = r[1], r[2]
            suffix = "." + _up(name, up)
            targets = tuple([t + suffix for t in rel])
        out.append(_new(SrvGroup, (f >> 32, f >> 16 & 0xFFFF, f & 0xFFFF, targets)))
    return tuple(out)


class Format:
    """Keys and values for one set of zones.

    Names are packed against a table of suffixes: each served zone, and ``svc.`` under each cluster
    zone. A packed name is the code of the first suffix it ends with (one character) and the rest
    of the name; code 0: none, the whole name. The codes must be the same in every process (the
    writer packs, each worker unpacks): the table is sorted by length, then by name, never in set
    order (which varies with the str hash seed).
    """

    def __init__(self, zones: Iterable[str]) -> None:
        suffixes = set(zones) | {f"svc.{z}" for z in zones if z not in REVERSE_ZONES}
        ordered = sorted(suffixes, key=lambda z: (-len(z), z))[:MAX_CODES]  # longest first: the most specific wins
        # (".suffix", code, -len(".suffix")): more suffixes than codes only cost their names' length
        self.table = tuple(("." + z, chr(code), -len(z) - 1) for code, z in enumerate(ordered, 1))
        self.apex = {z: chr(code) for code, z in enumerate(ordered, 1)}
        self.suffix_of = {"\0": ("", ""), chr(SPELLED): ("", "")}
        for code, z in enumerate(ordered, 1):
            self.suffix_of[chr(code)] = self.suffix_of[chr(code + SPELLED)] = ("." + z, z)

    def pack(self, name: str) -> str:
        for dotted, code, cut in self.table:
            if name.endswith(dotted) and (rest := name[:cut]):
                return code + rest
        return self.apex.get(name) or "\0" + name

    def unpack(self, packed: str) -> str:
        dotted, suffix = self.suffix_of[packed[0]]
        rest = packed[1:]
        return rest + dotted if rest else suffix

    def pack_in(self, owner: str, name: str) -> str:
        """``name`` packed, as rdata of ``owner``: without the first label if ``owner`` spells it."""
        label = _spelled(owner)
        if label is None or not name.startswith(label + "."):
            return self.pack(name)
        packed = self.pack(name[len(label) + 1 :])
        return chr(ord(packed[0]) + SPELLED) + packed[1:]  # ~14 bytes less for a pod's PTR

    def unpack_in(self, owner: str, packed: str) -> str:
        if packed[0] < _SPELLED:
            return self.unpack(packed)
        dotted, suffix = self.suffix_of[packed[0]]
        rest = packed[1:]
        d, c, b, a, _ = owner.split(".", 4)  # _spelled(owner), which pack_in found: d.c.b.a.in-addr.arpa
        return f"{a}-{b}-{c}-{d}.{rest}{dotted}" if rest else f"{a}-{b}-{c}-{d}.{suffix}"

    def key(self, name: str) -> bytes | None:
        """The LMDB key of ``name``; None for a name that cannot be one (too long, or empty)."""
        key = self.pack(name).encode("utf-8", "surrogateescape")
        return key if name and len(key) <= MAX_KEY else None

    def name(self, key: bytes) -> str:
        return self.unpack(key.decode("utf-8", "surrogateescape"))

    def encode(self, name: str, below: int, types: dict[int, tuple[Any, ...]]) -> bytes:
        if not types:
            return marshal.dumps(below)
        mask = 0
        held: list[Any] = []  # rrsets in their stored shapes
        for rtype in types:
            mask |= _BIT[rtype]
        for rtype in _layout(mask):
            rrset = types[rtype]
            if rtype == SRV:
                shared: dict[tuple[str, ...], tuple[str, ...]] = {}
                held.append(tuple([_srv_out(name, r, shared) for r in rrset]))
            elif rtype == SOA:
                held.append(tuple(map(tuple, rrset)))
            elif len(rrset) != 1 or rrset[0].__class__ is tuple:
                held.append(tuple([self.pack_in(name, r) for r in rrset]) if rtype in _NAMED else rrset)
            elif rtype in _NAMED:
                held.append(self.pack_in(name, rrset[0]))
            elif rtype in (A, AAAA) and rrset[0] == _address(name, rtype):
                held.append("")  # the address its name spells (a pod's): ~12 bytes less
            else:  # one record (the commonest): itself, not in a 1-tuple (an address that is no str: in one)
                held.append(rrset if rtype in (A, AAAA) and not rrset[0] else rrset[0])
        if below or len(held) != 1 or held[0].__class__ is not str:
            return marshal.dumps((below << BITS | mask, *held))
        if mask == _BIT[PTR] or (mask == _BIT[A] and (not held[0] or held[0][0] >= " ")):
            return marshal.dumps(held[0])  # a packed name starts with a code (< " "), an address does not
        return marshal.dumps((mask, *held))

    def decode(self, name: str, data: Any) -> tuple[int, dict[int, tuple[object, ...]]]:
        """(children that exist, {type: rrset}) from ``name``'s value, unmarshalled."""
        cls = data.__class__
        if cls is str:
            rtype, rrset = self._lone(name, data)
            return 0, {rtype: rrset}
        if cls is int:
            return data, {}
        mask, types = data[0], {}
        for i, rtype in enumerate(_layout(mask & _MASK), 1):
            types[rtype] = self._rrset(name, rtype, data[i])
        return mask >> BITS, types

    def rrset(self, name: str, rtype: int, data: Any) -> tuple[object, ...]:
        """One rrset from ``name``'s value, unmarshalled (SRV groups not expanded); () if none."""
        cls = data.__class__
        if cls is str:
            held, rrset = self._lone(name, data)
            return rrset if held == rtype else ()
        bit = _BIT.get(rtype, 0)
        if cls is not tuple or not data[0] & bit:
            return ()
        return self._rrset(name, rtype, data[(data[0] & (bit - 1)).bit_count() + 1])  # after one per lower bit

    def _lone(self, name: str, data: str) -> tuple[int, tuple[object, ...]]:
        """A value that is one record: a PTR (a packed name, which begins with a code) or an A."""
        if data[:1] < " " and data:
            return PTR, (self.unpack_in(name, data),)
        return A, (data or _address(name, A),)

    def _rrset(self, name: str, rtype: int, held: Any) -> tuple[object, ...]:
        if rtype in _NAMED:
            unpack = self.unpack_in
            return tuple([unpack(name, r) for r in held]) if held.__class__ is tuple else (unpack(name, held),)
        if rtype == SRV:
            return _srvs(name, held)
        if rtype == SOA:
            return tuple([_new(SoaData, r) for r in held])
        if held.__class__ is tuple:
            return held
        return (held or _address(name, rtype),) if rtype in (A, AAAA) else (held,)


__all__ = ["BITS", "MAX_KEY", "Format"]
