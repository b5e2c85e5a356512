"""The record index: (name, type) -> rrset, patched by the difference of what one owner holds.

An update replaces what one owner (a Service, a namespace, a zone apex) contributes and
touches only those names, so a query is a dictionary lookup and a change costs what the
changed Service owns. The caller passes the owner's old and new records (records are
pure functions of small immutable inputs, so recomputing the old ones is cheaper than
keeping them: ~20 MB less at 100k endpoints). Besides the data it counts, for every
name, how many of its children exist: a name with nothing of its own but something
below is an empty non-terminal (NODATA, not NXDOMAIN).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .records import AAAA, CNAME, EXISTS, NS, PTR, SOA, SRV, TXT, A, Record

TYPES = (A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV)  # every type an rrset can have (EXISTS aside)


class Index:
    def __init__(self, zones: Sequence[str]) -> None:
        # Longest first, so the most specific served zone wins.
        self.zones = tuple(sorted({z.lower().strip(".") for z in zones}, key=len, reverse=True))
        # One flat dict keyed by (name, type): a dict per name would cost ~200 bytes more per name.
        self.rrsets: dict[tuple[str, int], tuple[object, ...]] = {}
        self._types: dict[str, int] = {}  # name -> how many rrsets (EXISTS markers included) it holds
        self._below: dict[str, int] = {}  # name -> how many of its children exist (data, or children of their own)
        self.record_count = 0  # records served (EXISTS markers excluded)

    def zone_of(self, name: str) -> str | None:
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def has_data(self, name: str) -> bool:
        return name in self._types

    def exists(self, name: str) -> bool:
        return name in self._types or name in self._below

    def rrset(self, name: str, rtype: int) -> tuple[object, ...]:
        return self.rrsets.get((name, rtype), ())

    def records(self) -> Iterator[Record]:
        for (name, rtype), rrs in self.rrsets.items():
            if rtype != EXISTS:
                for rdata in rrs:
                    yield name, rtype, rdata

    def apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        """Replace one owner's ``old`` records by ``new``; return every name whose answers changed."""
        old_set = set(old)
        if old_set:
            new_set = set(new)
            removed, added = old_set - new_set, new_set - old_set
        else:
            removed, added = set(), dict.fromkeys(new)  # the common first load: no set differences
        if not removed and not added:
            return set()
        changes: dict[tuple[str, int], tuple[set[object], list[object]]] = {}
        for name, rtype, rdata in removed:
            changes.setdefault((name, rtype), (set(), []))[0].add(rdata)
        for name, rtype, rdata in added:
            changes.setdefault((name, rtype), (set(), []))[1].append(rdata)
        touched: set[str] = set()
        rrsets, types = self.rrsets, self._types
        for key, (gone, fresh) in changes.items():
            name = key[0]
            touched.add(name)
            current = rrsets.get(key, ())
            kept = tuple(r for r in current if r not in gone) if gone else current
            rrset = kept + tuple(sorted(fresh))  # sorted: the same data gives the same bytes in every process
            if key[1] != EXISTS:
                self.record_count += len(rrset) - len(current)
            if rrset:
                if not current:
                    rrsets[key] = rrset
                    count = types.get(name, 0)
                    types[name] = count + 1
                    if not count and name not in self._below:
                        self._count_below(name, 1, touched)
                else:
                    rrsets[key] = rrset
            elif current:
                del rrsets[key]
                count = types[name] - 1
                if count:
                    types[name] = count
                else:
                    del types[name]
                    if name not in self._below:
                        self._count_below(name, -1, touched)
        return touched

    def _count_below(self, name: str, delta: int, touched: set[str]) -> None:
        """``name`` started (+1) or stopped (-1) existing: update its parent's count of existing
        children, and go on up only while that flips the parent's own existence (usually it
        does not, so this is one dict update, not one per ancestor)."""
        zone = self.zone_of(name)
        if zone is None:
            return
        below, types, floor = self._below, self._types, len(zone)
        parent = name.partition(".")[2]
        while len(parent) > floor:
            count = below.get(parent, 0) + delta
            if count:
                below[parent] = count
            else:
                del below[parent]
            if parent in types or count != (1 if delta > 0 else 0):
                return  # the parent's existence did not change
            touched.add(parent)
            parent = parent.partition(".")[2]


__all__ = ["TYPES", "Index"]
