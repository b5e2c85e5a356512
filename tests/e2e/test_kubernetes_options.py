"""CoreDNS's kubernetes-plugin options: pod records, endpoint pod names, bare-name SRV,
publishNotReadyAddresses; from manifests and from the API, through the real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI, endpoint_slice, endpoints, namespace, service
from tests.helpers import ROOT, Dnsd, answers, rcode, wait_for

Z = "cluster.local"
FAST = ("--kube-read-timeout", "1", "--kube-watch-timeout", "30")

CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}, {port: 8080}, {name: dns, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: [10.244.0.5], targetRef: {kind: Pod, name: db-7f9-abcde}}
- {addresses: [10.244.0.6], hostname: db-1, targetRef: {kind: Pod, name: db-7f9-fghij}}
- {addresses: [10.244.0.7], targetRef: {kind: Pod, name: has.a.dot}}
- {addresses: [10.244.0.8], conditions: {ready: false}, targetRef: {kind: Pod, name: db-7f9-klmno}}
---
apiVersion: v1
kind: Service
metadata: {name: warm, namespace: shop}
spec: {clusterIP: None, publishNotReadyAddresses: true, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: warm-1, namespace: shop, labels: {kubernetes.io/service-name: warm}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: [10.244.1.5]}
- {addresses: [10.244.1.6], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec: {clusterIP: None, publishNotReadyAddresses: true}
---
apiVersion: v1
kind: Endpoints
metadata: {name: legacy, namespace: shop}
subsets:
- addresses: [{ip: 192.0.2.1, targetRef: {kind: Pod, name: legacy-a}}]
  notReadyAddresses: [{ip: 192.0.2.2, targetRef: {kind: Pod, name: legacy-b}}]
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
"""


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("options")
    (d / "cluster.yaml").write_text(CLUSTER)
    return d


@pytest.fixture(scope="module")
def server(cluster_dir: Path):
    s = Dnsd("--manifests", str(cluster_dir)).wait_listening()
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def pod_names_server(cluster_dir: Path):
    s = Dnsd("--manifests", str(cluster_dir), "--endpoint-pod-names").wait_listening()
    yield s
    assert s.stop() == 0, s.log()


# -- pod records ---------------------------------------------------------------------------
@pytest.mark.parametrize("tcp", [False, True])
def test_pod_records_by_default(server: Dnsd, tcp: bool) -> None:
    assert answers(server.query(f"10-244-9-9.shop.pod.{Z}", tcp=tcp)) == [f"10-244-9-9.shop.pod.{Z}. A 10.244.9.9"]
    assert answers(server.query(f"fd00--1.quiet.pod.{Z}", "AAAA", tcp=tcp)) == [f"fd00--1.quiet.pod.{Z}. AAAA fd00::1"]
    # The asker's spelling is kept, the address does not depend on it.
    assert answers(server.query(f"10-244-9-9.SHOP.pod.{Z}")) == [f"10-244-9-9.SHOP.pod.{Z}. A 10.244.9.9"]


def test_pod_record_edges(server: Dnsd) -> None:
    nodata = server.query(f"10-244-9-9.shop.pod.{Z}", "AAAA")
    assert rcode(nodata) == "NOERROR" and not nodata.answer and nodata.authority
    assert answers(server.query(f"10-244-9-9.shop.pod.{Z}", "ANY")) == [f"10-244-9-9.shop.pod.{Z}. A 10.244.9.9"]
    for name in (f"10-244-9-9.nope.pod.{Z}",  # unknown namespace
                 f"10-244-9.shop.pod.{Z}", f"10-244-9-999.shop.pod.{Z}", f"web.shop.pod.{Z}",  # not an address
                 f"x.10-244-9-9.shop.pod.{Z}"):  # too deep
        assert rcode(server.query(name)) == "NXDOMAIN", name
    empty = server.query(f"shop.pod.{Z}")  # the namespace level exists, empty
    assert rcode(empty) == "NOERROR" and not empty.answer


def test_pods_disabled(start_dnsd, cluster_dir: Path) -> None:
    s = start_dnsd("--manifests", str(cluster_dir), "--pods", "disabled")
    assert rcode(s.query(f"10-244-9-9.shop.pod.{Z}")) == "NXDOMAIN"
    assert rcode(s.query(f"shop.pod.{Z}")) == "NXDOMAIN"


