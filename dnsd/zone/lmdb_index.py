"""The record index in one memory-mapped LMDB file: written by the main process, read by every worker.

It answers through the same interface as index.Index (zone_of, has_data, has_children,
exists, rrset, records), so resolver.resolve reads either. With ``--workers N`` the cluster's
answers then exist once, in the page cache, mapped by every process (PSS splits it
between them), instead of once per worker in each Python heap.

One LMDB key per name; its value is that name's count of existing children and its rrsets,
both in short (lmdb_codec.py). LMDB gives readers a consistent snapshot per transaction
while one writer commits, across processes, without a lock on the read path.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import marshal
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import lmdb

from dnsd.dns.const import EXISTS, SRV
from dnsd.zone.index import TYPES, ZoneLookup, changes, patched
from dnsd.zone.lmdb_codec import BITS, Format
from dnsd.zone.records import Record, expand, plain, size

log = logging.getLogger(__name__)

MAP_SIZE = 4 << 30  # address space reserved, not memory: the file grows as data arrives (~30 MB at 100k endpoints)
FLUSH_EVERY = 2_000  # names held in Python during one write batch before they go to the transaction
RELEASE_AFTER = 2_000  # names written by one batch above which the writer unmaps the file's pages (and may repack)
MADV_DONTNEED = 4  # Linux
# One unnamed database: names (packed, their first byte a code < 32: lmdb_codec.py), the writer's state
# under 0xFF, sorted last (named databases opened by a reader in a read transaction are not usable
# afterwards, and a write one would wait).
META = 0xFF
SERIAL, SYNCED = b"\xffserial", b"\xffsynced"
_EMPTY: tuple[int, dict[int, tuple[object, ...]]] = (0, {})


def _madvise() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (AttributeError, OSError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return fn


_MADVISE = _madvise()


def unmap_pages(path: str) -> int:
    """Drop this process's page-table entries for the file ``path`` (bytes; 0 where unsupported).

    The file is mapped shared, so its pages stay in the page cache (written back by the kernel,
    reclaimable as it is on disk) and a later read faults them in again. What goes is their count
    in this process's PSS: a writer has touched every page it wrote, and would otherwise be
    charged for the whole file though it reads only its share of the queries.
    """
    if _MADVISE is None or not path:
        return 0
    released = 0
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == path:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    if _MADVISE(start, end - start, MADV_DONTNEED) == 0:
                        released += end - start
    except OSError:
        return 0
    return released


class SharedIndex(ZoneLookup):
    """A reader of the shared file (a worker). ``SharedIndexWriter`` adds ``apply``."""

    def __init__(self, path: str, zones: Sequence[str], *, write: bool = False) -> None:
        self.zones = tuple(sorted({z.lower().strip(".") for z in zones}, key=len, reverse=True))
        self.format = Format(self.zones)
        self._last: tuple[str | None, bytes | None] = (None, None)  # the last name looked up, and its key
        # readahead off: lookups are random, and reading ahead only fills the page cache.
        self.env = lmdb.open(path, map_size=MAP_SIZE, readonly=False, create=write, readahead=False,
                             sync=False, metasync=False, writemap=write, map_async=write)
        self.record_count = 0

    def close(self) -> None:
        self.env.close()

    def _data(self, name: str) -> Any:
        """``name``'s value, unmarshalled (lmdb_codec.py); None if the name does not exist."""
        last = self._last  # the resolver asks of one name several times (has_data, then rrset): its key once
        if last[0] is name:
            key = last[1]
        else:
            key = self.format.key(name)
            self._last = (name, key)
        if key is None:
            return None
        value = self.env.begin().get(key)  # the read transaction ends as it is dropped (~0.2 us less than with)
        return None if value is None else marshal.loads(value)

    def load(self, name: str) -> tuple[int, dict[int, tuple[object, ...]]]:
        """(children that exist, {type: rrset}) of ``name``; (0, {}) if it has neither."""
        data = self._data(name)
        return _EMPTY if data is None else self.format.decode(name, data)

    # The resolver's questions read the value, and unpack only the rrset asked for. A value is an int
    # (a count of children, no data), a str (a lone record) or a tuple (count << BITS | types, rrsets...).
    def has_data(self, name: str) -> bool:
        data = self._data(name)
        return data is not None and data.__class__ is not int

    def has_children(self, name: str) -> bool:
        data = self._data(name)
        return (data if data.__class__ is int else data[0] >> BITS if data.__class__ is tuple else 0) > 0

    def exists(self, name: str) -> bool:
        return self._data(name) is not None  # nothing is stored for a name with no data and no children

    def rrset(self, name: str, rtype: int) -> tuple[object, ...]:
        rrset = self.format.rrset(name, rtype, self._data(name))
        return expand(rrset) if rtype == SRV else rrset

    def records(self) -> Iterator[Record]:
        with self.env.begin() as txn:
            for key, value in txn.cursor():
                if key[0] == META:
                    return  # sorted after every name
                name = self.format.name(bytes(key))
                for rtype, rrs in self.format.decode(name, marshal.loads(value))[1].items():
                    if rtype != EXISTS:
                        for rdata in expand(rrs):
                            yield name, rtype, rdata

    def read_meta(self) -> tuple[int, bool]:
        """(serial, synced) as the writer last published them."""
        with self.env.begin() as txn:
            serial, synced = txn.get(SERIAL), txn.get(SYNCED)
        return int(serial or b"0"), synced == b"1"


