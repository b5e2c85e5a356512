"""The last options of CoreDNS's kubernetes plugin, through the real server: --ignore-empty-service
(ignore empty_service), --no-endpoints (noendpoints) and --namespace-labels (namespace_labels), from
manifests and from the fake Kubernetes API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI, endpoint_slice, namespace, service
from tests.helpers import ROOT, Dnsd, answers, rcode, wait_for

Z = "cluster.local"
FAST = ("--kube-read-timeout", "1", "--kube-watch-timeout", "30")

NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {dns: public}}
---
apiVersion: v1
kind: Namespace
metadata: {name: back, labels: {dns: private}}
"""

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.0.5]}
---
apiVersion: v1
kind: Service
metadata: {name: idle, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: idle-1, namespace: shop, labels: {kubernetes.io/service-name: idle}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints:
- {addresses: [10.244.0.9], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: back}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: back, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: [10.244.1.5], hostname: db-0}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: back}
spec: {clusterIP: 10.96.1.10, ports: [{name: http, port: 80}]}
"""


@pytest.fixture
def cluster(manifest_dir: Path) -> Path:
    (manifest_dir / "namespaces.yaml").write_text(NAMESPACES)
    (manifest_dir / "services.yaml").write_text(SERVICES)
    return manifest_dir


def nx(server: Dnsd, name: str, rdtype: str = "A") -> bool:
    return rcode(server.query(name, rdtype)) == "NXDOMAIN"


def dnsd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")} | {"DNSD_UPSTREAM": "none"}
    return subprocess.run([sys.executable, "-m", "dnsd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=clean | (env or {}))


# -- --ignore-empty-service ------------------------------------------------------------------------
def test_ignore_empty_service(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), "--ignore-empty-service")
    # A ClusterIP Service whose only endpoint is not ready: every name of it is NXDOMAIN.
    for name, rdtype in ((f"idle.shop.svc.{Z}", "A"), (f"idle.shop.svc.{Z}", "AAAA"), (f"idle.shop.svc.{Z}", "SRV"),
                         (f"_http._tcp.idle.shop.svc.{Z}", "SRV")):
        msg = s.query(name, rdtype)
        assert rcode(msg) == "NXDOMAIN" and msg.authority, (name, rdtype)  # with the SOA: cacheable
    # ... and so is a ClusterIP Service with no endpoint object at all.
    assert nx(s, f"api.back.svc.{Z}")
    # Its clusterIP's PTR stays (as CoreDNS, whose reverse lookup does not look at endpoints).
    assert answers(s.query("11.0.96.10.in-addr.arpa", "PTR")) == [f"11.0.96.10.in-addr.arpa. PTR idle.shop.svc.{Z}."]
    # Services with a ready endpoint, headless Services and ExternalNames answer as always.
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    assert answers(s.query(f"db.back.svc.{Z}")) == [f"db.back.svc.{Z}. A 10.244.1.5"]
    assert answers(s.query(f"ext.shop.svc.{Z}", "CNAME")) == [f"ext.shop.svc.{Z}. CNAME example.com."]
    assert rcode(s.query(f"shop.svc.{Z}")) == "NOERROR"  # the namespace still exists


def test_without_ignore_empty_service_an_empty_service_answers(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster))
    assert answers(s.query(f"idle.shop.svc.{Z}")) == [f"idle.shop.svc.{Z}. A 10.96.0.11"]
    assert answers(s.query(f"api.back.svc.{Z}")) == [f"api.back.svc.{Z}. A 10.96.1.10"]


def test_ignore_empty_service_follows_readiness(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), env={"DNSD_IGNORE_EMPTY_SERVICE": "true"})
    assert nx(s, f"idle.shop.svc.{Z}")
    services = cluster / "services.yaml"
    services.write_text(SERVICES.replace("[10.244.0.9], conditions: {ready: false}", "[10.244.0.9]"))
    wait_for(lambda: answers(s.query(f"idle.shop.svc.{Z}")) == [f"idle.shop.svc.{Z}. A 10.96.0.11"], timeout=5)
    services.write_text(SERVICES)  # not ready again: the cached answer goes at once
    wait_for(lambda: nx(s, f"idle.shop.svc.{Z}"), timeout=5)


def test_ignore_empty_service_from_the_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    api.load([namespace("shop"), service("shop", "web", cluster_ip="10.96.0.10"),
              endpoint_slice("shop", "web-1", "web", endpoints=[{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}])])
    s = start_dnsd("--kubeconfig", kubeconfig, "--ignore-empty-service", *FAST)
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    api.update(endpoint_slice("shop", "web-1", "web", endpoints=[]))  # scaled to zero
    wait_for(lambda: nx(s, f"web.shop.svc.{Z}"), timeout=5)


# -- --no-endpoints --------------------------------------------------------------------------------
def test_no_endpoints(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), "--no-endpoints")
    # No endpoint names, no per-endpoint SRV, no endpoint PTR; a headless Service's own name is
    # NXDOMAIN, as in CoreDNS, which answers it from the endpoints it no longer watches.
    for name, rdtype in ((f"db-0.db.back.svc.{Z}", "A"), (f"db.back.svc.{Z}", "A"), (f"db.back.svc.{Z}", "SRV"),
                         (f"_pg._tcp.db.back.svc.{Z}", "SRV"), ("5.1.244.10.in-addr.arpa", "PTR")):
        assert nx(s, name, rdtype), (name, rdtype)
    # ClusterIP Services (even without a ready endpoint) keep every record.
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    assert answers(s.query(f"idle.shop.svc.{Z}")) == [f"idle.shop.svc.{Z}. A 10.96.0.11"]
    assert answers(s.query(f"_http._tcp.web.shop.svc.{Z}", "SRV")) == [
        f"_http._tcp.web.shop.svc.{Z}. SRV 0 100 80 web.shop.svc.{Z}."]
    assert answers(s.query("10.0.96.10.in-addr.arpa", "PTR")) == [f"10.0.96.10.in-addr.arpa. PTR web.shop.svc.{Z}."]


def test_without_no_endpoints_the_endpoints_answer(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster))
    assert answers(s.query(f"db-0.db.back.svc.{Z}")) == [f"db-0.db.back.svc.{Z}. A 10.244.1.5"]
    assert answers(s.query("5.1.244.10.in-addr.arpa", "PTR")) == [f"5.1.244.10.in-addr.arpa. PTR db-0.db.back.svc.{Z}."]


@pytest.mark.parametrize("endpoints_api", [False, True], ids=["slices", "endpoints-api"])
def test_no_endpoints_watches_no_endpoints(start_dnsd, api: FakeKubeAPI, kubeconfig: str, endpoints_api: bool) -> None:
    api.load([namespace("shop"), service("shop", "web", cluster_ip="10.96.0.10"),
              service("shop", "db", cluster_ip=None),
              endpoint_slice("shop", "db-1", "db", endpoints=[{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}])])
    flags = ("--endpoints-api",) if endpoints_api else ()
    s = start_dnsd("--kubeconfig", kubeconfig, "--no-endpoints", *flags, *FAST)
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    assert nx(s, f"db.shop.svc.{Z}")
    assert not api.requests(resource="endpointslices") and not api.requests(resource="endpoints")
    assert api.requests(resource="services")


# -- --namespace-labels ----------------------------------------------------------------------------
def test_namespace_labels_from_manifests(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), "--namespace-labels", "dns in (public)")
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    assert answers(s.query(f"10-1-2-3.shop.pod.{Z}")) == [f"10-1-2-3.shop.pod.{Z}. A 10.1.2.3"]
    # Every name of the other namespace is NXDOMAIN, its records' PTRs too.
    for name, rdtype in ((f"db.back.svc.{Z}", "A"), (f"db-0.db.back.svc.{Z}", "A"), (f"api.back.svc.{Z}", "A"),
                         (f"_pg._tcp.db.back.svc.{Z}", "SRV"), (f"back.svc.{Z}", "A"), (f"10-1-2-3.back.pod.{Z}", "A"),
                         ("10.1.96.10.in-addr.arpa", "PTR"), ("5.1.244.10.in-addr.arpa", "PTR")):
        assert nx(s, name, rdtype), (name, rdtype)
    # The labels change: the namespaces swap at once.
    (cluster / "namespaces.yaml").write_text(NAMESPACES.replace("dns: public", "dns: x").replace("dns: private", "dns: public"))
    wait_for(lambda: answers(s.query(f"db.back.svc.{Z}")) == [f"db.back.svc.{Z}. A 10.244.1.5"], timeout=5)
    wait_for(lambda: nx(s, f"web.shop.svc.{Z}"), timeout=5)
    assert answers(s.query("10.1.96.10.in-addr.arpa", "PTR")) == [f"10.1.96.10.in-addr.arpa. PTR api.back.svc.{Z}."]
    assert nx(s, f"shop.svc.{Z}") and nx(s, "10.0.96.10.in-addr.arpa", "PTR")
    # A namespace with no Namespace object has no labels to match: not served.
    (cluster / "namespaces.yaml").unlink()
    wait_for(lambda: nx(s, f"db.back.svc.{Z}"), timeout=5)


def test_without_namespace_labels_every_namespace_answers(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster))
    assert answers(s.query(f"db.back.svc.{Z}")) == [f"db.back.svc.{Z}. A 10.244.1.5"]
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]


def test_namespace_labels_from_the_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    api.load([namespace("shop", {"dns": "public"}), namespace("back"),
              service("shop", "web", cluster_ip="10.96.0.10"), service("back", "api", cluster_ip="10.96.1.10")])
    s = start_dnsd("--kubeconfig", kubeconfig, *FAST, env={"DNSD_NAMESPACE_LABELS": "dns=public"})
    wait_for(lambda: s.http("/ready")[0] == 200, timeout=10)
    assert answers(s.query(f"web.shop.svc.{Z}")) == [f"web.shop.svc.{Z}. A 10.96.0.10"]
    assert nx(s, f"api.back.svc.{Z}") and nx(s, f"back.svc.{Z}") and nx(s, "10.1.96.10.in-addr.arpa", "PTR")
    # The Namespace list asks the API for the matching ones only, as CoreDNS's does.
    assert {r.params.get("labelSelector") for r in api.requests(resource="namespaces")} == {"dns=public"}
    # A label added: served at once; removed: gone at once (the watch sends it as deleted).
    api.update(namespace("back", {"dns": "public"}))
    wait_for(lambda: answers(s.query(f"api.back.svc.{Z}")) == [f"api.back.svc.{Z}. A 10.96.1.10"], timeout=5)
    api.update(namespace("shop"))
    wait_for(lambda: nx(s, f"web.shop.svc.{Z}"), timeout=5)
    assert nx(s, f"shop.svc.{Z}") and nx(s, "10.0.96.10.in-addr.arpa", "PTR")
    assert answers(s.query(f"api.back.svc.{Z}")) == [f"api.back.svc.{Z}. A 10.96.1.10"]


def test_records_take_the_options(cluster: Path) -> None:
    def records(*flags: str) -> str:
        out = dnsd("records", "--manifests", str(cluster), *flags)
        assert out.returncode == 0, out.stderr
        return out.stdout

    plain = records()
    assert f"idle.shop.svc.{Z}." in plain and f"db-0.db.back.svc.{Z}." in plain and f"api.back.svc.{Z}." in plain
    empty = records("--ignore-empty-service")
    assert f"idle.shop.svc.{Z}." in empty  # the PTR's target, but no record of the name itself
    assert not [line for line in empty.splitlines() if line.startswith((f"idle.shop.svc.{Z}.", f"api.back.svc.{Z}."))]
    assert f"db-0.db.back.svc.{Z}." not in records("--no-endpoints")
    assert ".back." not in records("--namespace-labels", "dns=public")


@pytest.mark.parametrize(("args", "env", "message"), [
    (("--namespace-labels", "dns in public"), {}, "--namespace-labels"),
    ((), {"DNSD_NAMESPACE_LABELS": "dns=(x"}, "DNSD_NAMESPACE_LABELS"),
    (("--ignore-empty-service", "--no-endpoints"), {}, "--no-endpoints"),
    (("--namespace-labels", "dns=public", "--namespace", "shop"), {}, "--namespace"),
])
def test_bad_values_and_combinations_are_usage_errors(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    for command in ("serve", "records"):
        out = dnsd(command, *args, env=env)
        assert out.returncode == 2 and message in out.stderr, (command, out.stderr)
