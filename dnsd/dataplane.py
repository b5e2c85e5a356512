"""Wires the one-way flow inside a serving process: ops -> store -> records -> index -> responder.

A worker process owns one Dataplane; ``apply`` is its only input.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence

from .index import Index
from .model import EndpointSet, Service, ServiceKey
from .records import REVERSE_ZONES, namespace_records, service_records, zone_records
from .store import Op, Replace, Store
from .wire import Responder

log = logging.getLogger("dnsd.dataplane")
BIG_BATCH = 1000  # objects replaced in one batch: an initial sync or a relist


class Dataplane:
    def __init__(
        self, zones: Sequence[str], ttl: int, ns_address: str | None = None, cache_size: int = 200_000
    ) -> None:
        self.zones = tuple(dict.fromkeys(z.lower().strip(".") for z in zones))
        self.ttl = ttl
        self.ns_address = ns_address
        self.store = Store(self._changed)
        self.index = Index(self.zones + REVERSE_ZONES)
        self.responder = Responder(self.index, ttl, lambda: self.store.synced, cache_size)
        self._inputs: dict[ServiceKey, tuple[Service | None, tuple[EndpointSet, ...]]] = {}
        self.programming_seconds: list[float] = []  # drained by metrics
        self._set_serial(int(time.time()))

    def apply(self, ops: Sequence[Op]) -> None:
        big = sum(len(op.objects) for op in ops if isinstance(op, Replace)) >= BIG_BATCH
        if big:
            gc.disable()  # a (re)list allocates ~10 objects per record: collecting midway finds nothing
        try:
            self.store.apply(ops)
        finally:
            if big:
                # The data is long-lived: move it out of the collector's sight, so a later full
                # collection does not walk 100k records (~0.5 s) while queries wait.
                gc.freeze()
                gc.enable()

    def _changed(self, services: set[ServiceKey], namespaces: set[str]) -> None:
        started = time.perf_counter()
        store, index, zones, inputs = self.store, self.index, self.zones, self._inputs
        touched: set[str] = set()
        for key in services:
            new = (store.services.get(key), store.endpoint_sets(key))
            old = inputs.pop(key, (None, ()))
            if new[0] is not None:
                inputs[key] = new  # the store's own immutable objects: remembering them is free
            touched |= index.apply(service_records(*old, zones), service_records(*new, zones))
        for ns in namespaces:
            records = namespace_records(ns, zones)
            exists = store.namespace_exists(ns)
            touched |= index.apply(() if exists else records, records if exists else ())
        if touched:
            # As CoreDNS: the serial is the time of the last change, in seconds, never going back.
            self._set_serial(max(self.responder.serial, int(time.time())))
            self.responder.invalidate(touched)
        self.programming_seconds.append(time.perf_counter() - started)
        if len(self.programming_seconds) > 10_000:
            del self.programming_seconds[:5_000]

    def _set_serial(self, serial: int) -> None:
        """The responder holds the one serial (it rechecks cached negative answers against it)."""
        old = self.responder.serial
        if serial == old:
            return
        self.responder.serial = serial
        primary = self.zones[0]
        for zone in self.zones + REVERSE_ZONES:
            before = zone_records(zone, primary, old, self.ttl, self.ns_address) if old else ()
            after = zone_records(zone, primary, serial, self.ttl, self.ns_address)
            self.responder.invalidate(self.index.apply(before, after))
