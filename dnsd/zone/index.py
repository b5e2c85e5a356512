"""The record index: (name, type) -> rrset, patched by the difference of what one owner holds.

An update replaces what one owner (a Service, a namespace, a zone apex) contributes and
touches only those names, so a query is a dictionary lookup and a change costs what the
changed Service owns. The caller passes the owner's old and new records (records are
pure functions of small immutable inputs, so recomputing the old ones is cheaper than
keeping them: ~20 MB less at 100k endpoints). Besides the data it counts, for every
name, how many of its children exist: a name with nothing of its own but something
below is an empty non-terminal (NODATA, not NXDOMAIN). A ClusterIP Service's addresses and
SRVs are one entry (records.ServiceData), answered for its name and the ``_`` names below it
(service_entry.py); those names are not counted, the entry makes them exist.
"""

from __future__ import annotations

import contextlib
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, cast

from dnsd.dns.const import AAAA, CNAME, EXISTS, NS, PTR, SOA, SRV, TXT, A
from dnsd.zone import service_entry
from dnsd.zone.records import SERVICE, Record, ServiceData, SrvData, SrvGroup, cluster_ip_records, expand, size

TYPES = (A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV)  # every type an rrset can have (EXISTS aside)
_ORDER = (A, PTR, SERVICE, SRV, EXISTS, AAAA, CNAME, TXT, SOA, NS)  # the commonest first: has_data() stops at the first hit
_SPLIT, _PARENT = operator.methodcaller("partition", "."), operator.itemgetter(2)  # a name -> its parent, in C
_BORN_MAX = 5_000  # names whose parents Index.add counts at once: small transient dicts keep PSS down (performance.md)


class IndexReader(Protocol):
    """What the resolver, the responder and zone transfers read: the in-memory Index, or the shared
    file a worker maps (lmdb_index.SharedIndex)."""

    zones: tuple[str, ...]  # longest first
    record_count: int

    def zone_of(self, name: str) -> str | None: ...  # the most specific served zone holding ``name``
    def has_data(self, name: str) -> bool: ...
    def has_children(self, name: str) -> bool: ...
    def exists(self, name: str) -> bool: ...  # data, or children: NODATA rather than NXDOMAIN
    def rrset(self, name: str, rtype: int) -> tuple[object, ...]: ...
    def records(self) -> Iterator[Record]: ...


class IndexWriter(IndexReader, Protocol):
    """What the pipeline writes through: the in-memory Index, or the shared file's writer."""

    def apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]: ...  # the names touched
    def add(self, owners: Iterable[Iterable[Record]]) -> set[str]: ...  # apply((), r) for each r, in order
    def batch(self) -> contextlib.AbstractContextManager[None]: ...  # one write transaction
    def publish(self, serial: int, synced: bool) -> None: ...  # make the batch visible to other processes


class ZoneLookup:
    """The served zone a name falls in: the same rule for every index."""

    zones: tuple[str, ...]  # longest first, so the most specific served zone wins

    def zone_of(self, name: str) -> str | None:
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None


