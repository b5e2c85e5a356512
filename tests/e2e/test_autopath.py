"""Server-side search path (--autopath) on the real server (the pure parts: unit/test_searchpath.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import Dnsd, answers, rcode, wait_for

Z = "cluster.local"


# -- the real server -------------------------------------------------------------------------
CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.1.1}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.5], hostname: db-0}]
"""


@pytest.fixture
def cluster(manifest_dir: Path) -> Path:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    return manifest_dir


def autopath_hits(server: Dnsd) -> float:
    _, text = server.http("/metrics")
    match = re.search(r"^coredns_autopath_success_total\{[^}]*\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("tcp", [False, True])
def test_cross_namespace_name_in_one_query(start_dnsd, cluster: Path, tcp: bool) -> None:
    s = start_dnsd("--manifests", str(cluster), "--autopath", "--autopath-search", "example.org")
    msg = s.query(f"web.Default.shop.svc.{Z}", tcp=tcp)
    assert rcode(msg) == "NOERROR" and msg.flags & 0x400  # AA
    assert answers(msg) == [f"web.Default.shop.svc.{Z}. CNAME web.default.svc.{Z}.", f"web.default.svc.{Z}. A 10.96.0.10"]
    nodata = s.query(f"web.default.shop.svc.{Z}", "AAAA", tcp=tcp)
    assert answers(nodata) == [f"web.default.shop.svc.{Z}. CNAME web.default.svc.{Z}."] and nodata.authority
    srv = s.query(f"_http._tcp.web.default.shop.svc.{Z}", "SRV", tcp=tcp)
    assert answers(srv)[0] == f"_http._tcp.web.default.shop.svc.{Z}. CNAME _http._tcp.web.default.svc.{Z}."
    assert f"_http._tcp.web.default.svc.{Z}. SRV 0 100 80 web.default.svc.{Z}." in answers(srv)
    # A name with its own dots, and a full cluster name searched once more (ndots:5).
    assert answers(s.query(f"db-0.db.shop.default.svc.{Z}"))[0] == \
        f"db-0.db.shop.default.svc.{Z}. CNAME db-0.db.shop.svc.{Z}."
    assert f"web.default.svc.{Z}. A 10.96.0.10" in answers(s.query(f"web.default.svc.{Z}.shop.svc.{Z}"))


def test_existing_names_and_unknown_namespaces_are_untouched(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), "--autopath", "--autopath-search", "example.org")
    assert answers(s.query(f"cart.shop.svc.{Z}")) == [f"cart.shop.svc.{Z}. A 10.96.1.1"]
    nodata = s.query(f"cart.shop.svc.{Z}", "AAAA")  # exists: NODATA, never a search
    assert rcode(nodata) == "NOERROR" and not nodata.answer
    assert rcode(s.query(f"web.default.nope.svc.{Z}")) == "NXDOMAIN"  # not a namespace we know
    missing = s.query(f"nothing.shop.svc.{Z}")  # every local step NXDOMAIN, no forwarder
    assert rcode(missing) == "NXDOMAIN" and not missing.answer and missing.authority
    assert autopath_hits(s) == 0


def test_off_by_default(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster))
    assert rcode(s.query(f"web.default.shop.svc.{Z}")) == "NXDOMAIN"


def test_counted_on_every_reply_and_follows_changes(start_dnsd, cluster: Path) -> None:
    s = start_dnsd("--manifests", str(cluster), env={"DNSD_AUTOPATH": "1", "DNSD_AUTOPATH_SEARCH": "example.org"})
    for _ in range(3):  # the first through the full path, then from the table
        assert rcode(s.query(f"web.default.shop.svc.{Z}")) == "NOERROR"
    wait_for(lambda: autopath_hits(s) == 3, timeout=5)
    name = f"api.default.shop.svc.{Z}"
    assert rcode(s.query(name)) == "NXDOMAIN"
    (cluster / "api.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
                                      "spec: {clusterIP: 10.96.0.20}\n")
    wait_for(lambda: answers(s.query(name))[-1:] == [f"api.default.svc.{Z}. A 10.96.0.20"], timeout=5)
    (cluster / "api.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
                                      "spec: {clusterIP: 10.96.0.21}\n")
    wait_for(lambda: answers(s.query(name))[-1:] == [f"api.default.svc.{Z}. A 10.96.0.21"], timeout=5)
    (cluster / "api.yaml").unlink()
    wait_for(lambda: rcode(s.query(name)) == "NXDOMAIN", timeout=5)


def test_bad_search_domain_is_a_usage_error(start_dnsd) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = subprocess.run([sys.executable, "-m", "dnsd", "serve", "--autopath-search", "a..b"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--autopath-search" in out.stderr
