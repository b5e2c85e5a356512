"""Server-side search path (--autopath): the candidate names, the chaining, and the real server."""

from __future__ import annotations

import re
from pathlib import Path

import dnslib
import pytest
from conftest import Dnsd, answers, rcode, wait_for

from dnsd.cluster.model import Namespace, Service
from dnsd.cluster.store import Replace, Synced
from dnsd.dns.const import CNAME, MIN_PAYLOAD, NOERROR, NXDOMAIN, A
from dnsd.process.dataplane import Dataplane
from dnsd.zone.searchpath import Autopath, candidates, search_domains

Z = "cluster.local"
SEARCH = ("example.org", "corp.internal")


# -- the pure part ---------------------------------------------------------------------------
def test_candidates_follow_the_pods_search_list() -> None:
    assert candidates(f"api.github.com.shop.svc.{Z}", Z, SEARCH) == ("shop", (
        f"api.github.com.svc.{Z}", f"api.github.com.{Z}", "api.github.com.example.org",
        "api.github.com.corp.internal", "api.github.com"))
    assert candidates(f"web.shop.svc.{Z}", Z, ()) == ("shop", (f"web.svc.{Z}", f"web.{Z}", "web"))
    # A search domain equal to the zone is tried once.
    assert candidates(f"web.shop.svc.{Z}", Z, (Z,)) == ("shop", (f"web.svc.{Z}", f"web.{Z}", "web"))


def test_candidates_leave_out_names_too_long_to_ask() -> None:
    base = ".".join(["a" * 63] * 3)  # 191 bytes: fits under our zone, not under a 70-byte search domain
    long_domain = ".".join(["b" * 34, "c" * 35])
    _, steps = candidates(f"{base}.shop.svc.{Z}", Z, (long_domain,))
    assert steps == (f"{base}.svc.{Z}", f"{base}.{Z}", base)


@pytest.mark.parametrize("name", [f"shop.svc.{Z}", f"svc.{Z}", Z, f"web.shop.pod.{Z}", "web.shop.svc.example.org"])
def test_candidates_only_for_a_name_below_a_namespace(name: str) -> None:
    assert candidates(name, Z, SEARCH) is None


def test_search_domains_of_a_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\ndomain old.example\nsearch Corp.Internal. example.org # comment\n")
    assert search_domains(str(path)) == ("corp.internal", "example.org")
    assert search_domains(str(tmp_path / "missing")) == ()


# -- the chaining, with a stand-in for the forwarder ----------------------------------------------
@pytest.fixture
def index():
    dp = Dataplane([Z], 5, pods=True)
    dp.apply([Replace("t", (Namespace("shop"), Service("default", "web", "ClusterIP", ("10.96.0.10",), ()))),
              Synced("t")])
    return dp.index


def test_local_step_answers_with_a_cname(index) -> None:
    got = Autopath([Z], SEARCH)(index, f"web.default.shop.svc.{Z}", A, True)
    assert got.rcode == NOERROR and got.autopath
    assert got.answer == ((f"web.default.shop.svc.{Z}", CNAME, f"web.default.svc.{Z}"),
                          (f"web.default.svc.{Z}", A, "10.96.0.10"))
    assert f"web.default.svc.{Z}" in got.depends and f"shop.svc.{Z}" in got.depends


def test_a_pod_name_step_keeps_what_it_depends_on(index) -> None:
    got = Autopath([Z], ())(index, f"10-1-2-3.shop.pod.default.svc.{Z}", A, True)
    assert got.answer[-1] == (f"10-1-2-3.shop.pod.{Z}", A, "10.1.2.3")
    assert f"shop.pod.{Z}" in got.depends


def test_steps_outside_our_zones_are_left_to_the_forwarder(index) -> None:
    got = Autopath([Z], SEARCH, upstream=True)(index, f"api.github.com.shop.svc.{Z}", A, True)
    assert got.rcode == NXDOMAIN and not got.answer and got.authority  # what stands if upstream says NXDOMAIN
    assert got.forward == ("api.github.com.example.org", "api.github.com.corp.internal", "api.github.com")
    assert {f"shop.svc.{Z}", f"api.github.com.svc.{Z}", f"api.github.com.{Z}"} <= set(got.depends)


