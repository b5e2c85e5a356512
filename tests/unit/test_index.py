"""The record index against a brute-force model: rrsets and empty non-terminals after random patches."""

from __future__ import annotations

import random

from dnsd.dns.const import EXISTS, PTR, A
from dnsd.zone.index import Index

ZONES = ("cluster.local", "in-addr.arpa")
NAMES = [
    "web.a.svc.cluster.local", "_http._tcp.web.a.svc.cluster.local", "x.web.a.svc.cluster.local",
    "db.b.svc.cluster.local", "db-0.db.b.svc.cluster.local", "b.svc.cluster.local",
    "1.0.0.10.in-addr.arpa", "2.0.0.10.in-addr.arpa", "1.1.0.10.in-addr.arpa",
]
ANCESTORS = ["a.svc.cluster.local", "web.a.svc.cluster.local", "0.10.in-addr.arpa", "0.0.10.in-addr.arpa",
             "1.0.10.in-addr.arpa", "db.b.svc.cluster.local"]


def oracle_exists(records: set, name: str, zone: str) -> bool:
    if name == zone:
        return True
    return any(n == name or n.endswith("." + name) for n, _, _ in records)


def test_random_patches_match_brute_force() -> None:
    rng = random.Random(11)
    index = Index(ZONES)
    owners: dict[int, set] = {}
    for _ in range(3000):
        owner = rng.randrange(6)
        new = {(rng.choice(NAMES), rng.choice((A, PTR, EXISTS)), f"r{rng.randrange(3)}") for _ in range(rng.randrange(4))}
        old = owners.get(owner, set())
        # Owners never share a record (records name their Service), so give each its own rdata.
        new = {(n, t, f"{r}-{owner}") for n, t, r in new}
        probes = [*NAMES, *ANCESTORS]
        before = {name: index.exists(name) for name in probes}
        touched = index.apply(old, new)
        for name in probes:
            if index.exists(name) != before[name]:
                assert name in touched, name  # cached negative answers for it must be dropped
        owners[owner] = new
        everything = set().union(*owners.values())
        for name in [*NAMES, *ANCESTORS, "svc.cluster.local", "10.in-addr.arpa", "nope.cluster.local"]:
            zone = index.zone_of(name)
            assert index.exists(name) == oracle_exists(everything, name, zone) or name == zone, name
            for rtype in (A, PTR):
                want = sorted(r for n, t, r in everything if n == name and t == rtype)
                assert sorted(index.rrset(name, rtype)) == want
        for name in {n for n, _, _ in old ^ new}:
            assert name in touched
    assert index.record_count == sum(1 for _, t, _ in set().union(*owners.values()) if t != EXISTS)
