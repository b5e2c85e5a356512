"""--multicluster-zone (KEP-1645, CoreDNS's multicluster) on the real server: ServiceImports and their
EndpointSlices from manifests and from the API, answered as <svc>.<ns>.svc.clusterset.local."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI, endpoint_slice, namespace, service, service_import
from tests.helpers import ROOT, Dnsd, answers, rcode, wait_for

MC = "clusterset.local"
CLUSTERSET = """
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: web, namespace: shop}
spec:
  type: ClusterSetIP
  ips: [10.42.42.42, "fd00:42::42"]
  ports: [{name: https, port: 443, protocol: TCP}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: db, namespace: shop}
spec:
  type: Headless
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-cluster-a
  namespace: shop
  labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-a}
addressType: IPv4
endpoints:
  - {addresses: [10.1.0.5], hostname: db-0, conditions: {ready: true}}
  - {addresses: [10.1.0.6], hostname: db-1, conditions: {ready: false}}
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-cluster-b
  namespace: shop
  labels: {multicluster.kubernetes.io/service-name: db, multicluster.kubernetes.io/source-cluster: cluster-b}
addressType: IPv4
endpoints:
  - {addresses: [10.2.0.7], hostname: db-0}
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: https, port: 443}]}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_clusterset_names_from_manifests(start_dnsd: Callable[..., Dnsd], manifest_dir: Path, workers: int) -> None:
    (manifest_dir / "clusterset.yaml").write_text(CLUSTERSET)
    server = start_dnsd("--manifests", str(manifest_dir), "--multicluster-zone", MC, workers=workers)
    web, db = f"web.shop.svc.{MC}", f"db.shop.svc.{MC}"
    for tcp in (False, True):
        msg = server.query(web, tcp=tcp)
        assert rcode(msg) == "NOERROR" and msg.flags & 0x400  # authoritative
        assert answers(msg) == [f"{web}. A 10.42.42.42"]
    assert answers(server.query(web, "AAAA")) == [f"{web}. AAAA fd00:42::42"]
    srv = server.query(f"_https._tcp.{web}", "SRV")
    assert answers(srv) == [f"_https._tcp.{web}. SRV 0 100 443 {web}."]
    assert {str(rd) for rrset in srv.additional for rd in rrset} == {"10.42.42.42", "fd00:42::42"}
    # The cluster's own Service of the same name is untouched.
    assert answers(server.query("web.shop.svc.cluster.local")) == ["web.shop.svc.cluster.local. A 10.96.0.10"]
    # Headless: every ready endpoint of every member cluster, each also under its cluster's id.
    assert answers(server.query(db)) == [f"{db}. A 10.1.0.5", f"{db}. A 10.2.0.7"]
    assert answers(server.query(f"db-0.cluster-a.{db}")) == [f"db-0.cluster-a.{db}. A 10.1.0.5"]
    assert answers(server.query(f"db-0.cluster-b.{db}", tcp=True)) == [f"db-0.cluster-b.{db}. A 10.2.0.7"]
    assert rcode(server.query(f"db-1.cluster-a.{db}")) == "NXDOMAIN"  # not ready
    assert answers(server.query(f"_pg._tcp.{db}", "SRV")) == [
        f"_pg._tcp.{db}. SRV 0 50 5432 db-0.cluster-a.{db}.", f"_pg._tcp.{db}. SRV 0 50 5432 db-0.cluster-b.{db}."]
    # No per-cluster name for a ClusterSetIP import (the specification's 2.3.4).
    assert rcode(server.query(f"x.cluster-a.{web}")) == "NXDOMAIN"
    # The zone's apex and schema version; the namespace is a name (NODATA), an unknown one is not.
    assert answers(server.query(f"dns-version.{MC}", "TXT")) == [f'dns-version.{MC}. TXT "1.0.0"']
    assert str(server.query(MC, "SOA").answer[0][0].mname) == f"ns.dns.{MC}."
    assert rcode(server.query(f"shop.svc.{MC}")) == "NOERROR"
    assert rcode(server.query(f"web.other.svc.{MC}")) == "NXDOMAIN"
    # A member cluster's endpoints go: followed on the next reload.
    (manifest_dir / "clusterset.yaml").write_text(CLUSTERSET.replace("10.2.0.7", "10.2.0.8"))
    wait_for(lambda: answers(server.query(db)) == [f"{db}. A 10.1.0.5", f"{db}. A 10.2.0.8"], timeout=5)