def test_a_later_local_step_is_the_fallback_after_the_forwarded_ones(index) -> None:
    # ndots:5 and a full cluster name: the search domains come before the name itself, which is ours.
    got = Autopath([Z], SEARCH, upstream=True)(index, f"web.default.svc.{Z}.shop.svc.{Z}", A, True)
    assert got.forward == (f"web.default.svc.{Z}.example.org", f"web.default.svc.{Z}.corp.internal")
    assert got.autopath and got.answer[-1] == (f"web.default.svc.{Z}", A, "10.96.0.10")
    # A step of ours that answers before any forwarded one needs no upstream.
    assert not Autopath([Z], SEARCH, upstream=True)(index, f"web.default.shop.svc.{Z}", A, True).forward


def test_without_a_forwarder_only_local_steps(index) -> None:
    got = Autopath([Z], SEARCH)(index, f"nothing.shop.svc.{Z}", A, True)
    assert got.rcode == NXDOMAIN and f"nothing.svc.{Z}" in got.depends and f"nothing.{Z}" in got.depends
    # Outside names are skipped, so a cluster name searched once more still gets there.
    got = Autopath([Z], SEARCH)(index, f"web.default.svc.{Z}.shop.svc.{Z}", A, True)
    assert got.answer[-1] == (f"web.default.svc.{Z}", A, "10.96.0.10")


def test_warm_hit_is_served_by_the_fast_path() -> None:
    dp = Dataplane([Z], 5, resolver=Autopath([Z], ()))
    dp.apply([Replace("t", (Namespace("shop"), Service("default", "web", "ClusterIP", ("10.96.0.10",), ()))),
              Synced("t")])
    query = bytes(dnslib.DNSRecord.question(f"web.default.shop.svc.{Z}", "A").pack())
    counts: dict = {}
    assert dp.responder.fast(query, MIN_PAYLOAD, counts) is None  # cold: the full path decides
    full = dp.responder.answer(query, MIN_PAYLOAD, counts)
    assert dp.responder.fast(query, MIN_PAYLOAD, counts) == full  # warm: straight from the table
    reply = dnslib.DNSRecord.parse(full)
    assert [str(rr.rdata) for rr in reply.rr] == [f"web.default.svc.{Z}.", "10.96.0.10"]


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

    from conftest import ROOT

    out = subprocess.run([sys.executable, "-m", "dnsd", "serve", "--autopath-search", "a..b"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--autopath-search" in out.stderr


# -- the forward cache's derived replies -------------------------------------------------------
def test_derived_replies_go_when_a_name_they_used_changes() -> None:
    from dnsd.upstream.cache import ForwardCache
    from dnsd.upstream.message import parse

    now = [100.0]
    cache = ForwardCache(100, 3600, 0, 0, clock=lambda: now[0])
    reply = dnslib.DNSRecord.question(f"x.shop.svc.{Z}").reply()
    reply.add_answer(dnslib.RR(f"x.shop.svc.{Z}", dnslib.QTYPE.A, ttl=60, rdata=dnslib.A("192.0.2.1")))
    wire = bytes(reply.pack())
    key = wire[12:wire.index(0, 12) + 5]
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    assert cache.entry(key) is not None
    cache.forget([f"x.svc.{Z}"])
    assert cache.entry(key) is None
    # A walk that began before a change does not keep what it derived from the old data.
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.forget([f"x.svc.{Z}"])
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    assert cache.entry(key) is None
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    now[0] += 59.5
    assert cache.entry(key) is not None
    now[0] += 1
    assert cache.entry(key) is None  # expired with the reply it was derived from
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), cache.reserve(key, ()), None)
    cache.forget_derived()  # a worker told to drop every rendered reply
    assert cache.entry(key) is None
