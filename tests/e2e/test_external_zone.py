"""--external-zone (CoreDNS's k8s_external) on the real server: a Service's external and LoadBalancer
addresses as svc.ns.ZONE, SRV per named port, SOA and NS at the apex; nothing else of the cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI, namespace, service
from tests.helpers import ROOT, Dnsd, answers, rcode, wait_for

EXT = "example.com"
CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: ["198.51.100.7"]
  ports: [{name: http, port: 80, protocol: TCP}, {port: 81}]
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.10}, {hostname: lb.example.net}, {ip: "2001:db8::10"}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, externalIPs: ["198.51.100.8"]}
---
apiVersion: v1
kind: Service
metadata: {name: inner, namespace: shop}
spec: {clusterIP: 10.96.0.11}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_external_addresses_srv_and_apex(start_dnsd: Callable[..., Dnsd], manifest_dir: Path, workers: int) -> None:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    server = start_dnsd("--manifests", str(manifest_dir), "--external-zone", EXT, workers=workers)
    for tcp in (False, True):
        msg = server.query(f"web.shop.{EXT}", tcp=tcp)
        assert rcode(msg) == "NOERROR" and msg.flags & 0x400
        assert answers(msg) == [f"web.shop.{EXT}. A 198.51.100.7", f"web.shop.{EXT}. A 203.0.113.10"]
    assert answers(server.query(f"web.shop.{EXT}", "AAAA")) == [f"web.shop.{EXT}. AAAA 2001:db8::10"]
    srv = server.query(f"_http._tcp.web.shop.{EXT}", "SRV")
    assert answers(srv) == [f"_http._tcp.web.shop.{EXT}. SRV 0 100 80 web.shop.{EXT}."]
    assert {str(rd) for rrset in srv.additional for rd in rrset} >= {"198.51.100.7", "203.0.113.10"}
    soa = server.query(EXT, "SOA").answer[0][0]
    assert str(soa.mname) == f"ns.dns.{EXT}." and str(soa.rname) == f"hostmaster.{EXT}."
    assert answers(server.query(EXT, "NS")) == [f"{EXT}. NS ns.dns.{EXT}."]
    # Headless Services and Services without external addresses are not in it; the namespace is a name.
    assert rcode(server.query(f"db.shop.{EXT}")) == "NXDOMAIN"
    assert rcode(server.query(f"inner.shop.{EXT}")) == "NXDOMAIN"
    assert rcode(server.query(f"shop.{EXT}")) == "NOERROR"
    assert answers(server.query("web.shop.svc.cluster.local")) == ["web.shop.svc.cluster.local. A 10.96.0.10"]
    # A change of the LoadBalancer's address is followed.
    (manifest_dir / "cluster.yaml").write_text(CLUSTER.replace("203.0.113.10", "203.0.113.11"))
    wait_for(lambda: f"web.shop.{EXT}. A 203.0.113.11" in answers(server.query(f"web.shop.{EXT}")), timeout=5)


def test_without_the_flag_the_zone_is_not_served(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    server = start_dnsd("--manifests", str(manifest_dir))
    assert rcode(server.query(f"web.shop.{EXT}")) == "REFUSED"  # not ours, and no upstream


@pytest.mark.parametrize("zone", ["cluster.local", "svc.cluster.local", "local"])
def test_an_external_zone_overlapping_the_cluster_zone_is_a_usage_error(zone: str) -> None:
    out = subprocess.run([sys.executable, "-m", "dnsd", "serve", "--external-zone", zone], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--external-zone" in out.stderr and "overlaps" in out.stderr


def test_from_the_api_the_loadbalancer_status_is_read(start_dnsd: Callable[..., Dnsd], api: FakeKubeAPI,
                                                      kubeconfig: str) -> None:
    web = service("shop", "web", cluster_ip="10.96.0.10", type="LoadBalancer")
    web["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
    api.load([namespace("shop"), web])
    server = start_dnsd("--kubeconfig", kubeconfig, "--external-zone", EXT, "--kube-read-timeout", "1")
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert answers(server.query(f"web.shop.{EXT}")) == [f"web.shop.{EXT}. A 203.0.113.10"]
    api.update({**web, "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}}})  # moved: a watch event
    wait_for(lambda: answers(server.query(f"web.shop.{EXT}")) == [f"web.shop.{EXT}. A 203.0.113.11"], timeout=5)