def test_dig_reads_the_clusterset_zone(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    (manifest_dir / "clusterset.yaml").write_text(CLUSTERSET)
    server = start_dnsd("--manifests", str(manifest_dir), "--multicluster-zone", MC)
    out = server.dig(f"_pg._tcp.db.shop.svc.{MC}", "SRV", "+tcp")
    assert f"db-0.cluster-a.db.shop.svc.{MC}." in out and "status: NOERROR" in out


def test_without_the_flag_the_zone_is_not_served(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    (manifest_dir / "clusterset.yaml").write_text(CLUSTERSET)
    server = start_dnsd("--manifests", str(manifest_dir))
    assert rcode(server.query(f"web.shop.svc.{MC}")) == "REFUSED"  # not ours, and no upstream
    assert answers(server.query("web.shop.svc.cluster.local")) == ["web.shop.svc.cluster.local. A 10.96.0.10"]


def test_a_bad_import_is_reported_by_check(manifest_dir: Path) -> None:
    (manifest_dir / "bad.yaml").write_text(CLUSTERSET.replace("type: Headless", "type: NodePort"))
    out = subprocess.run([sys.executable, "-m", "dnsd", "check", str(manifest_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "spec.type 'NodePort' is not ClusterSetIP or Headless" in out.stdout + out.stderr


@pytest.mark.parametrize(("flags", "clash"), [
    (["--multicluster-zone", "cluster.local"], "the cluster zone cluster.local"),
    (["--multicluster-zone", "svc.cluster.local"], "the cluster zone cluster.local"),
    (["--external-zone", "example.com", "--multicluster-zone", "mc.example.com"], "the external zone example.com"),
])
def test_a_multicluster_zone_overlapping_another_is_a_usage_error(flags: list[str], clash: str) -> None:
    out = subprocess.run([sys.executable, "-m", "dnsd", "serve", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--multicluster-zone" in out.stderr and f"overlaps {clash}" in out.stderr


def _mc_slice(name: str, service_name: str, cluster: str, addresses: list[str]) -> dict:
    obj = endpoint_slice("shop", name, service_name, addresses, ports=[("pg", 5432, "TCP")])
    labels = obj["metadata"]["labels"]
    del labels["kubernetes.io/service-name"]
    labels.update({"multicluster.kubernetes.io/service-name": service_name,
                   "multicluster.kubernetes.io/source-cluster": cluster,
                   "endpointslice.kubernetes.io/managed-by": "mcs-controller"})
    return obj


@pytest.mark.parametrize("endpoints_api", [False, True])
def test_from_the_api_imports_and_their_slices_are_watched(start_dnsd: Callable[..., Dnsd], api: FakeKubeAPI,
                                                           kubeconfig: str, endpoints_api: bool) -> None:
    api.load([namespace("shop"), service("shop", "web", cluster_ip="10.96.0.10"),
              service_import("shop", "web", ips=["10.42.42.42"]),
              service_import("shop", "db", "Headless", ports=[("pg", 5432, "TCP")]),
              _mc_slice("db-a", "db", "cluster-a", ["10.1.0.5"])])
    flags = ["--endpoints-api"] if endpoints_api else []
    server = start_dnsd("--kubeconfig", kubeconfig, "--multicluster-zone", MC, "--kube-read-timeout", "1", *flags)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    web, db = f"web.shop.svc.{MC}", f"db.shop.svc.{MC}"
    assert answers(server.query(web)) == [f"{web}. A 10.42.42.42"]
    assert answers(server.query(db)) == [f"{db}. A 10.1.0.5"]
    assert answers(server.query("web.shop.svc.cluster.local")) == ["web.shop.svc.cluster.local. A 10.96.0.10"]
    # Watch events: a second member cluster's slice, a new ClusterSetIP, an import withdrawn.
    api.create(_mc_slice("db-b", "db", "cluster-b", ["10.2.0.7"]))
    wait_for(lambda: answers(server.query(f"10-2-0-7.cluster-b.{db}")) == [f"10-2-0-7.cluster-b.{db}. A 10.2.0.7"])
    api.update(service_import("shop", "web", ips=["10.42.42.43"]))
    wait_for(lambda: answers(server.query(web)) == [f"{web}. A 10.42.42.43"])
    api.delete("ServiceImport", "shop", "db")
    wait_for(lambda: rcode(server.query(db)) == "NXDOMAIN")
    assert answers(server.query("web.shop.svc.cluster.local")) == ["web.shop.svc.cluster.local. A 10.96.0.10"]
    watched = {r.resource for r in api.requests("watch")}
    assert "serviceimports" in watched and "endpointslices" in watched
