"""The one-way flow of cluster changes: ops -> store -> records -> index, and the names they touched.

The main process owns the one Pipeline; ``apply`` is its only input. Whatever keeps answers
derived from the index (the responder's reply table) learns which names changed through
``on_change``. With ``--workers N`` the index is the shared file (lmdb_index.py) and
``on_publish`` tells the workers which names changed once they can read the change.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from dnsd.cluster.model import EndpointSet, Service, ServiceKey
from dnsd.cluster.store import Op, Replace, Store
from dnsd.runtime import release_heap
from dnsd.zone.index import Index, IndexWriter
from dnsd.zone.records import REVERSE_ZONES, namespace_records, service_records, zone_records

BIG_BATCH = 1000  # objects replaced in one batch: an initial sync or a relist


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


class Pipeline:
    def __init__(
        self, zones: Sequence[str], ttl: int, ns_address: str | None = None, index: IndexWriter | None = None, *,
        pods: bool = False,
    ) -> None:
        """``index``: an in-memory Index by default; the shared file's writer with workers.
        ``pods``: the index holds ``ns.pod.Z`` for known namespaces (--pods insecure)."""
        self.zones = tuple(dict.fromkeys(z.lower().strip(".") for z in zones))
        self.ttl = ttl
        self.ns_address = ns_address
        self.pods = pods
        self.store = Store(self._changed)
        self.index: IndexWriter = index if index is not None else Index(self.zones + REVERSE_ZONES)
        self.serial = 0  # the zones' SOA serial: the time of the last change
        # Called with the names whose answers changed, as soon as the index holds the change.
        self.on_change: Callable[[Iterable[str]], None] = lambda names: None
        # Called with (names whose answers changed, serial, synced) after each batch, once readable.
        self.on_publish: Callable[[set[str], int, bool], None] | None = None
        self._touched: set[str] = set()
        self._inputs: dict[ServiceKey, tuple[Service | None, tuple[EndpointSet, ...]]] = {}
        self.programming_seconds: list[float] = []  # how long each change took to reach the index
        self._set_serial(int(time.time()))

    def apply(self, ops: Sequence[Op]) -> None:
        synced = self.store.synced
        with big_batch(ops), self.index.batch():  # with a shared index: one transaction, data and serial
            self.store.apply(ops)
            publish = self.on_publish is not None and bool(self._touched or synced != self.store.synced)
            if publish:
                self.index.publish(self.serial, self.store.synced)
        if publish and self.on_publish is not None:  # committed: readers see it now
            touched, self._touched = self._touched, set()
            self.on_publish(touched, self.serial, self.store.synced)

    def drain_programming(self) -> list[float]:
        """The seconds each change took since the last call (for the metrics)."""
        seconds, self.programming_seconds = self.programming_seconds, []
        return seconds

    def _changed(self, services: set[ServiceKey], namespaces: set[str]) -> None:
        started = time.perf_counter()
        with self.index.batch():
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
            self._set_serial(max(self.serial, int(time.time())))
            self.on_change(touched)
            if self.on_publish is not None:
                self._touched |= touched

    def _set_serial(self, serial: int) -> None:
        old = self.serial
        if serial == old:
            return
        self.serial = serial
        primary = self.zones[0]
        with self.index.batch():
            for zone in self.zones + REVERSE_ZONES:
                before = zone_records(zone, primary, old, self.ttl, self.ns_address) if old else ()
                after = zone_records(zone, primary, serial, self.ttl, self.ns_address)
                touched = self.index.apply(before, after)
                self.on_change(touched)
                if self.on_publish is not None:
                    self._touched |= touched


__all__ = ["BIG_BATCH", "Pipeline", "big_batch"]