class Index(ZoneLookup):
    def __init__(self, zones: Sequence[str]) -> None:
        # Longest first, so the most specific served zone wins.
        self.zones = tuple(sorted({z.lower().strip(".") for z in zones}, key=len, reverse=True))
        # One table per type, keyed by the name itself: a (name, type) key would cost a 56-byte
        # tuple per rrset, and a count of each name's rrsets another dict entry (~11 MB at 100k
        # endpoints). Whether a name holds data is asked of each table in turn, commonest first.
        # A one-record rrset is kept as the record itself (never a plain tuple: rdata is a str or a
        # NamedTuple), not in a 1-tuple: most are (a pod's A, an address's PTR), ~5 MB at 100k endpoints.
        self._by_type: dict[int, dict[str, object]] = {t: {} for t in _ORDER}
        self._tables = tuple(self._by_type.values())
        self._entries = cast(dict[str, ServiceData], self._by_type[SERVICE])  # one entry per name: never a tuple
        self._below: dict[str, int] = {}  # name -> how many of its children exist (data, or children of their own)
        self.record_count = 0  # records served (EXISTS markers excluded)

    def has_data(self, name: str) -> bool:
        for table in self._tables:
            if name in table:
                return True
        found = self._entry_of(name) if name[:1] == "_" else None  # a named port's SRV
        return found is not None and service_entry.holds(*found, name)

    def has_children(self, name: str) -> bool:
        if name in self._below:
            return True
        found = self._entry_of(name)
        return found is not None and service_entry.has_children(*found, name)

    def exists(self, name: str) -> bool:
        return self.has_data(name) or self.has_children(name)

    def rrset(self, name: str, rtype: int) -> tuple[object, ...]:
        table = self._by_type.get(rtype)
        if table is None:
            return ()
        if rtype == SRV:
            return expand(self.srv_held(name))
        held = table.get(name)
        if held is not None:
            return held if held.__class__ is tuple else (held,)  # as _rrset(), inlined: every answer reads it
        data = self._entries.get(name) if rtype in (A, AAAA) else None
        return () if data is None else service_entry.rrset(name, data, name, rtype)

    def srv_held(self, name: str) -> tuple[object, ...]:
        """``name``'s SRV rrset as the records gave it, groups not expanded."""
        held = self._by_type[SRV].get(name)
        if held is None:
            found = self._entry_of(name)
            return () if found is None else service_entry.rrset(*found, name, SRV)
        rrset = _rrset(held)
        for r in rrset:
            if r.__class__ is _SrvUp:
                return tuple([_unpack(name, r) for r in rrset])
        return rrset

    def _entry_of(self, name: str) -> tuple[str, ServiceData] | None:
        """(the Service's name, its entry) of the entry that answers for ``name``: a Service's own, or for
        a ``_`` name below it its Service's; None if no entry does."""
        base = service_entry.owner(name) if name[:1] == "_" else name
        data = self._entries.get(base) if base else None
        return None if data is None else (cast(str, base), data)

    def records(self) -> Iterator[Record]:
        for rtype, table in self._by_type.items():
            if rtype == SERVICE:
                for name, data in self._entries.items():  # one record for equal ones (53/tcp and 53/udp: one bare SRV)
                    yield from (r for r in dict.fromkeys(cluster_ip_records(data, name, reverse=False)) if r[1] != EXISTS)
            elif rtype != EXISTS:
                for name in table:
                    for rdata in expand(self.srv_held(name)) if rtype == SRV else _rrset(table[name]):
                        yield name, rtype, rdata

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # every change is visible at once: nothing to group

    def publish(self, serial: int, synced: bool) -> None:
        """Nothing to publish: only this process reads an in-memory index."""

    def apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        """Replace one owner's ``old`` records by ``new``; return every name whose answers changed."""
        diff = changes(old, new)
        if not diff:
            return set()
        touched: set[str] = set()
        by_type, has_data, below = self._by_type, self.has_data, self._below
        # A parent that is one of these names is counted under this very string, not a copy (a
        # Service's name is the parent of its SRV names' ``_proto`` ENT).
        own = {name: name for name, _ in diff}
        count = 0
        for (name, rtype), (gone, fresh) in diff.items():
            touched.add(name)
            table = by_type[rtype]
            held = table.get(name)
            # As _rrset() and patched(), inlined: this loop runs for every rrset an initial sync makes.
            current = () if held is None else held if held.__class__ is tuple else (held,)
            if rtype == SRV:  # kept short (_SrvUp), in the order records sort in
                gone = {_pack(name, r) for r in gone}
                fresh = [_pack(name, r) for r in sorted(fresh)]
                rrset = (tuple(r for r in current if r not in gone) if gone else current) + tuple(fresh)
            else:
                rrset = patched(current, gone, fresh) if current else tuple(sorted(fresh))
            if rtype == SRV:
                count += size(rrset) - size(current)  # groups count one per target
            elif rtype == SERVICE:
                count += sum(map(service_entry.size, rrset)) - sum(map(service_entry.size, current))
                for data in (*gone, *fresh):  # the names below it come and go with the entry
                    touched.update(service_entry.below_names(name, data))
            elif rtype != EXISTS:
                count += len(rrset) - len(current)
            if rrset:
                # A name's first rrset, and no children: it starts existing (checked before it is added).
                starts = not current and name not in below and not has_data(name)
                table[name] = rrset if len(rrset) > 1 else rrset[0]
                if starts:
                    self._count_below(name, 1, touched, own)
            elif current:
                del table[name]
                if name not in below and not has_data(name):
                    self._count_below(name, -1, touched, own)
        self.record_count += count
        return touched

    def add(self, owners: Iterable[Iterable[Record]]) -> set[str]:
        """``apply((), records)`` for each owner's records in turn, for owners that held none (a first
        load: 100k Services, ~5 rrsets each): the same tables, counts and names touched, without what a
        difference needs (sets of old and new, a diff and a set of names per owner), and each parent's
        count of children raised once by the number of its children that started existing."""
        by_type, below = self._by_type, self._below
        t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = self._tables
        touched: set[str] = set()
        add_touched = touched.add
        born: dict[str, str] = {}  # names that started existing, to themselves: the strings the tables hold
        count = 0
        for records in owners:
            groups: dict[tuple[str, int], list[Any]] = {}
            for name, rtype, rdata in records:
                group = groups.get((name, rtype))
                if group is None:
                    groups[(name, rtype)] = [rdata]
                elif rdata not in group:  # as changes(): an owner's record counts once
                    group.append(rdata)
            for (name, rtype), fresh in groups.items():
                add_touched(name)
                if len(fresh) > 1:
                    fresh.sort()
                if rtype == SRV:
                    fresh = [_pack(name, r) for r in fresh]
                table = by_type[rtype]
                held = table.get(name)
                if held is None:
                    # has_data() and the children's count, inlined: once per new rrset of a first load. (An
                    # entry's _ names, which has_data() also asks of, hold nothing else: service_entry.py.)
                    if not (name in below or name in t0 or name in t1 or name in t2 or name in t3 or name in t4
                            or name in t5 or name in t6 or name in t7 or name in t8 or name in t9):
                        born[name] = name
                    table[name] = fresh[0] if len(fresh) == 1 else tuple(fresh)
                    current: tuple[object, ...] = ()
                else:
                    current = held if held.__class__ is tuple else (held,)
                    table[name] = current + tuple(fresh)
                if rtype == SRV:
                    if current or fresh[0].__class__ is SrvGroup:
                        count += size(current + tuple(fresh)) - size(current)  # groups count one per target
                    else:
                        count += len(fresh)
                elif rtype == SERVICE:
                    for data in fresh:
                        count += service_entry.size(data)
                        touched.update(service_entry.below_names(name, data))
                elif rtype != EXISTS:
                    count += len(fresh)
            if len(born) > _BORN_MAX:
                self._count_born(born, touched)
                born = {}
        self._count_born(born, touched)
        self.record_count += count
        return touched

    def _count_born(self, born: dict[str, str], touched: set[str]) -> None:
        """Names in ``born`` started existing (their parents' counts are not raised yet): raise each
        parent's count once by its number of such children (counted in C), and go on up with the
        parents that this makes exist. The same counts as _count_below() for each name in turn."""
        below = self._below
        t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = self._tables
        # zone_of(name) is None or name is its zone's apex, in two C calls: a name is in a zone when it
        # ends with "." and the zone (the apex itself aside).
        apexes, inside = frozenset(self.zones), tuple("." + zone for zone in self.zones)
        for apex in self.zones:
            born.pop(apex, None)  # an apex has no parent in its zone
        level = born
        while level:
            up: dict[str, str] = {}
            counts: Counter[str] = Counter(map(_PARENT, map(_SPLIT, level)))
            for name, n in counts.items():
                if name in apexes or not name.endswith(inside):
                    continue  # the zone's apex, or outside every zone: not counted
                parent = born.get(name, name)  # the string the tables hold, not a copy
                had = below.get(parent, 0)
                below[parent] = had + n
                # has_data(), inlined: once per new parent (each Service's _proto name) of a first load.
                if not had and not (parent in t0 or parent in t1 or parent in t2 or parent in t3 or parent in t4
                                    or parent in t5 or parent in t6 or parent in t7 or parent in t8 or parent in t9):
                    # It starts existing: an empty non-terminal.
                    touched.add(parent)
                    up[parent] = parent
            level = up

    def _count_below(self, name: str, delta: int, touched: set[str], own: dict[str, str]) -> None:
        """``name`` started (+1) or stopped (-1) existing: update its parent's count of existing
        children, and go on up only while that flips the parent's own existence (usually it
        does not, so this is one dict update, not one per ancestor)."""
        zone = self.zone_of(name)
        if zone is None:
            return
        below, floor = self._below, len(zone)
        parent = name.partition(".")[2]
        parent = own.get(parent, parent)
        while len(parent) > floor:
            count = below.get(parent, 0) + delta
            if count:
                below[parent] = count
            else:
                del below[parent]
            if count != (1 if delta > 0 else 0) or self.has_data(parent):
                return  # the parent's existence did not change
            touched.add(parent)
            parent = parent.partition(".")[2]
            parent = own.get(parent, parent)


