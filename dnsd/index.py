"""The record index: name -> {type: rrset}, patched per owner (one Service, one namespace, one zone apex).

An update replaces what one owner contributes and touches only those names, so a
query is a dictionary lookup and a change costs what the changed Service owns.
Besides the data it counts, for every name, how many names with data lie below it:
a name with nothing of its own but something below is an empty non-terminal (NODATA,
not NXDOMAIN).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from .records import EXISTS, Record


class Index:
    def __init__(self, zones: Sequence[str]) -> None:
        # Longest first, so the most specific served zone wins.
        self.zones = tuple(sorted({z.lower().strip(".") for z in zones}, key=len, reverse=True))
        self.data: dict[str, dict[int, tuple[object, ...]]] = {}
        self._below: dict[str, int] = {}
        self._owned: dict[Hashable, frozenset[Record]] = {}

    def zone_of(self, name: str) -> str | None:
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def exists(self, name: str) -> bool:
        return name in self.data or name in self._below

    def rrset(self, name: str, rtype: int) -> tuple[object, ...]:
        node = self.data.get(name)
        return node.get(rtype, ()) if node else ()

    def owners(self) -> int:
        return len(self._owned)

    def record_count(self) -> int:
        return sum(len(rrs) for node in self.data.values() for t, rrs in node.items() if t != EXISTS)

    def records(self) -> Iterable[Record]:
        for name, node in self.data.items():
            for rtype, rrs in node.items():
                if rtype != EXISTS:
                    for rdata in rrs:
                        yield name, rtype, rdata

    def apply(self, owner: Hashable, records: Iterable[Record]) -> set[str]:
        """Make ``owner`` contribute exactly ``records``; return every name whose answers changed."""
        new = frozenset(records)
        old = self._owned.get(owner, frozenset())
        if new == old:
            return set()
        if new:
            self._owned[owner] = new
        else:
            self._owned.pop(owner, None)
        changes: dict[tuple[str, int], tuple[set[object], list[object]]] = {}
        for name, rtype, rdata in old - new:
            changes.setdefault((name, rtype), (set(), []))[0].add(rdata)
        for name, rtype, rdata in new - old:
            changes.setdefault((name, rtype), (set(), []))[1].append(rdata)
        touched: set[str] = set()
        for (name, rtype), (removed, added) in changes.items():
            touched.add(name)
            node = self.data.get(name)
            if node is None:
                node = self.data[name] = {}
                self._count_below(name, 1, touched)
            kept = tuple(r for r in node.get(rtype, ()) if r not in removed) if removed else node.get(rtype, ())
            rrset = kept + tuple(sorted(added))  # sorted: the same data gives the same bytes in every process
            if rrset:
                node[rtype] = rrset
            else:
                node.pop(rtype, None)
                if not node:
                    del self.data[name]
                    self._count_below(name, -1, touched)
        return touched

    def _count_below(self, name: str, delta: int, touched: set[str]) -> None:
        """Adjust the below-counts of ``name``'s ancestors inside its zone; note the ones that flip."""
        zone = self.zone_of(name)
        if zone is None or name == zone:
            return
        labels = name[: -len(zone) - 1].split(".")
        for i in range(1, len(labels)):
            ancestor = ".".join(labels[i:]) + "." + zone
            count = self._below.get(ancestor, 0) + delta
            if count > 0:
                self._below[ancestor] = count
            else:
                self._below.pop(ancestor, None)
            if count == 0 or (count == 1 and delta > 0):
                touched.add(ancestor)
