"""The cluster as dnsd knows it, merged from every source.

Sources speak to the store only through ``apply(ops)``: a batch of plain, picklable
operations, so the same stream can feed this process's store or be forwarded to
worker processes. Each op names its *origin* (one manifest file, or one watched API
resource); when two origins hold the same object the higher-priority one wins
(the Kubernetes API beats manifest files). After a batch the store reports which
Services, namespaces and ServiceImports changed (a namespace: started or stopped existing,
or its Namespace object changed), and nothing else. ServiceImports and their slices are
kept apart from Services: a ServiceImport shares its name with the exported Service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from dnsd.cluster.model import (
    ENDPOINT_SLICE,
    ENDPOINTS,
    NAMESPACE,
    SERVICE,
    EndpointSet,
    ImportedSlice,
    Key,
    Namespace,
    Object,
    Service,
    ServiceImport,
    ServiceKey,
    service_key,
)


class Replace(NamedTuple):
    """Everything ``origin`` holds is now exactly ``objects`` (a relist, a file reload)."""

    origin: str
    objects: tuple[Object, ...]
    # The objects' keys in the same order, when the sender holds them: the store keeps these very
    # tuples rather than a copy of each.
    keys: tuple[Key, ...] = ()


class Upsert(NamedTuple):
    origin: str
    obj: Object


class Delete(NamedTuple):
    origin: str
    key: Key


class Expect(NamedTuple):
    """``origin`` exists and has not completed its first full sync yet."""

    origin: str


class Synced(NamedTuple):
    """``origin`` completed a full sync; ``ok`` False marks an outage (data is kept)."""

    origin: str
    ok: bool = True


Op = Replace | Upsert | Delete | Expect | Synced


def priority(origin: str) -> int:
    """API data wins over manifest files for the same object."""
    return 1 if origin.startswith("k8s:") else 0


class Changes(NamedTuple):
    """What one batch changed."""

    services: set[ServiceKey]
    namespaces: set[str]
    imports: set[ServiceKey]  # ServiceImports, or their slices
    # The Service each key had before the batch (None: none), for the keys whose Service changed:
    # what the records to replace were built from, so the pipeline need not keep a copy of it.
    before: dict[ServiceKey, Service | None]

    def __bool__(self) -> bool:
        return bool(self.services or self.namespaces or self.imports)


ChangeListener = Callable[[Changes], None]


class ServicesByKey(Mapping[ServiceKey, Service]):
    """The Services by (namespace, name), held as namespace -> name -> Service: the strings are the
    Services' own, not a key tuple each. Iterating makes the keys."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, Service]] = {}
        self._count = 0

    def __getitem__(self, key: ServiceKey) -> Service:
        return self._by_namespace[key[0]][key[1]]

    def get(self, key: ServiceKey, default: Any = None) -> Any:  # no KeyError raised for each miss
        by_name = self._by_namespace.get(key[0])
        return default if by_name is None else by_name.get(key[1], default)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        by_name = self._by_namespace.get(key[0])
        return by_name is not None and key[1] in by_name

    def __iter__(self) -> Iterator[ServiceKey]:
        for namespace, by_name in list(self._by_namespace.items()):  # copies: read from other threads too
            for name in list(by_name):
                yield namespace, name

    def __len__(self) -> int:
        return self._count

    def put(self, svc: Service) -> None:
        by_name = self._by_namespace.setdefault(svc.namespace, {})
        self._count += svc.name not in by_name
        by_name[svc.name] = svc

    def remove(self, svc: Service) -> None:
        by_name = self._by_namespace[svc.namespace]
        del by_name[svc.name]
        self._count -= 1
        if not by_name:
            del self._by_namespace[svc.namespace]


