"""Deterministic synthetic cluster for benchmarks: manifests for dnsd and a dnsperf query file.

    python3 -m bench.gen_cluster --services 1000 --endpoints 10000 --out /tmp/cluster \
        [--namespaces 20] [--seed 1] [--queries /tmp/queries.txt --query-count 100000]

The cluster: 80% ClusterIP Services with 1-3 named ports, 20% headless. 80% of the
endpoints sit on the headless Services with a skewed size mix (many with a handful of
pods, a few StatefulSet-like ones with hundreds), the rest on ClusterIP Services (not
published in DNS, but loaded like in a real cluster). EndpointSlices hold at most 100
endpoints; ~40% of the headless Services have hostnames (StatefulSet pods); ~2% of the
endpoints are not ready. One JSON ``kind: List`` file per namespace (JSON loads faster
than YAML).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import apportion

NAMESPACES = (
    "shop", "payments", "auth", "search", "catalog", "billing", "orders", "inventory", "shipping", "media",
    "analytics", "monitoring", "logging", "messaging", "identity", "pricing", "reviews", "recommend", "ads", "platform",
)
PREFIXES = (
    "api", "web", "cart", "user", "order", "search", "auth", "billing", "stock", "catalog", "notify", "gateway",
    "cache", "queue", "stream", "metrics", "logs", "config", "session", "media", "mail", "report", "ledger", "pricing",
    "profile", "review", "ship", "tax", "feed", "image",
)
SUFFIXES = ("", "-api", "-svc", "-worker", "-db", "-grpc", "-v2", "-internal", "-backend", "-frontend", "-proxy", "-store")
PORTS = (
    ("http", 80, "TCP"), ("https", 443, "TCP"), ("grpc", 9090, "TCP"), ("metrics", 9100, "TCP"), ("admin", 8081, "TCP"),
    ("redis", 6379, "TCP"), ("postgres", 5432, "TCP"), ("kafka", 9092, "TCP"), ("dns", 53, "UDP"), ("statsd", 8125, "UDP"),
)
MAX_SLICE = 100  # the EndpointSlice controller's default maxEndpointsPerSlice
SMALL_HEADLESS = 10  # headless Services with at most this many ready endpoints answer A in < 512 bytes


@dataclass
class Svc:
    name: str
    namespace: str
    headless: bool
    cluster_ip: str | None
    ports: list[tuple[str, int, str]]
    hostnames: bool = False
    endpoints: list[tuple[str, bool]] = field(default_factory=list)  # (ip, ready)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    @property
    def ready(self) -> int:
        return sum(1 for _, ready in self.endpoints if ready)


def _namespaces(count: int) -> list[str]:
    return [NAMESPACES[i] if i < len(NAMESPACES) else f"team-{i}" for i in range(count)]


def _headless_weight(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.5:
        return rng.uniform(1, 8)
    return rng.uniform(10, 60) if roll < 0.85 else rng.uniform(100, 400)


def generate(services: int, endpoints: int, namespaces: int = 20, seed: int = 1) -> list[Svc]:
    rng = random.Random(seed)
    spaces = _namespaces(namespaces)
    headless_count = services // 5
    cluster_ips = rng.sample(range(2, 2**20 - 1), services - headless_count)  # inside 10.96.0.0/12
    pod_ips = rng.sample(range(2, 2**18 - 1), endpoints)  # inside 10.128.0.0/14
    taken: set[tuple[str, str]] = set()
    out: list[Svc] = []
    for i in range(services):
        ns = spaces[i % len(spaces)]
        name = f"{rng.choice(PREFIXES)}{rng.choice(SUFFIXES)}"
        for attempt in range(1000):
            if (ns, name) not in taken:
                break
            # A clash: draw again; once the word combinations run short, number the names.
            name = f"{rng.choice(PREFIXES)}{rng.choice(SUFFIXES)}" + (f"-{rng.randrange(10**6)}" if attempt > 20 else "")
        taken.add((ns, name))
        headless = i % 5 == 4  # every fifth: exactly 20% headless, spread over the namespaces
        ports = rng.sample(PORTS, rng.randint(1, 2 if headless else 3))
        ip = None if headless else str(ipaddress.IPv4Address("10.96.0.0") + cluster_ips.pop())
        out.append(Svc(name, ns, headless, ip, ports, hostnames=headless and rng.random() < 0.4))
    headless = [s for s in out if s.headless]
    clusterip = [s for s in out if not s.headless]
    # Skewed headless sizes: half small (a few pods), a third medium, the rest StatefulSet-like and big.
    weights = [_headless_weight(rng) for _ in headless]
    on_headless = endpoints * 4 // 5 if clusterip else endpoints
    sizes = apportion(on_headless, weights, 1) + apportion(endpoints - on_headless,
                                                           [rng.uniform(1, 10) for _ in clusterip], 0)
    for svc, size in zip(headless + clusterip, sizes, strict=True):
        svc.endpoints = [(str(ipaddress.IPv4Address("10.128.0.0") + pod_ips.pop()), rng.random() >= 0.02)
                         for _ in range(size)]
    return out


def _ports(ports: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    return [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]


def manifests(cluster: list[Svc], seed: int = 1) -> dict[str, list[dict[str, Any]]]:
    """namespace -> its Kubernetes objects (Namespace, Services, EndpointSlices)."""
    rng = random.Random(seed + 1)
    out: dict[str, list[dict[str, Any]]] = {}
    for svc in cluster:
        items = out.setdefault(svc.namespace, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": svc.namespace}}])
        items.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": svc.name, "namespace": svc.namespace},
            "spec": {"clusterIP": svc.cluster_ip or "None", "selector": {"app": svc.name}, "ports": _ports(svc.ports)},
        })
        for start in range(0, len(svc.endpoints), MAX_SLICE):
            eps = []
            for j, (ip, ready) in enumerate(svc.endpoints[start:start + MAX_SLICE], start=start):
                ep: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
                if svc.hostnames:
                    ep["hostname"] = f"{svc.name}-{j}"
                eps.append(ep)
            suffix = "".join(rng.choices(string.ascii_lowercase + string.digits, k=5))
            items.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": f"{svc.name}-{suffix}", "namespace": svc.namespace,
                             "labels": {"kubernetes.io/service-name": svc.name}},
                "ports": _ports(svc.ports), "endpoints": eps,
            })
    return out


def write_manifests(cluster: list[Svc], out: Path, seed: int = 1) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ns, items in manifests(cluster, seed).items():
        path = out / f"{ns}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, separators=(",", ":")))
        paths.append(path)
    return paths


def _mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def queries(cluster: list[Svc], count: int = 100_000, seed: int = 1) -> list[str]:
    """dnsperf lines modelled on pods with ``ndots:5`` (see the mix below); answers all fit 512 bytes."""
    rng = random.Random(seed + 2)
    spaces = sorted({s.namespace for s in cluster})
    clusterip = [s for s in cluster if not s.headless]
    # Keep every answer within 512 bytes without EDNS (what glibc/musl stubs send): small headless only.
    small = [s for s in cluster if s.headless and 1 <= s.ready <= SMALL_HEADLESS]
    srv_small = [s for s in small if s.ready <= 3]  # SRV adds the targets' addresses as additional data
    if not clusterip or not small or not srv_small:
        raise ValueError("the cluster needs ClusterIP Services and small headless Services for the query mix")
    lines = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.60:  # A of an existing ClusterIP Service (the absolute name, after the search list)
            name, qtype = clusterip[rng.randrange(len(clusterip))].fqdn, "A"
        elif roll < 0.85:  # ndots:5 search-path misses: the FQDN with each search suffix appended
            fqdn = rng.choice(clusterip).fqdn
            suffix = rng.choice((f"{rng.choice(spaces)}.svc.cluster.local", "svc.cluster.local", "cluster.local"))
            name, qtype = f"{fqdn}.{suffix}", "A"
        elif roll < 0.90:  # AAAA of an IPv4-only Service: NODATA
            name, qtype = rng.choice(clusterip).fqdn, "AAAA"
        elif roll < 0.95:  # SRV of a named port
            svc = rng.choice(clusterip + srv_small)
            port, _, proto = rng.choice(svc.ports)
            name, qtype = f"_{port}._{proto.lower()}.{svc.fqdn}", "SRV"
        else:  # headless A: one record per ready endpoint
            name, qtype = rng.choice(small).fqdn, "A"
        if rng.random() < 0.20:  # DNS is case-insensitive; resolvers with 0x20 randomise case
            name = _mixed_case(name, rng)
        lines.append(f"{name} {qtype}")
    rng.shuffle(lines)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="directory for the manifests (one JSON file per namespace)")
    parser.add_argument("--queries", type=Path, help="also write a dnsperf query file here")
    parser.add_argument("--query-count", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.services < 5 or args.endpoints < 1:
        parser.error("need at least 5 services and 1 endpoint")
    cluster = generate(args.services, args.endpoints, args.namespaces, args.seed)
    paths = write_manifests(cluster, args.out, args.seed)
    print(f"{len(cluster)} services, {sum(len(s.endpoints) for s in cluster)} endpoints, "
          f"{len(paths)} namespace files in {args.out}", file=sys.stderr)
    if args.queries:
        args.queries.write_text("\n".join(queries(cluster, args.query_count, args.seed)) + "\n")
        print(f"{args.query_count} queries in {args.queries}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
