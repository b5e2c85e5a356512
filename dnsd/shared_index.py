"""The record index in one memory-mapped LMDB file: written by the main process, read by every worker.

It answers through the same interface as index.Index (zone_of, has_data, has_children,
exists, rrset, records), so resolver.resolve reads either. With ``--workers N`` the cluster's
answers then exist once, in the page cache, mapped by every process (PSS splits it
between them), instead of once per worker in each Python heap.

One LMDB key per name: the name packed (``Names``: a suffix's code, the rest of the name);
its value is that name's count of existing children and its rrsets, marshalled (marshal,
not pickle: loading a file that another process writes must never run code). LMDB gives
readers a consistent snapshot per transaction while one writer commits, across processes,
without a lock on the read path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import marshal
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import lmdb

from .index import TYPES, Index
from .records import AAAA, CNAME, EXISTS, NS, PTR, REVERSE_ZONES, SOA, SRV, A, Record, SoaData, SrvData, SrvGroup, expand, size

log = logging.getLogger("dnsd.shared_index")

MAP_SIZE = 4 << 30  # address space reserved, not memory: the file grows as data arrives (~30 MB at 100k endpoints)
MAX_KEY = 511  # LMDB's default key size limit; longer (invalid) names simply do not exist
FLUSH_EVERY = 2_000  # names held in Python during one write batch before they go to the transaction


_EMPTY: tuple[int, dict[int, tuple[object, ...]]] = (0, {})
# A value: the name's count of children alone (an int) if it holds no rrsets; its one record (a str)
# if it holds nothing else, a PTR or an A (most names: an address's, a pod's); else a tuple of
# that count << _BITS | a mask of the types it holds, then each one's rrset in _RTYPES order.
_RTYPES = (*TYPES, EXISTS)
_BITS, _MASK = len(_RTYPES), (1 << len(_RTYPES)) - 1
_BIT = {t: 1 << i for i, t in enumerate(_RTYPES)}


@functools.cache  # a few masks occur (A+SRV, SOA+NS, ...)
def _layout(mask: int) -> tuple[int, ...]:
    """The types that ``mask`` holds, in _RTYPES order."""
    return tuple(t for t, bit in _BIT.items() if mask & bit)


_NAMED = frozenset((PTR, CNAME, NS))  # rdata that is a name: packed as keys are (an address's PTR: 18 bytes less)
RELEASE_AFTER = 2_000  # names written by one batch above which the writer unmaps the file's pages (and may repack)
MADV_DONTNEED = 4  # Linux
# One unnamed database: names (packed, their first byte a code < 32), the writer's published state
# under 0xFF, sorted last (named databases opened by a reader in a read transaction are not usable
# afterwards, and a write one would wait).
META = 0xFF
SERIAL, SYNCED = b"\xffserial", b"\xffsynced"
MAX_CODES = 31  # suffix codes are chr(1..31): control characters, which start no name and no address


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


class Names:
    """Names packed against a table of suffixes: each served zone, and ``svc.`` under each cluster
    zone. A packed name is the code of its longest suffix (one character) and the rest of the name;
    code 0: no suffix, the whole name. At 100k endpoints the keys shrink from 6.2 MB to 3.9 MB.

    The codes must be the same in every process (the writer packs, each worker unpacks): the table
    is sorted by length, then by name, never in set order (which varies with the str hash seed).
    """

    def __init__(self, zones: Iterable[str]) -> None:
        suffixes = set(zones) | {f"svc.{z}" for z in zones if z not in REVERSE_ZONES}
        ordered = sorted(suffixes, key=lambda z: (-len(z), z))[:MAX_CODES]  # longest first: the most specific wins
        # (".suffix", code, -len(".suffix")): more suffixes than codes only cost their names' length
        self.table = tuple(("." + z, chr(code), -len(z) - 1) for code, z in enumerate(ordered, 1))
        self.apex = {z: chr(code) for code, z in enumerate(ordered, 1)}
        self.suffix_of = {"\0": ("", "")} | {chr(code): ("." + z, z) for code, z in enumerate(ordered, 1)}

    def pack(self, name: str) -> str:
        for dotted, code, cut in self.table:
            if name.endswith(dotted) and (rest := name[:cut]):
                return code + rest
        return self.apex.get(name) or "\0" + name

    def unpack(self, packed: str) -> str:
        dotted, suffix = self.suffix_of[packed[0]]
        rest = packed[1:]
        return rest + dotted if rest else suffix

    def key(self, name: str) -> bytes | None:
        """The LMDB key of ``name``; None for a name that cannot be one (too long, or empty)."""
        for dotted, code, cut in self.table:  # pack(), inlined: once per lookup
            if name.endswith(dotted) and (rest := name[:cut]):
                key = (code + rest).encode("utf-8", "surrogateescape")
                break
        else:
            key = (self.apex.get(name) or "\0" + name).encode("utf-8", "surrogateescape")
        return key if name and len(key) <= MAX_KEY else None


def _up(name: str, labels: int) -> str:
    """``name`` without its first ``labels`` labels."""
    return name.split(".", labels)[labels] if labels else name


_new = tuple.__new__  # builds a NamedTuple as its own __new__ does, without a Python call


def _srvs(name: str, held: tuple[tuple[Any, ...], ...]) -> tuple[SrvData | SrvGroup, ...]:
    out: list[SrvData | SrvGroup] = []
    rel: Any = None
    up, targets = -1, ()
    for r in held:
        if len(r) == 4:  # as it is
            out.append(_new(SrvGroup if r[3].__class__ is tuple else SrvData, r))
            continue
        f = r[0]  # port | weight << 16 | priority << 32
        if len(r) == 2:  # the target: the owner or its ancestor
            out.append(_new(SrvData, (f >> 32, f >> 16 & 0xFFFF, f & 0xFFFF, _up(name, r[1]))))
            continue
        if r[1] is not rel or r[2] != up:  # the same targets under several ports: stored once, built once
            rel, up = r[1], r[2]
            suffix = "." + _up(name, up)
            targets = tuple([t + suffix for t in rel])
        out.append(_new(SrvGroup, (f >> 32, f >> 16 & 0xFFFF, f & 0xFFFF, targets)))
    return tuple(out)


def _srv_out(name: str, r: SrvData | SrvGroup, shared: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[Any, ...]:
    """A headless Service's targets (``10-244-1-20.<svc>.<ns>.svc.<zone>``) end with the name of the
    Service that owns the SRV names: stored without it, as its distance up from the owner in labels,
    and priority, weight and port (16 bits each) as one int: (fields, targets, up) or (fields, up).
    Anything else as it is, (priority, weight, port, target or targets)."""
    if not all(f.__class__ is int and 0 <= f <= 0xFFFF for f in r[:3]):
        return tuple(r)
    fields, labels = r.port | r.weight << 16 | r.priority << 32, name.count(".")
    if r.__class__ is SrvGroup:
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


def _address(name: str, rtype: int) -> str:
    """The address that ``name``'s first label spells, as a pod's (``10-244-1-20.<svc>...``)."""
    return name.partition(".")[0].replace("-", "." if rtype == A else ":")


def _encode(names: Names, name: str, below: int, types: dict[int, tuple[object, ...]]) -> bytes:
    if not types:
        return marshal.dumps(below)
    mask, held = 0, []
    for i, rtype in enumerate(_RTYPES):
        rrset = types.get(rtype)
        if rrset is None:
            continue
        mask |= 1 << i
        if rtype == SRV:
            shared: dict[tuple[str, ...], tuple[str, ...]] = {}
            held.append(tuple([_srv_out(name, r, shared) for r in rrset]))  # type: ignore[arg-type]
        elif rtype == SOA:
            held.append(tuple(map(tuple, rrset)))  # type: ignore[arg-type]
        elif len(rrset) != 1 or rrset[0].__class__ is tuple:
            held.append(tuple([names.pack(r) for r in rrset]) if rtype in _NAMED else rrset)  # type: ignore[arg-type]
        elif rtype in _NAMED:
            held.append(names.pack(rrset[0]))  # type: ignore[arg-type]
        elif rtype in (A, AAAA) and rrset[0] == _address(name, rtype):
            held.append("")  # the address its name spells (a pod's): ~12 bytes less
        else:  # one record (the commonest): itself, not in a 1-tuple ("" as an address: in one)
            held.append(rrset if rtype in (A, AAAA) and rrset[0] == "" else rrset[0])
    if below or len(held) != 1 or held[0].__class__ is not str:
        return marshal.dumps((below << _BITS | mask, *held))
    if mask == _BIT[PTR] or (mask == _BIT[A] and (not held[0] or held[0][0] >= " ")):
        return marshal.dumps(held[0])  # a packed name starts with a code (< " "), an address does not
    return marshal.dumps((mask, *held))


class SharedIndex:
    """A reader of the shared file (a worker). ``SharedIndexWriter`` adds ``apply``."""

    def __init__(self, path: str, zones: Sequence[str], *, write: bool = False) -> None:
        self.zones = tuple(sorted({z.lower().strip(".") for z in zones}, key=len, reverse=True))
        self.names = Names(self.zones)
        # readahead off: lookups are random, and reading ahead only fills the page cache.
        self.env = lmdb.open(path, map_size=MAP_SIZE, readonly=False, create=write, readahead=False,
                             sync=False, metasync=False, writemap=write, map_async=write)
        self.record_count = 0

    def close(self) -> None:
        self.env.close()

    def _data(self, name: str) -> Any:
        """``name``'s value as marshal stored it (see _encode); None if the name does not exist."""
        key = self.names.key(name)
        if key is None:
            return None
        value = self.env.begin().get(key)  # the read transaction ends as it is dropped (~0.2 us less than with)
        return None if value is None else marshal.loads(value)

    def _rrset(self, name: str, rtype: int, held: Any) -> tuple[object, ...]:
        """One rrset of ``name`` as _encode stored it, unpacked."""
        if rtype in _NAMED:
            unpack = self.names.unpack
            return tuple([unpack(r) for r in held]) if held.__class__ is tuple else (unpack(held),)
        if rtype == SRV:
            return _srvs(name, held)
        if rtype == SOA:
            return tuple([_new(SoaData, r) for r in held])
        if held.__class__ is tuple:
            return held
        return (held or _address(name, rtype),) if rtype in (A, AAAA) else (held,)

    def load(self, name: str) -> tuple[int, dict[int, tuple[object, ...]]]:
        """(children that exist, {type: rrset}) of ``name``; (0, {}) if it has neither."""
        data = self._data(name)
        return _EMPTY if data is None else self._unpack(name, data)

    def _unpack(self, name: str, data: Any) -> tuple[int, dict[int, tuple[object, ...]]]:
        cls = data.__class__
        if cls is str:
            return 0, self._lone(name, data)
        if cls is int:
            return data, {}
        mask, types = data[0], {}
        for i, rtype in enumerate(_layout(mask & _MASK), 1):
            types[rtype] = self._rrset(name, rtype, data[i])
        return mask >> _BITS, types

    def _lone(self, name: str, data: str) -> dict[int, tuple[object, ...]]:
        if data[:1] < " " and data:
            return {PTR: (self.names.unpack(data),)}
        return {A: (data or _address(name, A),)}

    zone_of = Index.zone_of  # the same rule on the same ``zones``: the longest served zone that holds the name

    # The resolver's questions read the value, and unpack only the rrset asked for.
    def has_data(self, name: str) -> bool:
        data = self._data(name)
        return data is not None and data.__class__ is not int

    def has_children(self, name: str) -> bool:
        data = self._data(name)
        return (data if data.__class__ is int else data[0] >> _BITS if data.__class__ is tuple else 0) > 0

    def exists(self, name: str) -> bool:
        return self._data(name) is not None  # nothing is stored for a name with no data and no children

    def rrset(self, name: str, rtype: int) -> tuple[object, ...]:
        data = self._data(name)
        cls = data.__class__
        if cls is str:
            return self._lone(name, data).get(rtype, ())
        bit = _BIT.get(rtype, 0)
        if cls is not tuple or not data[0] & bit:
            return ()
        rrset = self._rrset(name, rtype, data[(data[0] & (bit - 1)).bit_count() + 1])  # after one per lower bit
        return expand(rrset) if rtype == SRV else rrset

    def records(self) -> Iterator[Record]:
        with self.env.begin() as txn:
            for key, value in txn.cursor():
                if key[0] == META:
                    return  # sorted after every name
                name = self.names.unpack(bytes(key).decode("utf-8", "surrogateescape"))
                for rtype, rrs in self._unpack(name, marshal.loads(value))[1].items():
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
        maps a read page's neighbours too). At 100k endpoints 38 MB of pages become 28 MB, in
        0.2 s. The data is the same, so readers need not know: their snapshots stay valid."""
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
            return marshal.loads(_encode(self.names, name, *entry)) if entry[0] or entry[1] else None
        key = self.names.key(name)
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
        key_of = self.names.key
        for name, (below, types) in self._pending.items():
            key = key_of(name)
            if key is None:
                continue
            if below or types:
                txn.put(key, _encode(self.names, name, below, types))
            else:
                txn.delete(key)
        self._pending = {}

    def apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        """Replace one owner's ``old`` records by ``new``; return every name whose answers changed."""
        with self.batch():
            return self._apply(old, new)

    def _apply(self, old: Iterable[Record], new: Iterable[Record]) -> set[str]:
        old_set = set(old)
        if old_set:
            new_set = set(new)
            removed, added = old_set - new_set, new_set - old_set
        else:
            removed, added = set(), dict.fromkeys(new)
        if not removed and not added:
            return set()
        changes: dict[str, dict[int, tuple[set[object], list[object]]]] = {}
        for name, rtype, rdata in removed:
            changes.setdefault(name, {}).setdefault(rtype, (set(), []))[0].add(rdata)
        for name, rtype, rdata in added:
            changes.setdefault(name, {}).setdefault(rtype, (set(), []))[1].append(rdata)
        touched: set[str] = set()
        for name, by_type in changes.items():
            touched.add(name)
            entry = self._entry(name)
            types: dict[int, tuple[object, ...]] = entry[1]
            had = bool(types)
            for rtype, (gone, fresh) in by_type.items():
                current = types.get(rtype, ())
                kept = tuple(r for r in current if r not in gone) if gone else current
                rrset = kept + tuple(sorted(fresh))  # sorted: the same data gives the same bytes everywhere
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
