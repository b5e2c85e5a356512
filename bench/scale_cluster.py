"""bench/scale's synthetic cluster (deterministic for a seed): Services, EndpointSlices and pods, the
objects the fake API serves, the changes the benchmark applies, and the names dnsperf asks."""

from __future__ import annotations

import argparse
import random
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.common import A_TYPE, apportion
from bench.scale_probe import Probe
from tests.fakes.kube_api import endpoint_slice, namespace, service

MAX_SLICE = 100  # the EndpointSlice controller's default maxEndpointsPerSlice
ZONE = "cluster.local"
NAMESPACE_WORDS = (
    "shop", "payments", "auth", "search", "catalog", "billing", "orders", "inventory", "shipping", "media",
    "analytics", "monitoring", "logging", "messaging", "identity", "pricing", "reviews", "recommend", "ads", "platform",
)
SERVICE_WORDS = ("api", "web", "cart", "user", "order", "search", "auth", "stock", "notify", "gateway", "cache", "queue",
                 "stream", "config", "session", "media", "mail", "report", "ledger", "profile", "feed", "image")
SERVICE_PORTS = (("http", 80, 8080), ("grpc", 9090, 9090), ("metrics", 9100, 9100), ("admin", 8081, 8081))


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """The cluster's size and seed, as bench/scale and bench/relist_memory take them."""
    parser.add_argument("--services", type=int, default=10_000, help="Services (default 10000)")
    parser.add_argument("--endpoints", type=int, default=100_000, help="endpoints over all Services (default 100000)")
    parser.add_argument("--namespaces", type=int, default=50, help="namespaces (default 50)")
    parser.add_argument("--seed", type=int, default=1, help="the cluster's random seed (default 1)")
    parser.add_argument("--shape", choices=("skewed", "uniform"), default="skewed",
                        help="endpoints per Service: skewed (most a few, 1%% hundreds; the default) or uniform "
                             "(--endpoints / --services each)")
    parser.add_argument("--headless", type=float, default=0.5, help="the share of headless Services (default 0.5)")


@dataclass
class Pod:
    ip: str
    ready: bool
    name: str
    uid: str
    node: str
    zone: str
    hostname: str = ""  # StatefulSet pods: published as <hostname>.<svc>.<ns>.svc.<zone>

    def endpoint(self, ns: str) -> dict[str, Any]:
        """The EndpointSlice endpoint, shaped like the controller writes it."""
        ep: dict[str, Any] = {
            "addresses": [self.ip],
            "conditions": {"ready": self.ready, "serving": self.ready, "terminating": False},
            "nodeName": self.node,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": self.name, "uid": self.uid},
            "zone": self.zone,
        }
        if self.hostname:
            ep["hostname"] = self.hostname
        return ep

    def dns_name(self, svc: Svc) -> str:
        label = self.hostname or self.ip.replace(".", "-")
        return f"{label}.{svc.fqdn}"


@dataclass
class Slice:
    name: str
    pods: list[Pod]


@dataclass
class Svc:
    namespace: str
    name: str
    uid: str
    cluster_ip: str | None  # None: headless
    ports: list[tuple[str, int, int]]  # (name, port, targetPort)
    statefulset: bool = False
    slices: list[Slice] = field(default_factory=list)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    def pods(self) -> Iterator[Pod]:
        for s in self.slices:
            yield from s.pods


class IPs:
    """Unique addresses: the initial ones drawn at random from the low half of a range, new ones
    (updates) counted up in the high half, so an update can never reuse a live address."""

    def __init__(self, base: str, bits: int, count: int, rng: random.Random) -> None:
        self.base = struct.unpack("!I", socket.inet_aton(base))[0]
        self.half = 1 << (bits - 1)
        if count > self.half - 2:
            raise ValueError(f"{count} addresses do not fit in {base}/{32 - bits}")
        self.initial = [self._ip(n) for n in rng.sample(range(1, self.half - 1), count)]
        self.next_new = self.half + 1

    def _ip(self, offset: int) -> str:
        return socket.inet_ntoa(struct.pack("!I", self.base + offset))

    def new(self) -> str:
        ip = self._ip(self.next_new)
        self.next_new += 1
        return ip