class SharedIndexWriter(SharedIndex):
    """The one writer (the main process): index.Index's update rules, stored per name in the file.

    Every change happens inside ``batch()``, one LMDB transaction: readers see a whole
    batch or none of it. Within a batch, names being changed are held in ``_pending``
    (flushed to the transaction every FLUSH_EVERY names, so an initial sync never holds
    a second copy of the index in the heap).
    """

    def __init__(self, path: str, zones: Sequence[str]) -> None:
        super().__init__(path, zones, write=True)
        self._txn: lmdb.Transaction | None = None
        self._pending: dict[str, list[Any]] = {}  # name -> [below, {type: rrset}]
        self._written = 0  # names put or deleted by the batch in progress
        self.data_file = os.path.realpath(os.path.join(path, "data.mdb"))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._txn is not None:
            yield  # nested: the outer batch commits
            return
        self._txn = self.env.begin(write=True)
        self._written = 0
        try:
            yield
            self._flush()
            self._txn.commit()
        except BaseException:
            self._txn.abort()
            raise
        finally:
            self._txn = None
            self._pending = {}
        if self._written > RELEASE_AFTER:
            if self._written * 4 > self.env.stat()["entries"]:  # a sync or a relist, not a burst of events
                try:
                    self.repack()
                except lmdb.Error as exc:  # the data is committed: only its packing is lost
                    log.warning("index file not repacked: %s", exc)
            unmap_pages(self.data_file)

    def repack(self) -> None:
        """Write the tree again in key order, its pages full: inserts in random order (an initial
        sync) leave them ~64% full, and every process maps the whole file in the end (the kernel
        maps a read page's neighbours too). At 100k endpoints 17 MB of pages become 12 MB, in
        0.1 s. The data is the same, so readers need not know: their snapshots stay valid."""
        with self.env.begin() as old, self.env.begin(write=True) as txn:
            txn.drop(self.env.open_db(txn=txn), delete=False)  # the unnamed database: emptied, not deleted
            txn.cursor().putmulti(old.cursor().iternext(), append=True)

    def publish(self, serial: int, synced: bool) -> None:
        """Store what a worker started later must know besides the records."""
        with self.batch():
            assert self._txn is not None
            self._txn.put(SERIAL, str(serial).encode())
            self._txn.put(SYNCED, b"1" if synced else b"0")

    def _data(self, name: str) -> Any:
        if self._txn is None:
            return super()._data(name)
        entry = self._pending.get(name)
        if entry is not None:
            return marshal.loads(self.format.encode(name, *entry)) if entry[0] or entry[1] else None
        key = self.format.key(name)
        value = None if key is None else self._txn.get(key)
        return None if value is None else marshal.loads(value)

    def _entry(self, name: str) -> list[Any]:
        entry = self._pending.get(name)
        if entry is None:
            below, types = self.load(name)
            entry = self._pending[name] = [below, dict(types)]
        return entry

    def _flush(self) -> None:
        txn = self._txn
        assert txn is not None
        self._written += len(self._pending)
        key_of, encode = self.format.key, self.format.encode
        for name, (below, types) in self._pending.items():
            key = key_of(name)
            if key is None:
                continue
            if below or types:
                txn.put(key, encode(name, below, types))
            else:
                txn.delete(key)
        self._pending = {}

    def apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        """Replace one owner's ``old`` records by ``new``; return every name whose answers changed."""
        with self.batch():
            return self._apply(old, new)

    def add(self, owners: Iterable[Iterable[Record]]) -> set[str]:
        """``apply((), records)`` for each owner in turn (index.Index.add's interface): one batch."""
        touched: set[str] = set()
        with self.batch():
            for records in owners:
                touched |= self._apply((), records)
        return touched

    def _apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        touched: set[str] = set()
        # A Service's one entry (records.ServiceData) is stored as the records it stands for: the file's
        # codec packs those short already, and a worker reads a name's value without asking another's.
        for (name, rtype), (gone, fresh) in changes(plain(old), plain(new)).items():
            touched.add(name)
            entry = self._entry(name)
            types: dict[int, tuple[object, ...]] = entry[1]
            had = bool(types)
            current = types.get(rtype, ())
            rrset = patched(current, gone, fresh)
            if rtype != EXISTS:
                self.record_count += size(rrset) - size(current)
            if rrset:
                types[rtype] = rrset
            else:
                types.pop(rtype, None)
            if bool(types) != had and not entry[0]:  # the name itself started or stopped existing
                self._count_below(name, 1 if types else -1, touched)
        if len(self._pending) > FLUSH_EVERY:
            self._flush()
        return touched

    def _count_below(self, name: str, delta: int, touched: set[str]) -> None:
        """As index.Index: update the parent's count of existing children, up while that flips existence."""
        zone = self.zone_of(name)
        if zone is None:
            return
        floor = len(zone)
        parent = name.partition(".")[2]
        while len(parent) > floor:
            entry = self._entry(parent)
            count = entry[0] = entry[0] + delta
            if entry[1] or count != (1 if delta > 0 else 0):
                return
            touched.add(parent)
            parent = parent.partition(".")[2]


__all__ = ["TYPES", "SharedIndex", "SharedIndexWriter"]
