"""glibc's own resolver (``getent ahosts``) with a pod's resolv.conf, pointed at dnsd: how many
queries a search-path lookup costs with and without --autopath, and that the addresses agree.
dnsd forwards to the scripted upstream on loopback (tests/fakes/upstream.py), which knows one
external name; the pod's search list ends with the same domain as dnsd's --autopath-search.

glibc only speaks to port 53, so dnsd listens on 127.53.X.Y:53 (an address of its own, so
parallel runs do not collide) and getent runs in a private mount namespace where our
resolv.conf and nsswitch.conf are bind-mounted over /etc's. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd

Z = "cluster.local"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "getent", "mount")),
    reason="needs root, unshare, mount and getent (glibc)",
)

CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
endpoints: [{addresses: ["fd00::7"]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-2, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.244.3.7]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: shop}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: chain, namespace: shop}
spec: {type: ExternalName, externalName: alias.shop.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: partner, namespace: shop}
spec: {type: ExternalName, externalName: api.example.com}
"""


def requests(server: Dnsd) -> int:
    _, text = server.http("/metrics")
    return int(sum(float(v) for v in re.findall(r"^coredns_dns_requests_total\{.*\} (\S+)$", text, re.M)))


def start(tmp_path: Path, *flags: str) -> Dnsd:
    (tmp_path / "m").mkdir(parents=True, exist_ok=True)
    (tmp_path / "m" / "cluster.yaml").write_text(CLUSTER)
    for _ in range(5):
        address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        server = Dnsd("--manifests", str(tmp_path / "m"), "--address", address, "--port", "53", *flags)
        server.address, server.port = address, 53
        try:
            return server.wait_listening(timeout=15)
        except RuntimeError:
            server.stop()  # the address was taken: try another
    raise RuntimeError("could not start dnsd on a 127.53.x.y:53 address")


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.mode = "nxdomain"
        server.modes["api.example.com"] = "answer"
        server.rich = True  # AAAA too
        yield server


def getent(server: Dnsd, tmp_path: Path, name: str) -> tuple[set[str], int]:
    """The addresses glibc resolves ``name`` to, as a pod in namespace shop, and the queries it cost."""
    resolv, nss = tmp_path / "resolv.conf", tmp_path / "nsswitch.conf"
    resolv.write_text(f"nameserver {server.address}\nsearch shop.svc.{Z} svc.{Z} {Z} example.org\n"
                      "options ndots:5 timeout:2 attempts:1\n")
    nss.write_text("hosts: dns\n")  # no /etc/hosts, no other source: only what dnsd says
    before = requests(server)
    script = (f"mount --bind {resolv} /etc/resolv.conf && mount --bind {nss} /etc/nsswitch.conf "
              f"&& exec getent ahosts {name}")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=30)
    addresses = {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
    return addresses, requests(server) - before


@pytest.mark.parametrize(("name", "want", "plain_cost"), [
    ("web.default", {"10.96.0.10"}, 4),  # shop.svc. miss (A+AAAA), then svc. hit (A+AAAA)
    ("db.data", {"10.244.3.7", "fd00::7"}, 4),
    (f"web.default.svc.{Z}", {"10.96.0.10"}, 10),  # 4 dots < ndots:5: the whole search list first
    ("api.example.com", {"192.0.2.1", "2001:db8::1"}, 10),  # external: 4 search domains, then the name
])
def test_one_query_per_type_with_autopath(tmp_path: Path, upstream: FakeUpstream, name: str, want: set[str],
                                          plain_cost: int) -> None:
    plain = start(tmp_path / "plain", "--upstream", upstream.server)
    try:
        plain_addresses, plain_queries = getent(plain, tmp_path, name)
    finally:
        plain.stop()
    auto = start(tmp_path / "auto", "--autopath", "--autopath-search", "example.org", "--upstream", upstream.server)
    try:
        auto_addresses, auto_queries = getent(auto, tmp_path, name)
    finally:
        auto.stop()
    print(f"{name}: {plain_queries} queries without --autopath, {auto_queries} with")
    assert plain_addresses == auto_addresses == want
    assert plain_queries == plain_cost
    assert auto_queries == 2  # one A, one AAAA


@pytest.mark.parametrize("name", ["alias", "chain"])
def test_glibc_resolves_an_external_name_whose_target_is_in_the_cluster(tmp_path: Path, name: str) -> None:
    """glibc does not follow a bare CNAME: the reply must carry the target's address (here two aliases deep)."""
    server = start(tmp_path, "--upstream", "none")
    try:
        addresses, _ = getent(server, tmp_path, name)
    finally:
        server.stop()
    assert addresses == {"10.96.0.10"}


def test_glibc_resolves_an_external_name_whose_target_is_outside_the_cluster(tmp_path: Path,
                                                                             upstream: FakeUpstream) -> None:
    """The target is asked through the forwarder: glibc gets its addresses behind the CNAME."""
    server = start(tmp_path, "--upstream", upstream.server)
    try:
        addresses, _ = getent(server, tmp_path, "partner")
    finally:
        server.stop()
    assert addresses == {"192.0.2.1", "2001:db8::1"}
