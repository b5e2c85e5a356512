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
from typing import NamedTuple

from dnsd.cluster import selector
from dnsd.cluster.model import CLUSTER_IP, HEADLESS, EndpointSet, ImportedSlice, Service, ServiceImport, ServiceKey
from dnsd.cluster.store import Changes, Op, Replace, Store
from dnsd.config import Config
from dnsd.runtime import release_heap
from dnsd.zone.index import Index, IndexWriter
from dnsd.zone.records import (
    CLUSTER,
    EXTERNAL,
    MULTICLUSTER,
    REVERSE_ZONES,
    import_records,
    namespace_records,
    service_records,
    zone_records,
)

BIG_BATCH = 1000  # objects replaced in one batch: an initial sync or a relist


class Scope(NamedTuple):
    """What of the cluster the zone serves: CoreDNS's kubernetes-plugin options that leave records out."""

    ignore_empty: bool = False  # --ignore-empty-service: a ClusterIP Service without endpoints is NXDOMAIN
    endpoints: bool = True  # False (--no-endpoints): no endpoint records; a headless Service is NXDOMAIN
    namespace_labels: selector.Selector | None = None  # --namespace-labels: only matching namespaces

    @classmethod
    def from_config(cls, config: Config) -> Scope:
        labels = selector.parse(config.namespace_labels) if config.namespace_labels else None
        return cls(config.ignore_empty_service, not config.no_endpoints, labels)