def test_pod_records_follow_the_namespace(start_dnsd, manifest_dir: Path) -> None:
    s = start_dnsd("--manifests", str(manifest_dir), env={"DNSD_PODS": "insecure"})
    name = f"10-1-2-3.late.pod.{Z}"
    assert rcode(s.query(name)) == "NXDOMAIN"
    (manifest_dir / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n")
    wait_for(lambda: answers(s.query(name)) == [f"{name}. A 10.1.2.3"], timeout=5)
    (manifest_dir / "ns.yaml").unlink()
    wait_for(lambda: rcode(s.query(name)) == "NXDOMAIN", timeout=5)  # the cached answer went with it


def test_bad_pods_value_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "dnsd", "serve", "--pods", "verified"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--pods" in out.stderr and "verified" in out.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")} | {"DNSD_PODS": "verified"}
    out = subprocess.run([sys.executable, "-m", "dnsd", "records"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--pods" in out.stderr and "DNSD_PODS='verified'" in out.stderr


# -- endpoint names ------------------------------------------------------------------------
def test_endpoint_pod_names(pod_names_server: Dnsd, server: Dnsd) -> None:
    s = pod_names_server
    assert answers(s.query(f"db-7f9-abcde.db.shop.svc.{Z}")) == [f"db-7f9-abcde.db.shop.svc.{Z}. A 10.244.0.5"]
    assert answers(s.query(f"db-1.db.shop.svc.{Z}")) == [f"db-1.db.shop.svc.{Z}. A 10.244.0.6"]  # hostname wins
    assert answers(s.query(f"10-244-0-7.db.shop.svc.{Z}")) == [f"10-244-0-7.db.shop.svc.{Z}. A 10.244.0.7"]  # not a label
    srv = {str(r).split()[3] for r in s.query(f"_pg._tcp.db.shop.svc.{Z}", "SRV").answer[0]}
    assert srv == {f"db-7f9-abcde.db.shop.svc.{Z}.", f"db-1.db.shop.svc.{Z}.", f"10-244-0-7.db.shop.svc.{Z}."}
    assert answers(s.query("5.0.244.10.in-addr.arpa", "PTR")) == [
        f"5.0.244.10.in-addr.arpa. PTR db-7f9-abcde.db.shop.svc.{Z}."]
    assert answers(s.query(f"legacy-a.legacy.shop.svc.{Z}")) == [f"legacy-a.legacy.shop.svc.{Z}. A 192.0.2.1"]
    # Without the option: the dashed address, as before.
    assert rcode(server.query(f"db-7f9-abcde.db.shop.svc.{Z}")) == "NXDOMAIN"
    assert answers(server.query(f"10-244-0-5.db.shop.svc.{Z}")) == [f"10-244-0-5.db.shop.svc.{Z}. A 10.244.0.5"]


def test_endpoint_pod_names_from_the_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    api.load([namespace("shop"), service("shop", "db", cluster_ip=None, ports=[("pg", 5432, "TCP")]),
              endpoint_slice("shop", "db-1", "db", endpoints=[
                  {"addresses": ["10.1.0.1"], "targetRef": {"kind": "Pod", "namespace": "shop", "name": "db-x1"},
                   "conditions": {"ready": True}}], ports=[("pg", 5432, "TCP")])])
    s = start_dnsd("--kubeconfig", kubeconfig, "--endpoint-pod-names", *FAST)
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert answers(s.query(f"db-x1.db.shop.svc.{Z}")) == [f"db-x1.db.shop.svc.{Z}. A 10.1.0.1"]


# -- the bare name's SRV -------------------------------------------------------------------
def test_bare_name_srv_cluster_ip(server: Dnsd) -> None:
    got = answers(server.query(f"web.shop.svc.{Z}", "SRV", tcp=True))
    assert got == sorted(f"web.shop.svc.{Z}. SRV 0 100 {port} web.shop.svc.{Z}." for port in (80, 8080, 53))
    assert answers(server.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]  # A unchanged


def test_bare_name_srv_headless(server: Dnsd) -> None:
    msg = server.query(f"db.shop.svc.{Z}", "SRV")
    targets = sorted(str(r).split()[3] for r in msg.answer[0])
    assert targets == [f"10-244-0-5.db.shop.svc.{Z}.", f"10-244-0-7.db.shop.svc.{Z}.", f"db-1.db.shop.svc.{Z}."]
    assert {str(r).split()[2] for r in msg.answer[0]} == {"5432"}
    assert sorted(str(r) for rrset in msg.additional for r in rrset) == ["10.244.0.5", "10.244.0.6", "10.244.0.7"]


# -- publishNotReadyAddresses --------------------------------------------------------------
def test_publish_not_ready_addresses(server: Dnsd) -> None:
    assert sorted(str(r) for r in server.query(f"warm.shop.svc.{Z}").answer[0]) == ["10.244.1.5", "10.244.1.6"]
    assert len(server.query(f"_pg._tcp.warm.shop.svc.{Z}", "SRV").answer[0]) == 2
    assert answers(server.query("6.1.244.10.in-addr.arpa", "PTR")) == [
        f"6.1.244.10.in-addr.arpa. PTR 10-244-1-6.warm.shop.svc.{Z}."]
    assert sorted(str(r) for r in server.query(f"legacy.shop.svc.{Z}").answer[0]) == ["192.0.2.1", "192.0.2.2"]
    # A Service without the field still hides them.
    assert "10.244.0.8" not in [str(r) for r in server.query(f"db.shop.svc.{Z}").answer[0]]


def test_publish_not_ready_follows_the_service(start_dnsd, manifest_dir: Path) -> None:
    path = manifest_dir / "c.yaml"
    path.write_text(CLUSTER)
    s = start_dnsd("--manifests", str(manifest_dir))
    addresses = lambda: sorted(str(r) for rrset in s.query(f"warm.shop.svc.{Z}").answer for r in rrset)  # noqa: E731
    assert addresses() == ["10.244.1.5", "10.244.1.6"]
    path.write_text(CLUSTER.replace("publishNotReadyAddresses: true, ports: [{name: pg", "ports: [{name: pg"))
    wait_for(lambda: addresses() == ["10.244.1.5"], timeout=5)


def test_publish_not_ready_from_the_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    warm = service("shop", "warm", cluster_ip=None)
    warm["spec"]["publishNotReadyAddresses"] = True
    api.load([namespace("shop"), warm,
              endpoint_slice("shop", "warm-1", "warm", endpoints=[
                  {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
                  {"addresses": ["10.1.0.2"], "conditions": {"ready": False}}])])
    s = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert sorted(str(r) for r in s.query(f"warm.shop.svc.{Z}").answer[0]) == ["10.1.0.1", "10.1.0.2"]
    api.update(service("shop", "warm", cluster_ip=None))  # the field gone: the not-ready one goes
    wait_for(lambda: [str(r) for r in s.query(f"warm.shop.svc.{Z}").answer[0]] == ["10.1.0.1"], timeout=5)


def test_legacy_not_ready_addresses_from_the_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    legacy = service("shop", "legacy", cluster_ip=None)
    legacy["spec"]["publishNotReadyAddresses"] = True
    api.load([namespace("shop"), legacy,
              endpoints("shop", "legacy", addresses=["192.0.2.1"], not_ready=["192.0.2.2"])])
    s = start_dnsd("--kubeconfig", kubeconfig, "--endpoints-api", *FAST)
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert sorted(str(r) for r in s.query(f"legacy.shop.svc.{Z}").answer[0]) == ["192.0.2.1", "192.0.2.2"]


def test_bad_publish_not_ready_value_is_reported(manifest_dir: Path) -> None:
    (manifest_dir / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: a}\n"
        "spec: {clusterIP: None, publishNotReadyAddresses: 'yes'}\n")
    out = subprocess.run([sys.executable, "-m", "dnsd", "check", str(manifest_dir), "--endpoint-pod-names"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "publishNotReadyAddresses" in out.stdout


# -- dnsd records knows the options --------------------------------------------------------
def test_records_with_the_options(cluster_dir: Path) -> None:
    def records(*flags: str) -> str:
        out = subprocess.run([sys.executable, "-m", "dnsd", "records", "--manifests", str(cluster_dir), *flags],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    plain, named = records(), records("--endpoint-pod-names")
    assert f"db-7f9-abcde.db.shop.svc.{Z}." in named and f"db-7f9-abcde.db.shop.svc.{Z}." not in plain
    assert f"10-244-0-5.db.shop.svc.{Z}." in plain
    assert f"web.shop.svc.{Z}. 5       IN      SRV     0 100 8080 web.shop.svc.{Z}." in plain
    assert "10.244.1.6" in plain and "10.244.0.8" not in plain  # publishNotReadyAddresses honoured
    assert ".pod." not in records("--pods", "disabled") and ".pod." not in plain  # pods are synthesized