Changes = dict[tuple[str, int], tuple[set[object], list[Any]]]


def changes(old: Iterable[Record], new: Iterable[Record]) -> Changes:
    """What replacing one owner's ``old`` records by ``new`` does: (name, type) -> (rdata gone, rdata added)."""
    old_set = set(old)
    removed: Iterable[Record]
    added: Iterable[Record]
    if old_set:
        new_set = set(new)
        removed, added = old_set - new_set, new_set - old_set
    else:
        removed, added = (), dict.fromkeys(new)  # the common first load: no set differences
    out: Changes = {}
    for name, rtype, rdata in removed:
        out.setdefault((name, rtype), (set(), []))[0].add(rdata)
    for name, rtype, rdata in added:
        pair = out.get((name, rtype))  # not setdefault: its default would be made for every record
        if pair is None:
            out[(name, rtype)] = pair = (set(), [])
        pair[1].append(rdata)
    return out


def patched(current: tuple[object, ...], gone: set[object], fresh: list[Any]) -> tuple[object, ...]:
    """An rrset without ``gone`` and with ``fresh``, which is sorted: the same data gives the same
    bytes in every process."""
    kept = tuple(r for r in current if r not in gone) if gone else current
    return kept + tuple(sorted(fresh))


class _SrvUp(NamedTuple):
    """An SRV record whose target is its owner name or an ancestor ``up`` labels above it, as a
    ClusterIP Service's are (``_http._tcp.web.ns.svc.Z`` -> ``web.ns.svc.Z``): one shared object for
    every Service with that port, not an SrvData each."""

    priority: int
    weight: int
    port: int
    up: int


