"""What one reflector has sent the store, and the ops that a new list or a watch event makes of it.

A relist is diffed against what is held: an object equal to the held one is kept (the new copy
is dropped at once) and only changes become ops, so the store and every worker receive nothing
for a relist that changed nothing, and equal records are never held twice (a whole Replace per
relist would keep two copies of every record alive). The held dict is updated in place, so not
even its keys are new: a relist leaves behind only what changed, not small tuples scattered over
the heap its parsing used, which glibc and pymalloc could not give back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dnsd.cluster.model import NAMESPACE, Key, Object
from dnsd.cluster.sources.kubernetes.typed import names, to_record
from dnsd.cluster.store import Delete, Op, Replace, Upsert

log = logging.getLogger(__name__)


def raw_key(kind: str, raw: Any) -> Key | None:
    """The model key of a raw object (a dict, or typed), even one that does not convert (to withdraw it)."""
    typed = names(raw)
    if typed is not None:
        name, namespace = typed
    else:
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        if not isinstance(meta, dict):
            return None
        name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    namespace = "" if kind == NAMESPACE else (namespace or "default")
    if not isinstance(namespace, str):
        return None  # a list would make an unhashable key: such an object was never held, nothing to withdraw
    return (kind, namespace, name)


def _raw_name(raw: Any) -> Any:
    """metadata.name as it came, whatever it is (for a refusal's message), or None."""
    typed = names(raw)
    if typed is not None:
        return typed[0]
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    return meta.get("name") if isinstance(meta, dict) else None


class Listing:
    """A list in progress: what it has seen so far.

    It tracks the held keys not listed yet rather than the keys listed, so that an unchanged
    object leaves nothing behind, not even its key: what survives a page is what changed.
    """

    def __init__(self, held: dict[Key, Object]) -> None:
        self.started = time.monotonic()
        self._held = held
        self.unseen: set[Key] = set(held)  # held keys not listed (yet): gone, at the end
        self.changed: dict[Key, Object] = {}  # listed objects that differ from (or are not) the held ones
        self.bad: set[Key] = set()  # invalid in this list (each reported once, not on every relist)

    def drop(self, key: Key) -> None:
        """A streamed list's DELETED event."""
        if key in self._held:
            self.unseen.add(key)
        self.changed.pop(key, None)


class Held:
    def __init__(self, origin: str, kind: str, pod_names: bool = False) -> None:
        self.pod_names = pod_names  # --endpoint-pod-names, decided at the model boundary
        self.origin = origin
        self.kind = kind
        self.objects: dict[Key, Object] = {}  # what the store holds for this origin
        self.sent = False  # the store got ``objects`` (False: the next list sends a Replace)
        self._bad: dict[Key, str] = {}  # objects skipped as invalid -> reason (log each once)

    def listing(self) -> Listing:
        return Listing(self.objects)

    def lost(self) -> None:
        """The store may have missed ops: the next list is sent whole."""
        self.sent = False

    # -- lists -----------------------------------------------------------------------
    def add(self, item: Any, listing: Listing) -> None:
        """One listed item into ``listing``; an unchanged one is only noted (the new copy is freed
        right here, and the store, which holds the same one, is sent nothing for it)."""
        try:
            obj = to_record(item, self.kind, self.pod_names)
        except ValueError as exc:
            key = self.skip(item, exc)
            if key is not None:
                listing.bad.add(key)
                listing.unseen.discard(key)  # keep serving its last good version, if any
            return
        if obj is None:
            return
        key = obj.key
        listing.unseen.discard(key)
        if self.objects.get(key) == obj:
            listing.changed.pop(key, None)
        else:
            listing.changed[key] = obj

    def commit(self, listing: Listing) -> tuple[list[Op], int]:
        """A complete list is now what is held: the ops that tell the store, and how many changes."""
        held = self.objects
        gone = listing.unseen
        for key in gone:
            del held[key]
        held.update(listing.changed)  # an existing key keeps its old tuple
        if self.sent:
            ops: list[Op] = [Delete(self.origin, key) for key in gone]
            ops += [Upsert(self.origin, obj) for obj in listing.changed.values()]
            changes = len(ops)
        else:
            ops = [Replace(self.origin, tuple(held.values()), tuple(held))]
            changes = len(held)
        self._bad = {k: v for k, v in self._bad.items() if k in listing.bad}
        return ops, changes

    # -- watch events ------------------------------------------------------------------
    def upsert(self, raw: Any) -> Op | None:
        try:
            obj = to_record(raw, self.kind, self.pod_names)
        except ValueError as exc:
            self.skip(raw, exc)  # the previous version stays
            return None
        if obj is None:  # no longer relevant (e.g. a slice lost its service label)
            return self.withdraw(raw_key(self.kind, raw))
        if self._bad:
            self._bad.pop(obj.key, None)
        if self.objects.get(obj.key) == obj:  # unchanged for DNS: nothing to send
            return None
        self.objects[obj.key] = obj
        return Upsert(self.origin, obj)

    def withdraw(self, key: Key | None) -> Op | None:
        if key is None:
            return None
        self._bad.pop(key, None)
        if self.objects.pop(key, None) is None:
            return None
        return Delete(self.origin, key)

    def skip(self, raw: Any, exc: ValueError) -> Key | None:
        key = raw_key(self.kind, raw)
        why = str(exc)
        if key is None:
            name = _raw_name(raw)
            named = f" named {name!r}" if name is not None else ""
            log.warning("%s: skipping an invalid %s%s: %s", self.origin, self.kind, named, why)
        elif self._bad.get(key) != why:
            self._bad[key] = why
            kept = "keeping its previous version" if key in self.objects else "not served"
            where = f"{key[1]}/{key[2]}" if key[1] else key[2]
            log.warning("%s: invalid %s %s: %s; %s", self.origin, self.kind, where, why, kept)
        return key
