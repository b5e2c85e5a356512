"""The table of rendered positive replies: lowercased question -> Entry, bounded, first in first out.

Keys are the question as it follows the header, lowercased (name, type and class in wire form).
It is a plain dict, bounded by entries and by bytes: a cachetools LRUCache lookup costs ~0.4 us
in Python, a dict ~0.05 us, on a fast path that takes ~1 us in all (responder.py reads ``entries``
directly). Eviction is first in, first out: O(1), and hot names come straight back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from dnsd.dns.const import AAAA, ANY, CNAME, NS, PTR, SOA, SRV, TXT, A
from dnsd.dns.names import labels_to_text, name_wire, wire_labels
from dnsd.dns.reply import Entry

# Per-entry memory beyond its key's and tail's lengths: the Entry tuple, the tail and key bytes
# objects, the length int and the table's slot. Measured with tracemalloc over 4,000 A and SRV
# entries (tests/unit/test_fuzz.py::test_table_size_estimate).
ENTRY_OVERHEAD = 295  # ~370 bytes per entry in all
# A kept negative shares its Entry with every other of its type and rcode: its key and the dict's slot.
# Measured as above (tests/unit/test_fuzz.py::test_negative_size_estimate).
NEGATIVE_OVERHEAD = 70
# The types whose keys invalidation tries for a changed name, rather than filing every key under
# its name (a set per name cost ~330 bytes per entry): those a name of ours answers with data.
_FOUND = tuple(struct.pack("!HH", t, 1) for t in (A, AAAA, SRV, PTR, CNAME, TXT, ANY, SOA, NS))


def _size(key: bytes, entry: Entry) -> int:
    return ENTRY_OVERHEAD + len(key) + len(entry.plain_tail)


def _name(key: bytes) -> str:
    return labels_to_text(wire_labels(key[:-4]))


class Replies:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: dict[bytes, Entry] = {}
        self.bytes = 0
        # Name (text) -> its keys, only for those invalidation cannot compute from the name (_FOUND):
        # other types (an ExternalName's CNAME answers every type), names read back with escapes,
        # and answers derived from other names (pods, autopath), filed under those names too.
        self._keys: dict[str, set[bytes]] = {}
        self._depends: dict[bytes, tuple[str, ...]] = {}  # key -> other names it is filed under (Answer.depends)
        # Negative replies (NXDOMAIN, NODATA) kept apart: each holds its zone's SOA, whose serial moves with
        # a change anywhere, so every change drops them all at once, with no per-name filing. They share the
        # byte budget and are evicted first (a positive costs more to render again).
        self.negatives: dict[bytes, Entry] = {}
        self._negative_bytes = 0

    def store(self, key: bytes, name: str, entry: Entry, depends: tuple[str, ...] = ()) -> None:
        """Keep ``entry`` under ``key`` (a question of ``name``), derived also from ``depends``."""
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= _size(key, old)
        size = _size(key, entry)
        self._make_room(size)
        entries[key] = entry
        self.bytes += size
        if depends or key[-4:] not in _FOUND or key[:-4] != name_wire(name):
            for dep in (name, *depends):
                self._keys.setdefault(dep, set()).add(key)
            if depends:
                self._depends[key] = depends

    def keep_negative(self, key: bytes, entry: Entry) -> None:
        """Keep the negative reply ``entry`` (shared by many keys) under ``key`` until the next change."""
        if key in self.negatives:
            return
        size = NEGATIVE_OVERHEAD + len(key)
        self._make_room(size)
        self.negatives[key] = entry
        self._negative_bytes += size
        self.bytes += size

    def _make_room(self, size: int) -> None:
        entries, negatives = self.entries, self.negatives
        while (entries or negatives) and (
                len(entries) + len(negatives) >= self.max_entries or self.bytes + size > self.max_bytes):
            if negatives:
                old = next(iter(negatives))
                del negatives[old]
                freed = NEGATIVE_OVERHEAD + len(old)
                self._negative_bytes -= freed
                self.bytes -= freed
            else:
                self._evict()

    def invalidate(self, names: Iterable[str]) -> None:
        """Drop every reply of, or derived from, ``names``, and every kept negative."""
        if self.negatives:
            self._drop_negatives()
        entries, keys = self.entries, self._keys
        if not entries:
            return
        if not isinstance(names, (set, frozenset)):
            names = set(names)
        for name in names & keys.keys() if keys else ():
            for key in keys.pop(name):
                self._drop(key)
        if len(names) * len(_FOUND) > len(entries):  # a relist: reading each key's name back is less work
            gone = [key for key in entries if _name(key) in names]
        else:
            gone = [key for name in names for wire in (name_wire(name),) for t in _FOUND if (key := wire + t) in entries]
        for key in gone:
            self._drop(key)

    def _drop_negatives(self) -> None:
        self.negatives.clear()  # the same dict: responder.py holds it
        self.bytes -= self._negative_bytes
        self._negative_bytes = 0

    def clear(self) -> None:
        self._drop_negatives()
        self.entries.clear()  # the same dict: responder.py holds it
        self._keys.clear()
        self._depends.clear()
        self.bytes = 0

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.bytes -= _size(key, entry)
        for name in self._depends.pop(key, ()) if self._depends else ():
            self._unfile(name, key)

    def _evict(self) -> None:
        entries = self.entries
        old = next(iter(entries))
        self.bytes -= _size(old, entries.pop(old))
        if self._keys:  # filed by name: rare (see __init__)
            for name in (_name(old), *self._depends.pop(old, ())):
                self._unfile(name, old)

    def _unfile(self, name: str, key: bytes) -> None:
        filed = self._keys.get(name)
        if filed is not None:
            filed.discard(key)
            if not filed:
                del self._keys[name]


__all__ = ["ENTRY_OVERHEAD", "NEGATIVE_OVERHEAD", "Replies"]