_shared_srv: dict[tuple[int, int, int, int], _SrvUp] = {}  # (priority, weight, port, up) -> the one _SrvUp
_SHARED_MAX = 4096  # a cluster has few ports: never growing for ever


def _pack(name: str, r: Any) -> Any:
    """``r`` as the index keeps it: short when it can be (see _SrvUp)."""
    if r.__class__ is not SrvData:
        return r
    priority, weight, port, target = r
    if target == name:
        up = 0
    elif name.endswith(target) and name[-len(target) - 1: -len(target)] == ".":
        up = name.count(".", 0, len(name) - len(target))
    else:
        return r
    if not (priority.__class__ is weight.__class__ is port.__class__ is int):
        return r  # as it is: True is not 1
    key = (priority, weight, port, up)
    short = _shared_srv.get(key)
    if short is None:
        if len(_shared_srv) >= _SHARED_MAX:
            _shared_srv.clear()
        short = _shared_srv[key] = _SrvUp(priority, weight, port, up)
    return short


def _unpack(name: str, r: Any) -> Any:
    if r.__class__ is not _SrvUp:
        return r
    return SrvData(r.priority, r.weight, r.port, name.split(".", r.up)[r.up] if r.up else name)


def _rrset(held: object) -> tuple[object, ...]:
    """A table's value as an rrset: a tuple as it is, a lone record wrapped."""
    return cast(tuple[object, ...], held) if held.__class__ is tuple else (held,)


__all__ = ["TYPES", "Changes", "Index", "IndexReader", "IndexWriter", "ZoneLookup", "changes", "patched"]
