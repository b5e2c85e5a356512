"""Wires the one-way flow inside a serving process: ops -> store -> records -> index -> responder.

The main process owns the one Dataplane; ``apply`` is its only input. With ``--workers N``
its index is the shared file (shared_index.py) and ``on_publish`` tells the workers which
names changed once they can read the change.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .config import Config
from .index import Index
from .model import EndpointSet, Service, ServiceKey
from .records import REVERSE_ZONES, namespace_records, service_records, zone_records
from .resolver import Answer, resolve
from .store import Op, Replace, Store
from .wire import Responder

log = logging.getLogger("dnsd.dataplane")
BIG_BATCH = 1000  # objects replaced in one batch: an initial sync or a relist


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; musl and others lack it
    except (AttributeError, OSError):
        return None


_TRIM = _malloc_trim()


def release_heap() -> None:
    """Give the heap's free memory back to the OS (glibc keeps it otherwise)."""
    if _TRIM is not None:
        _TRIM(0)


class HeapTrim:
    """A full collection and ``release_heap`` every ``every`` ticks (a tick is about a second) in a
    process that answers: only a collection of the highest generation empties CPython's free lists
    (tuples parsed and rendered with: ~1.1-1.3 MB per answering process after every name at 100k
    endpoints). Spaced so it never takes over 0.1% of the time: 2-7 ms with the data frozen,
    longer with a full forwarding cache (~4 ms per 100,000 objects)."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.ticks = 0
        self.due = every

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks >= self.due:
            started = time.perf_counter()
            gc.collect()
            release_heap()
            self.due = self.ticks + max(self.every, round((time.perf_counter() - started) * 1000))


@contextlib.contextmanager
def big_batch(ops: Sequence[Op]) -> Iterator[None]:
    """Around applying ``ops``: when they (re)list many objects, no collection midway (a relist
    allocates ~10 objects per record and collecting finds nothing), then the new long-lived data
    is frozen out of the collector's sight (a later full collection would walk 100k records,
    ~0.5 s, while queries wait) and the heap the parsing freed goes back to the OS (glibc keeps
    it otherwise: ~14 MB per process at 100k endpoints)."""
    if sum(len(op.objects) for op in ops if isinstance(op, Replace)) < BIG_BATCH:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        release_heap()


class Dataplane:
    def __init__(
        self, zones: Sequence[str], ttl: int, ns_address: str | None = None, cache_size: int = 200_000,
        cache_bytes: int = 4 << 20, max_payload: int = 1232,
        index: Any = None, *, pods: bool = False, resolver: Callable[..., Answer] = resolve,
    ) -> None:
        """``index``: an index.Index by default; a shared_index.SharedIndexWriter with workers.
        ``pods``: the index holds ``ns.pod.Z`` for known namespaces (--pods insecure);
        ``resolver``: what answers a question from the index (the resolver, or the autopath)."""
        self.zones = tuple(dict.fromkeys(z.lower().strip(".") for z in zones))
        self.ttl = ttl
        self.ns_address = ns_address
        self.pods = pods
        self.store = Store(self._changed)
        self.index = index if index is not None else Index(self.zones + REVERSE_ZONES)
        self._batch = getattr(self.index, "batch", contextlib.nullcontext)  # one write transaction per change
        self.responder = Responder(
            self.index, ttl, lambda: self.store.synced, cache_size, cache_bytes, max_payload, resolver
        )
        # Called with (names whose answers changed, serial, synced) after each batch, once readable.
        self.on_publish: Callable[[set[str], int, bool], None] | None = None
        self._touched: set[str] = set()
        self._inputs: dict[ServiceKey, tuple[Service | None, tuple[EndpointSet, ...]]] = {}
        self.programming_seconds: list[float] = []  # drained by metrics
        self._set_serial(int(time.time()))

    def apply(self, ops: Sequence[Op]) -> None:
        synced = self.store.synced
        with big_batch(ops), self._batch():  # with a shared index: one transaction, data and serial
            self.store.apply(ops)
            publish = self.on_publish is not None and (self._touched or synced != self.store.synced)
            if publish and hasattr(self.index, "publish"):
                self.index.publish(self.responder.serial, self.store.synced)
        if publish and self.on_publish is not None:  # committed: readers see it now
            touched, self._touched = self._touched, set()
            self.on_publish(touched, self.responder.serial, self.store.synced)

    def _changed(self, services: set[ServiceKey], namespaces: set[str]) -> None:
        started = time.perf_counter()
        with self._batch():
            self._change(services, namespaces)
        self.programming_seconds.append(time.perf_counter() - started)
        if len(self.programming_seconds) > 10_000:
            del self.programming_seconds[:5_000]

    def _change(self, services: set[ServiceKey], namespaces: set[str]) -> None:
        store, index, zones, inputs = self.store, self.index, self.zones, self._inputs
        touched: set[str] = set()
        for key in services:
            new = (store.services.get(key), store.endpoint_sets(key))
            old = inputs.pop(key, (None, ()))
            if new[0] is not None:
                inputs[key] = new  # the store's own immutable objects: remembering them is free
            touched |= index.apply(service_records(*old, zones), service_records(*new, zones))
        for ns in namespaces:
            records = namespace_records(ns, zones, self.pods)
            exists = store.namespace_exists(ns)
            touched |= index.apply(() if exists else records, records if exists else ())
        if touched:
            # As CoreDNS: the serial is the time of the last change, in seconds, never going back.
            self._set_serial(max(self.responder.serial, int(time.time())))
            self.responder.invalidate(touched)
            if self.on_publish is not None:
                self._touched |= touched

    def _set_serial(self, serial: int) -> None:
        """The responder holds the one serial (it rechecks cached negative answers against it)."""
        old = self.responder.serial
        if serial == old:
            return
        self.responder.serial = serial
        primary = self.zones[0]
        with self._batch():
            for zone in self.zones + REVERSE_ZONES:
                before = zone_records(zone, primary, old, self.ttl, self.ns_address) if old else ()
                after = zone_records(zone, primary, serial, self.ttl, self.ns_address)
                touched = self.index.apply(before, after)
                self.responder.invalidate(touched)
                if self.on_publish is not None:
                    self._touched |= touched


def resolver_for(config: Config) -> Callable[..., Answer]:
    """What answers a question from the index: the resolver, or the autopath (it needs the search domains)."""
    if not config.autopath:
        return resolve
    from .autopath import Autopath, search_domains

    search = config.autopath_search if config.autopath_search is not None else search_domains()
    return Autopath(config.domains, search, upstream=bool(config.upstreams or config.stub_domains))


def from_config(config: Config, index: Any = None) -> Dataplane:
    """The serving dataplane ``config`` asks for; ``index``: the shared index writer when workers share."""
    cache_size, cache_bytes = config.table_share
    return Dataplane(config.domains, config.ttl, config.ns_address, cache_size, cache_bytes,
                     config.udp_max_payload, index, pods=config.pods == "insecure", resolver=resolver_for(config))