class Store:
    def __init__(self, on_change: ChangeListener | None = None) -> None:
        self.on_change = on_change
        self._by_origin: dict[str, dict[Key, Object]] = {}
        # The effective object of a key that several origins hold (otherwise it is its one holder's):
        # a dict of every key would be a third copy of the largest ones.
        self._contested: dict[Key, Object] = {}
        self.services = ServicesByKey()
        # Endpoint sets by the Service they belong to (namespace -> Service name -> its slices), in the
        # order they came; slices win over legacy Endpoints. By name, not by a (namespace, name) key:
        # the strings are the slices' own, not a key tuple each. A tuple of slices, not a dict by name,
        # and a lone slice as itself (an EndpointSet, never a plain tuple): most Services have one.
        self._slices: dict[str, dict[str, EndpointSet | tuple[EndpointSet, ...]]] = {}
        self.legacy: dict[ServiceKey, EndpointSet] = {}
        self.imports: dict[ServiceKey, ServiceImport] = {}
        self.imported_slices: dict[ServiceKey, dict[str, ImportedSlice]] = {}
        self.namespaces: dict[str, int] = {}  # namespace -> Namespace objects + Services in it
        self._pending: set[str] = set()
        self._synced_once = False
        self.healthy: dict[str, bool] = {}

    # -- reading -----------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """True once every expected origin has completed its first full sync."""
        return self._synced_once

    @property
    def slices(self) -> dict[ServiceKey, tuple[EndpointSet, ...]]:
        """Every Service's EndpointSlices, by Service (made on each call: for inspection)."""
        return {(ns, name): _sets(held) for ns, by_name in self._slices.items() for name, held in by_name.items()}

    def endpoint_sets(self, key: ServiceKey) -> tuple[EndpointSet, ...]:
        by_name = self._slices.get(key[0])
        slices = by_name.get(key[1]) if by_name else None
        if slices:
            return _sets(slices)
        legacy = self.legacy.get(key)
        return (legacy,) if legacy else ()

    def import_slices(self, key: ServiceKey) -> tuple[ImportedSlice, ...]:
        slices = self.imported_slices.get(key)
        return tuple(slices.values()) if slices else ()

    def namespace_exists(self, namespace: str) -> bool:
        return namespace in self.namespaces

    def namespace(self, name: str) -> Namespace | None:
        """The Namespace object of ``name``, if a source holds one (a namespace also exists by its Services)."""
        obj = self._effective((NAMESPACE, "", name))
        return obj if isinstance(obj, Namespace) else None

    def _effective(self, key: Key) -> Object | None:
        """The object of the highest-priority origin holding ``key``."""
        obj = self._contested.get(key)
        if obj is not None:
            return obj
        for objs in self._by_origin.values():
            obj = objs.get(key)
            if obj is not None:
                return obj  # the one holder
        return None

    def snapshot(self) -> list[Op]:
        """Ops that rebuild this store elsewhere (a new worker process)."""
        ops: list[Op] = [Replace(o, tuple(objs.values())) for o, objs in self._by_origin.items()]
        ops += [Expect(o) for o in self._pending]
        if self._synced_once and not self._pending:
            ops += [Synced(o, ok) for o, ok in self.healthy.items()]
        return ops

    # -- writing -----------------------------------------------------------------
    def apply(self, ops: Sequence[Op]) -> Changes:
        changes = Changes(set(), set(), set(), {})
        for op in ops:
            if isinstance(op, Upsert):
                self._set(op.origin, op.obj.key, op.obj, changes)
            elif isinstance(op, Delete):
                self._set(op.origin, op.key, None, changes)
            elif isinstance(op, Replace):
                old = self._by_origin.get(op.origin, {})
                new = dict(zip(op.keys, op.objects, strict=True)) if op.keys else {o.key: o for o in op.objects}
                others = self._others(op.origin)  # once for the whole list: only this origin's objects change
                for key in old.keys() - new.keys():
                    self._set(op.origin, key, None, changes, others)
                for key, obj in new.items():
                    if old.get(key) != obj:
                        self._set(op.origin, key, obj, changes, others)
            elif isinstance(op, Expect):
                self._pending.add(op.origin)
                self.healthy[op.origin] = False
            elif isinstance(op, Synced):
                self._pending.discard(op.origin)
                self.healthy[op.origin] = op.ok
        if changes and self.on_change:
            self.on_change(changes)
        # Only now: /ready (read from another thread) must not turn 200 before the answers exist.
        if not self._synced_once and not self._pending and any(isinstance(op, Synced) and op.ok for op in ops):
            self._synced_once = True
        return changes

    def _others(self, origin: str) -> list[tuple[int, dict[Key, Object]]]:
        """The other origins that hold anything, with their priority."""
        return [(priority(other), objs) for other, objs in self._by_origin.items() if other != origin and objs]

    def _set(self, origin: str, key: Key, obj: Object | None, changes: Changes,
             others: list[tuple[int, dict[Key, Object]]] | None = None) -> None:
        held = self._by_origin.setdefault(origin, {})
        mine = held.get(key)
        if obj is None and mine is None:
            return
        # The effective object is the one from the highest-priority origin holding the key (on a tie,
        # the one written last). Before this change: the contested one, else its one holder's.
        rival: Object | None = None
        rivals = 0
        winner: Object | None = obj
        best = priority(origin) if obj is not None else -1
        for rank, objs in self._others(origin) if others is None else others:
            other_obj = objs.get(key)
            if other_obj is not None:
                rival, rivals = other_obj, rivals + 1
                if rank > best:
                    winner, best = other_obj, rank
        old = self._contested.get(key)
        if old is None:
            old = mine if mine is not None else rival
        if obj is None:
            del held[key]
        else:
            held[key] = obj
        if rivals + (obj is not None) > 1:
            assert winner is not None
            self._contested[key] = winner
        else:
            self._contested.pop(key, None)
        if old == winner:
            return
        if old is not None:
            self._unindex(old, changes)
        if winner is not None:
            self._index(winner, changes)

    def _index(self, obj: Object, changes: Changes) -> None:
        namespaces = changes.namespaces
        if isinstance(obj, Namespace):
            self._ns_ref(obj.name, 1, namespaces)
            namespaces.add(obj.name)  # its labels may have changed: --namespace-labels reads them
            return
        skey = service_key(obj)
        if isinstance(obj, ServiceImport):
            changes.imports.add(skey)
            self.imports[skey] = obj
            return
        if isinstance(obj, ImportedSlice):
            changes.imports.add(skey)
            self.imported_slices.setdefault(skey, {})[obj.name] = obj
            return
        changes.services.add(skey)
        if isinstance(obj, Service):
            changes.before.setdefault(skey, None)  # after _unindex's, when one was replaced
            self.services.put(obj)
            self._ns_ref(obj.namespace, 1, namespaces)
        elif obj.kind == ENDPOINT_SLICE:
            by_name = self._slices.get(obj.namespace)
            if by_name is None:
                by_name = self._slices[obj.namespace] = {}
            held = by_name.get(obj.service)
            if held is None:
                by_name[obj.service] = obj
            else:
                slices = _sets(held)
                # In place when the slice is known (a dict's order), else last.
                at = next((i for i, one in enumerate(slices) if one.name == obj.name), len(slices))
                by_name[obj.service] = _held((*slices[:at], obj, *slices[at + 1:]))
        else:
            self.legacy[skey] = obj

    def _unindex(self, obj: Object, changes: Changes) -> None:
        namespaces = changes.namespaces
        if isinstance(obj, Namespace):
            self._ns_ref(obj.name, -1, namespaces)
            namespaces.add(obj.name)
            return
        skey = service_key(obj)
        if isinstance(obj, ServiceImport):
            changes.imports.add(skey)
            del self.imports[skey]
            return
        if isinstance(obj, ImportedSlice):
            changes.imports.add(skey)
            imported = self.imported_slices[skey]
            del imported[obj.name]
            if not imported:
                del self.imported_slices[skey]
            return
        changes.services.add(skey)
        if isinstance(obj, Service):
            changes.before.setdefault(skey, obj)
            self.services.remove(obj)
            self._ns_ref(obj.namespace, -1, namespaces)
        elif obj.kind == ENDPOINT_SLICE:
            by_name = self._slices[obj.namespace]
            slices = tuple(one for one in _sets(by_name[obj.service]) if one.name != obj.name)
            if slices:
                by_name[obj.service] = _held(slices)
            else:
                del by_name[obj.service]
                if not by_name:
                    del self._slices[obj.namespace]
        else:
            del self.legacy[skey]

    def _ns_ref(self, namespace: str, delta: int, namespaces: set[str]) -> None:
        count = self.namespaces.get(namespace, 0) + delta
        if count:
            self.namespaces[namespace] = count
        else:
            del self.namespaces[namespace]
        if count == (1 if delta > 0 else 0):  # the namespace started or stopped existing
            namespaces.add(namespace)


def _sets(held: EndpointSet | tuple[EndpointSet, ...]) -> tuple[EndpointSet, ...]:
    """A Service's slices as the store holds them (a lone one as itself) as a tuple."""
    return held if held.__class__ is tuple else (held,)  # type: ignore[return-value]


def _held(slices: tuple[EndpointSet, ...]) -> EndpointSet | tuple[EndpointSet, ...]:
    return slices[0] if len(slices) == 1 else slices


__all__ = [
    "Changes", "Delete", "Expect", "Op", "Replace", "ServicesByKey", "Store", "Synced", "Upsert",
    "ENDPOINT_SLICE", "ENDPOINTS", "NAMESPACE", "SERVICE",
]