class Cluster:
    """The synthetic cluster (deterministic for a seed) and the objects the fake API serves."""

    def __init__(self, services: int, endpoints: int, namespaces: int, seed: int, shape: str = "skewed",
                 headless: float = 0.5) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.namespaces = [NAMESPACE_WORDS[i] if i < len(NAMESPACE_WORDS) else f"team-{i:02d}" for i in range(namespaces)]
        self.svc_ips = IPs("10.96.0.0", 20, services, rng)  # inside the usual 10.96.0.0/12
        self.pod_ips = IPs("10.128.0.0", 22, endpoints, rng)  # inside a 10.128.0.0/10 pod range
        self.nodes = [f"node-{i:03d}" for i in range(max(3, endpoints // 60))]
        self.services: list[Svc] = []
        svc_ip = iter(self.svc_ips.initial)
        for i in range(services):
            ns = self.namespaces[i % namespaces]
            name = f"{rng.choice(SERVICE_WORDS)}-{rng.choice(SERVICE_WORDS)}-{i}"  # the index keeps names unique
            is_headless = int((i + 1) * headless) > int(i * headless)  # spread over every namespace
            ports = rng.sample(SERVICE_PORTS, rng.randint(1, 2))
            self.services.append(Svc(ns, name, self._uid(), None if is_headless else next(svc_ip), ports,
                                     statefulset=is_headless and rng.random() < 0.3))
        # Skewed sizes, every Service >= 1 endpoint when there are enough: most small, a few big.
        weights = [1.0] * services if shape == "uniform" else [_weight(rng) for _ in self.services]
        sizes = apportion(endpoints, weights, 1)
        pod_ip = iter(self.pod_ips.initial)
        for svc, size in zip(self.services, sizes, strict=True):
            pods = [self._pod(svc, j, next(pod_ip)) for j in range(size)]
            # Every Service has at least one slice (an empty one for no endpoints, as the controller makes).
            chunks = [pods[k:k + MAX_SLICE] for k in range(0, len(pods), MAX_SLICE)] or [[]]
            svc.slices = [Slice(f"{svc.name}-{self._suffix()}", chunk) for chunk in chunks]

    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _suffix(self) -> str:
        return "".join(self.rng.choices("bcdfghjklmnpqrstvwxz2456789", k=5))

    def _pod(self, svc: Svc, ordinal: int, ip: str, hostname: str | None = None) -> Pod:
        rng = self.rng
        if svc.statefulset:
            name = hostname or f"{svc.name}-{ordinal}"
        else:
            name = f"{svc.name}-{rng.getrandbits(32):08x}-{self._suffix()}"
        node = rng.randrange(len(self.nodes))
        return Pod(ip, rng.random() >= 0.02, name, self._uid(), self.nodes[node], f"zone-{'abc'[node % 3]}",
                   hostname=name if svc.statefulset else "")

    # -- Kubernetes objects (the fake API's builders, plus what real objects carry) --------------
    def service_object(self, svc: Svc) -> dict[str, Any]:
        obj = service(svc.namespace, svc.name, cluster_ip=svc.cluster_ip,
                      ports=[{"name": n, "port": p, "protocol": "TCP", "targetPort": t} for n, p, t in svc.ports],
                      labels={"app.kubernetes.io/name": svc.name, "app.kubernetes.io/part-of": svc.namespace},
                      selector={"app.kubernetes.io/name": svc.name})
        obj["metadata"]["uid"] = svc.uid  # fixed, so slices can name their owner
        return obj

    def slice_object(self, svc: Svc, sl: Slice) -> dict[str, Any]:
        obj = endpoint_slice(svc.namespace, sl.name, svc.name, endpoints=(),
                             ports=[(n, t, "TCP") for n, _, t in svc.ports],
                             labels={"app.kubernetes.io/name": svc.name})
        # The builder deep-copies each endpoint through JSON (~10 us each, 1 s per 100k): ours are fresh dicts.
        obj["endpoints"] = [p.endpoint(svc.namespace) for p in sl.pods] or None
        obj["metadata"]["generateName"] = f"{svc.name}-"
        obj["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": svc.name, "uid": svc.uid,
                                               "controller": True, "blockOwnerDeletion": True}]
        return obj

    def objects(self) -> Iterator[dict[str, Any]]:
        for ns in self.namespaces:
            yield namespace(ns)
        for svc in self.services:
            yield self.service_object(svc)
            for sl in svc.slices:
                yield self.slice_object(svc, sl)

    # -- changes ---------------------------------------------------------------------------------
    def change_cluster_ip(self, svc: Svc) -> tuple[dict[str, Any], Probe]:
        svc.cluster_ip = self.svc_ips.new()
        return self.service_object(svc), Probe("service", svc.fqdn, A_TYPE, (svc.cluster_ip,))

    def change_endpoint(self, svc: Svc) -> tuple[dict[str, Any], Probe | None]:
        """A pod replaced: one endpoint of one slice gets a new pod (new IP, same hostname if any).
        Only a headless Service's endpoints show in DNS; for a ClusterIP Service there is nothing to probe."""
        sl = self.rng.choice([s for s in svc.slices if s.pods])
        j = self.rng.randrange(len(sl.pods))
        old = sl.pods[j]
        new = self._pod(svc, j, self.pod_ips.new(), hostname=old.hostname or None)
        new.ready = True
        sl.pods[j] = new
        probe = Probe("endpoint", new.dns_name(svc), A_TYPE, (new.ip,)) if svc.headless else None
        return self.slice_object(svc, sl), probe

    def new_service(self, index: int, endpoints: int = 10) -> tuple[list[dict[str, Any]], Probe]:
        """A Service that did not exist (ClusterIP, in an existing namespace) and its EndpointSlice, as a
        Deployment and its Service appear: the objects to create, in order, and the probe of its name."""
        svc = Svc(self.namespaces[index % len(self.namespaces)], f"new-{index}", self._uid(), self.svc_ips.new(),
                  [SERVICE_PORTS[0]])
        pods = [self._pod(svc, j, self.pod_ips.new()) for j in range(endpoints)]
        svc.slices = [Slice(f"{svc.name}-{self._suffix()}", pods)]
        return [self.service_object(svc), self.slice_object(svc, svc.slices[0])], \
            Probe("new service", svc.fqdn, A_TYPE, (svc.cluster_ip or "",))

    def stats(self) -> dict[str, int]:
        pods = [p for s in self.services for p in s.pods()]
        return {
            "namespaces": len(self.namespaces),
            "services": len(self.services),
            "headless": sum(s.headless for s in self.services),
            "statefulset_like": sum(s.statefulset for s in self.services),
            "endpointslices": sum(len(s.slices) for s in self.services),
            "endpoints": len(pods),
            "ready_endpoints": sum(p.ready for p in pods),
            "largest_service": max((sum(len(sl.pods) for sl in s.slices) for s in self.services), default=0),
        }

    def query_lines(self, count: int, avoid: set[str]) -> list[str]:
        """dnsperf lines, all of names that exist for the whole run (``avoid``: names an update removes)."""
        rng = random.Random(self.rng.random())
        clusterip = [s for s in self.services if not s.headless]
        # A answers of at most 20 addresses fit in 512 bytes without EDNS: no truncation, no TCP retries.
        small = [s for s in self.services if s.headless and 1 <= sum(p.ready for p in s.pods()) <= 20]
        pods = [p.dns_name(s) for s in small for p in s.pods() if p.ready]
        pods = [n for n in pods if n not in avoid]
        if not clusterip or (small and not pods):
            raise ValueError("the cluster is too small for the query mix")
        # A hot set, as in real traffic (and so a short warm-up fills every worker's answer table).
        clusterip, small, pods = rng.sample(clusterip, min(2000, len(clusterip))), rng.sample(small, min(500, len(small))), \
            rng.sample(pods, min(1000, len(pods)))
        lines = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.6 or (roll >= 0.7 and not small):  # no headless Service: ClusterIP names instead
                lines.append(f"{rng.choice(clusterip).fqdn} A")
            elif roll < 0.7:
                svc = rng.choice(clusterip)
                lines.append(f"_{rng.choice(svc.ports)[0]}._tcp.{svc.fqdn} SRV")
            elif roll < 0.85:
                lines.append(f"{rng.choice(small).fqdn} A")
            else:
                lines.append(f"{rng.choice(pods)} A")
        return lines


def _weight(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.6:
        return rng.uniform(1, 4)
    if roll < 0.9:
        return rng.uniform(5, 25)
    return rng.uniform(30, 150) if roll < 0.99 else rng.uniform(200, 600)


@dataclass
class Plan:
    """Updates prepared before the timed phase, so the loop only calls the fake API."""

    objs: list[dict[str, Any]]
    probes: list[Probe | None]
    kinds: list[str]


def plan_updates(cluster: Cluster, count: int, used: set[tuple[str, str]], endpoints_of: str = "any") -> Plan:
    """Alternating clusterIP and endpoint changes of random Services (``endpoints_of`` "headless": only those,
    whose endpoints show in DNS). Each Service is changed at most once (``used`` is shared between plans), so
    a probe never waits for data that a later update already replaced."""
    rng = cluster.rng
    clusterip = [s for s in cluster.services if not s.headless]
    with_pods = [s for s in cluster.services if any(sl.pods for sl in s.slices)
                 and (s.headless or endpoints_of == "any")]
    rng.shuffle(clusterip)
    rng.shuffle(with_pods)
    plan = Plan([], [], [])
    for i in range(count):
        pool = clusterip if i % 2 == 0 or endpoints_of == "none" else with_pods
        while pool and (pool[-1].namespace, pool[-1].name) in used:
            pool.pop()
        if not pool:
            break
        svc = pool.pop()
        used.add((svc.namespace, svc.name))
        obj, probe = cluster.change_cluster_ip(svc) if pool is clusterip else cluster.change_endpoint(svc)
        plan.objs.append(obj)
        plan.probes.append(probe)
        plan.kinds.append("service" if pool is clusterip else ("endpoint" if probe else "endpoint (ClusterIP, not in DNS)"))
    return plan


def every_name(cluster: Cluster) -> list[str]:
    """dnsperf lines for every name a Service gives: its own, its SRV names, its ready pods' names."""
    lines = []
    for svc in cluster.services:
        lines.append(f"{svc.fqdn} A")
        lines += [f"_{name}._tcp.{svc.fqdn} SRV" for name, _, _ in svc.ports]
        if svc.headless:
            lines += [f"{p.dns_name(svc)} A" for p in svc.pods() if p.ready]
    return lines
