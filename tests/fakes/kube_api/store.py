"""The object store: immutable object versions, one global resourceVersion, the bounded event
history that watches resume from (older RVs get 410) and the sorted snapshots lists page through."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from .resources import ADDED, DELETED, JSON, MODIFIED, Key, ResourceType, resource_type


@dataclasses.dataclass(slots=True, eq=False)
class Entry:
    """One immutable object version: never mutated once stored."""

    rt: ResourceType
    key: Key
    # Only metadata is kept as a dict (labels for selectors, server-owned
    # fields for updates); the object itself lives in `body`, encoded once.
    meta: JSON
    body: bytes  # JSON without kind/apiVersion (list item form)
    _full: bytes | None = None

    @property
    def labels(self) -> Mapping[str, str]:
        return self.meta.get("labels") or {}

    @property
    def full(self) -> bytes:
        if self._full is None:
            self._full = self.rt.prefix + self.body[1:]
        return self._full


def encode(obj: JSON) -> bytes:
    return json.dumps(
        {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
        separators=(",", ":"),
    ).encode()


def with_rv(entry: Entry, rv: int) -> Entry:
    """The same object stamped with another resourceVersion (DELETED events)."""
    obj = json.loads(entry.full)
    obj["metadata"]["resourceVersion"] = str(rv)
    return Entry(entry.rt, entry.key, obj["metadata"], encode(obj))


@dataclasses.dataclass(slots=True, eq=False)
class Event:
    rv: int
    type: str
    entry: Entry  # new state; for DELETED the last state with the deletion RV
    prev: Entry | None


@dataclasses.dataclass(slots=True)
class Snapshot:
    keys: list[Key]
    entries: list[Entry]


_clock: tuple[int, str] = (0, "")


def timestamp() -> str:
    """RFC 3339 UTC timestamp at second precision (cached: bulk loads call it a lot)."""
    global _clock
    sec = int(time.time())
    if _clock[0] != sec:
        _clock = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _clock[1]


class ObjectStore:
    """The CRUD side of FakeKubeAPI (its ``__init__`` holds the state, guarded by ``_lock``): every
    change bumps the resourceVersion, is kept in the history and queued to the open watchers."""

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        with self._lock:
            return self._rv

    def create(self, obj: JSON) -> JSON:
        """Create; ValueError if it already exists. Returns the stored object."""
        rt, key, new = self._prepare(obj)
        with self._lock:
            if key in self._store[rt.resource]:
                raise ValueError(f'{rt.resource} "{key[1]}" already exists')
            return self._commit(rt, key, new)

    def update(self, obj: JSON) -> JSON:
        """Replace an existing object; KeyError if missing.

        The incoming resourceVersion is ignored (no 409 conflicts). Like a real
        PUT, replacing with identical content is a no-op: no RV bump, no event.
        """
        rt, key, new = self._prepare(obj)
        with self._lock:
            if key not in self._store[rt.resource]:
                raise KeyError(f'{rt.resource} "{key[1]}" not found')
            return self._commit(rt, key, new)

    def apply(self, obj: JSON) -> JSON:
        """Create or replace. An unchanged object is a no-op (no RV bump, no event)."""
        rt, key, new = self._prepare(obj)
        with self._lock:
            return self._commit(rt, key, new)

    def load(self, objs: Iterable[JSON]) -> int:
        """Bulk apply (O(n), one lock hold); returns the resulting global RV."""
        prepared = [self._prepare(o) for o in objs]  # validate before changing anything
        with self._lock:
            for rt, key, new in prepared:
                self._commit(rt, key, new, want_copy=False)
            # Sorted now, as a real API server's watch cache is ready before the first list: else the first
            # list after a big load waits for the sort on the server's loop, time the client would seem to spend.
            for rt in {rt for rt, _, _ in prepared}:
                self._sorted_snapshot(rt)
            return self._rv

    def delete(self, kind: str, namespace: str | None, name: str) -> JSON:
        """Delete; returns the last state (with the deletion RV). KeyError if missing.

        Deleting a Namespace does not cascade to its objects.
        """
        rt = resource_type(kind)
        key = ((namespace or "default") if rt.namespaced else "", name)
        with self._lock:
            prev = self._store[rt.resource].pop(key, None)
            if prev is None:
                raise KeyError(f'{rt.resource} "{name}" not found')
            self._rv += 1
            gone = with_rv(prev, self._rv)
            self._sorted[rt.resource] = None
            self._record_event(Event(self._rv, DELETED, gone, prev))
            return json.loads(gone.full)

    def get(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of the stored object, or None."""
        rt = resource_type(kind)
        key = ((namespace or "default") if rt.namespaced else "", name)
        with self._lock:
            e = self._store[rt.resource].get(key)
        return None if e is None else json.loads(e.full)

    def objects(self, kind: str, namespace: str | None = None) -> list[JSON]:
        """Copies of all stored objects of a kind, sorted by namespace/name."""
        rt = resource_type(kind)
        with self._lock:
            snap = self._sorted_snapshot(rt)
        return [json.loads(e.full) for e in snap.entries if namespace is None or e.key[0] == namespace]

    @staticmethod
    def _prepare(obj: JSON) -> tuple[ResourceType, Key, JSON]:
        rt = resource_type(obj["kind"])
        # No deep copy (bulk loads must be fast): the object is encoded right
        # away in _commit; only metadata, which we keep, is copied.
        new = {**obj, "apiVersion": rt.api_version}
        meta = new["metadata"] = dict(obj.get("metadata") or {})
        for field in ("labels", "annotations"):
            if field in meta:
                meta[field] = dict(meta[field])
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        return rt, (meta.get("namespace", ""), meta["name"]), new

    def _commit(self, rt: ResourceType, key: Key, new: JSON, *, want_copy: bool = True) -> JSON:
        # Caller holds the lock.
        store = self._store[rt.resource]
        prev = store.get(key)
        meta = new["metadata"]
        if prev is not None:
            # Server-owned fields survive a replace, like a real PUT.
            meta["uid"] = prev.meta["uid"]
            meta["creationTimestamp"] = prev.meta["creationTimestamp"]
            meta["resourceVersion"] = prev.meta["resourceVersion"]
            if encode(new) == prev.body:
                return json.loads(prev.full) if want_copy else new  # no-op update: no RV bump
        else:
            meta["uid"] = meta.get("uid") or str(uuid.uuid4())
            meta["creationTimestamp"] = meta.get("creationTimestamp") or timestamp()
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        entry = Entry(rt, key, meta, encode(new))
        store[key] = entry
        self._sorted[rt.resource] = None
        self._record_event(Event(self._rv, ADDED if prev is None else MODIFIED, entry, prev))
        return json.loads(entry.full) if want_copy else new

    def _record_event(self, ev: Event) -> None:
        # Caller holds the lock. Like etcd + the watch cache: a bounded history
        # for resuming watches, and fan-out to every open watcher right away
        # (so a slow-to-flush watcher never loses events).
        self._backlog.append(ev)
        while len(self._backlog) > self._backlog_max:
            self._compacted_rv = self._backlog.popleft().rv
        for w in self._watchers:
            if w.rt is ev.entry.rt:
                w.queue.append(ev)
        self._expire_snapshots()
        if self._watchers and not self._notify_pending and self._loop is not None:
            self._notify_pending = True
            try:
                self._loop.call_soon_threadsafe(self._notify_watchers)
            except RuntimeError:  # loop already closed by stop()
                self._notify_pending = False

    def _notify_watchers(self) -> None:
        with self._lock:
            self._notify_pending = False
            watchers = list(self._watchers)
        for w in watchers:
            w.wake.set()

    def _expire_snapshots(self) -> None:
        while self._snapshots:
            (_, rv), _ = next(iter(self._snapshots.items()))
            if rv >= self._compacted_rv:
                break
            self._snapshots.popitem(last=False)

    def _sorted_snapshot(self, rt: ResourceType) -> Snapshot:
        # Caller holds the lock. Cached until the resource changes, so repeated
        # lists / snapshots of an unchanged 20k-object resource are O(1).
        snap = self._sorted[rt.resource]
        if snap is None:
            items = sorted(self._store[rt.resource].items(), key=lambda kv: kv[0])
            snap = Snapshot([k for k, _ in items], [e for _, e in items])
            self._sorted[rt.resource] = snap
        return snap
