"""The pipeline patches the index by what each batch changed, keeping only what the store cannot tell it:
after any sequence of batches, the index must hold exactly what a pipeline built at once from the
store's final state holds."""

from __future__ import annotations

import random

import pytest

from dnsd.cluster.model import from_object
from dnsd.cluster.store import Delete, Replace, Synced, Upsert
from dnsd.dns.const import SOA
from dnsd.zone.pipeline import Pipeline, Scope
from tests.fakes.kube_api import endpoint_slice, service

NAMES = ("a", "b", "c")
ORIGINS = ("file:x.yaml", "k8s:services", "k8s:endpointslices")


def _service(rng: random.Random, name: str) -> object:
    kind = rng.choice(("ClusterIP", "ClusterIP", "Headless", "ExternalName"))
    ports = rng.choice(((("http", 80, "TCP"),), (("http", 80, "TCP"), ("", 81, "UDP")), ()))
    if kind == "ExternalName":
        obj = service("shop", name, ports=ports, type="ExternalName", external_name=f"{name}.example.org")
    else:
        obj = service("shop", name, cluster_ip=None if kind == "Headless" else f"10.0.0.{rng.randint(1, 3)}", ports=ports)
    return from_object(obj)


def _slice(rng: random.Random, name: str) -> object:
    # Each slice its own addresses: one address in two slices is answered from the first, and which is
    # first depends on the order of writes, which a rebuild does not replay.
    number = rng.randint(1, 2)
    endpoints = [{"addresses": [f"10.1.{number}.{rng.randint(1, 6)}"], "conditions": {"ready": rng.random() < 0.8},
                  **({"hostname": f"h{rng.randint(1, 3)}"} if rng.random() < 0.3 else {})} for _ in range(rng.randint(0, 3))]
    return from_object(endpoint_slice("shop", f"{name}-{number}", name, endpoints=endpoints))


def _records(pipeline: Pipeline) -> set:
    return {r for r in pipeline.index.records() if r[1] != SOA}  # the serial is the time of the last change


@pytest.mark.parametrize("scope", [Scope(), Scope(ignore_empty=True)])
@pytest.mark.parametrize("seed", range(40))
def test_patched_index_is_the_index_built_at_once(seed: int, scope: Scope) -> None:
    rng = random.Random(seed)
    pipeline = Pipeline(["cluster.local"], 5, scope=scope)
    for _ in range(25):
        ops: list = []
        for _ in range(rng.randint(1, 4)):
            origin = rng.choice(ORIGINS)
            # A file holds either kind; each API origin one (two origins of one priority holding a key
            # would make the winner depend on the order of writes, which a rebuild does not replay).
            make = _slice if origin.endswith("endpointslices") or (origin.startswith("file:") and rng.random() < 0.5) \
                else _service
            roll = rng.random()
            if roll < 0.6:
                ops.append(Upsert(origin, make(rng, rng.choice(NAMES))))
            elif roll < 0.8:
                obj = make(rng, rng.choice(NAMES))
                ops.append(Delete(origin, obj.key))  # type: ignore[attr-defined]
            else:
                objs = {o.key: o for o in (make(rng, n) for n in rng.sample(NAMES, rng.randint(0, 3)))}  # type: ignore[attr-defined]
                ops.append(Replace(origin, tuple(objs.values()), tuple(objs) if rng.random() < 0.5 else ()))
        pipeline.apply([*ops, Synced(ORIGINS[0])])
        fresh = Pipeline(["cluster.local"], 5, scope=scope)
        fresh.apply(pipeline.store.snapshot())
        assert _records(pipeline) == _records(fresh)