EVERYTHING = Scope()  # no option leaves anything out


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
        pods: bool = False, scope: Scope = EVERYTHING, external: Sequence[str] = (), multicluster: Sequence[str] = (),
    ) -> None:
        """``index``: an in-memory Index by default; the shared file's writer with workers.
        ``pods``: the index holds ``ns.pod.Z`` for known namespaces (--pods insecure).
        ``scope``: which Services, endpoints and namespaces produce records.
        ``external``: zones of the Services' external addresses (--external-zone).
        ``multicluster``: zones of the clusterset's ServiceImports (--multicluster-zone)."""
        self.zones = tuple(dict.fromkeys(z.lower().strip(".") for z in zones))
        self.external = tuple(dict.fromkeys(z.lower().strip(".") for z in external))
        self.multicluster = tuple(dict.fromkeys(z.lower().strip(".") for z in multicluster))
        self.ttl = ttl
        self.ns_address = ns_address
        self.pods = pods
        self.scope = scope
        self._namespaces: set[str] = set()  # the namespaces whose records the index holds
        self.store = Store(self._changed)
        self.index: IndexWriter = index if index is not None else Index(self.apexes)
        self.serial = 0  # the zones' SOA serial: the time of the last change
        # Called with the names whose answers changed, as soon as the index holds the change.
        self.on_change: Callable[[Iterable[str]], None] = lambda names: None
        # Called with (names whose answers changed, serial, synced) after each batch, once readable.
        self.on_publish: Callable[[set[str], int, bool], None] | None = None
        self._touched: set[str] = set()
        # What each Service's records in the index were built from, when the store cannot tell: its
        # endpoint sets too, for records that show them (headless, or --ignore-empty-service); with
        # --namespace-labels the Service alone too (whether it was served is the pipeline's call).
        # Otherwise the store's Service is it, or the one Changes.before names.
        self._inputs: dict[ServiceKey, Service | tuple[Service, tuple[EndpointSet, ...]]] = {}
        self._imports: dict[ServiceKey, tuple[ServiceImport | None, tuple[ImportedSlice, ...]]] = {}
        self.programming_seconds: list[float] = []  # how long each change took to reach the index
        self._set_serial(int(time.time()))

    @property
    def apexes(self) -> tuple[str, ...]:
        """Every zone the index holds, in the order Config.index_zones names them."""
        return self.zones + REVERSE_ZONES + self.external + self.multicluster

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

    def _changed(self, changes: Changes) -> None:
        started = time.perf_counter()
        with self.index.batch():
            self._change(*changes)
        self.programming_seconds.append(time.perf_counter() - started)
        if len(self.programming_seconds) > 10_000:
            del self.programming_seconds[:5_000]

    def _change(self, services: set[ServiceKey], namespaces: set[str], imports: set[ServiceKey],
                before: dict[ServiceKey, Service | None]) -> None:
        store, index, zones, inputs, external = self.store, self.index, self.zones, self._inputs, self.external
        ignore_empty, endpoints = self.scope.ignore_empty, self.scope.endpoints
        served = self._served_namespace()
        if self.scope.namespace_labels is not None and namespaces:
            # A namespace's labels decide for every Service in it: redo them all when they change.
            services = services | {key for key in store.services if key[0] in namespaces}
            imports = imports | {key for key in store.imports if key[0] in namespaces}
        touched: set[str] = set()
        if self.multicluster:
            touched |= self._change_imports(imports, served)
        every = self.scope.namespace_labels is None  # every Service is served: the index follows the store
        # Services that had no records (all of them in a first load): added together, in the same order
        # (index.add), before any other change reaches the index.
        fresh: list[tuple[Service, tuple[EndpointSet, ...]]] = []
        for key in services:
            svc = store.services.get(key)
            if svc is not None and not served(svc.namespace):
                svc = None
            held = inputs.pop(key, None)
            old: tuple[Service | None, tuple[EndpointSet, ...]] = (None, ())
            if held is not None:
                old = (held, ()) if isinstance(held, Service) else held
            elif every:
                # Not kept: its records were made from the Service alone, the one before this batch if it changed.
                old = (before.get(key, svc), ())
            new: tuple[Service | None, tuple[EndpointSet, ...]] = (None, ())
            if svc is None:
                pass
            elif svc.type == HEADLESS or (ignore_empty and svc.type == CLUSTER_IP):
                pair = (svc, store.endpoint_sets(key) if endpoints else ())
                inputs[key] = new = pair  # the store's own immutable objects: free to keep
            else:
                if not every:
                    inputs[key] = svc  # whether it was served is not the store's to tell
                if old[0] is svc:
                    continue  # only its endpoints changed, which its records do not show
                new = (svc, ())
            if old[0] is None:
                if new[0] is not None:
                    fresh.append(new)  # type: ignore[arg-type]
                continue
            if fresh:
                touched = _union(touched, self._add(fresh))
                fresh = []
            touched |= index.apply(service_records(*old, zones, ignore_empty=ignore_empty, external=external),
                                   service_records(*new, zones, ignore_empty=ignore_empty, external=external))
        if fresh:
            touched = _union(touched, self._add(fresh))
        for ns in namespaces:
            exists = store.namespace_exists(ns) and served(ns)
            if exists == (ns in self._namespaces):
                continue  # e.g. a label changed that does not change the selector's verdict
            records = namespace_records(ns, zones, self.pods)
            touched |= index.apply(() if exists else records, records if exists else ())
            (self._namespaces.add if exists else self._namespaces.discard)(ns)
        if touched:
            # As CoreDNS: the serial is the time of the last change, in seconds, never going back.
            self._set_serial(max(self.serial, int(time.time())))
            self.on_change(touched)
            if self.on_publish is not None:
                self._touched |= touched

    def _add(self, fresh: list[tuple[Service, tuple[EndpointSet, ...]]]) -> set[str]:
        """The records of Services that had none, made as the index takes them."""
        zones, ignore_empty, external = self.zones, self.scope.ignore_empty, self.external
        return self.index.add(service_records(*new, zones, ignore_empty=ignore_empty, external=external)
                              for new in fresh)

    def _change_imports(self, imports: set[ServiceKey], served: Callable[[str], bool]) -> set[str]:
        """ServiceImports and their slices, as Services above (their own inputs: names may be shared)."""
        store, index, zones, inputs = self.store, self.index, self.multicluster, self._imports
        touched: set[str] = set()
        for key in imports:
            imp = store.imports.get(key)
            new = (imp if imp is None or served(imp.namespace) else None,
                   store.import_slices(key) if self.scope.endpoints else ())
            old = inputs.pop(key, (None, ()))
            if new[0] is not None:
                inputs[key] = new
            touched |= index.apply(import_records(*old, zones), import_records(*new, zones))
        return touched

    def _served_namespace(self) -> Callable[[str], bool]:
        """Whether a namespace is served, decided here for every source (manifests and the API alike):
        the pipeline is the one stage that chooses which Services produce records, and the store keeps
        the whole cluster, so a namespace whose labels change back is served again at once. With
        --namespace-labels, a namespace is served when a Namespace object with matching labels is known
        (as CoreDNS, which serves the namespaces its selector lists). Memoised for one batch."""
        labels = self.scope.namespace_labels
        if labels is None:
            return lambda ns: True
        verdicts: dict[str, bool] = {}

        def served(ns: str) -> bool:
            verdict = verdicts.get(ns)
            if verdict is None:
                obj = self.store.namespace(ns)
                verdict = verdicts[ns] = obj is not None and selector.matches(labels, dict(obj.labels))
            return verdict

        return served

    def _set_serial(self, serial: int) -> None:
        old = self.serial
        if serial == old:
            return
        self.serial = serial
        primary = self.zones[0]
        with self.index.batch():
            for zone in self.apexes:
                role = EXTERNAL if zone in self.external else MULTICLUSTER if zone in self.multicluster else CLUSTER
                before = zone_records(zone, primary, old, self.ttl, self.ns_address, role) if old else ()
                after = zone_records(zone, primary, serial, self.ttl, self.ns_address, role)
                touched = self.index.apply(before, after)
                self.on_change(touched)
                if self.on_publish is not None:
                    self._touched |= touched


def _union(one: set[str], other: set[str]) -> set[str]:
    """Both sets' names, the smaller merged into the larger: a first load's add() touches every name of the
    cluster, and copied into an empty set they would make a second table as large."""
    if len(one) < len(other):
        one, other = other, one
    one |= other
    return one


__all__ = ["BIG_BATCH", "EVERYTHING", "Pipeline", "Scope", "big_batch"]
