"""What CoreDNS's kubernetes-plugin options leave out of the zone, as pure functions: label selectors
(--namespace-labels), a ClusterIP Service without endpoints (--ignore-empty-service), and the pipeline
deciding which Services and namespaces produce records (--namespace-labels, --no-endpoints)."""

from __future__ import annotations

from typing import Any

import pytest

from dnsd.cluster.model import CLUSTER_IP, EXTERNAL_NAME, HEADLESS, EndpointSet, Namespace, Port, Service, from_object, subset
from dnsd.cluster.selector import matches, parse
from dnsd.cluster.store import Delete, Replace, Synced, Upsert
from dnsd.dns.const import CNAME, NS, PTR, SOA, SRV, TXT, A
from dnsd.zone.pipeline import Pipeline, Scope
from dnsd.zone.records import plain, service_records

Z = "cluster.local"
HTTP = (Port("http", 80, "tcp"),)
WEB = Service("shop", "web", CLUSTER_IP, ("10.96.0.10",), HTTP)
DB = Service("back", "db", HEADLESS, (), HTTP)
EXT = Service("shop", "ext", EXTERNAL_NAME, (), (), "example.com")


def slice_of(svc: Service, ready: tuple[str, ...] = (), not_ready: tuple[str, ...] = ()) -> EndpointSet:
    sub = subset(HTTP, [(ip, "") for ip in ready], [(ip, "") for ip in not_ready])
    return EndpointSet("EndpointSlice", svc.namespace, f"{svc.name}-1", svc.name, (sub,))


# -- label selectors ---------------------------------------------------------------------------
LABELS = {"env": "prod", "tier": "web", "team": "a", "version": "7", "kubernetes.io/metadata.name": "shop"}


@pytest.mark.parametrize(("text", "expected"), [
    ("", True),
    ("env=prod", True), ("env==prod", True), ("env = prod", True), ("env=dev", False),
    ("env!=dev", True), ("env!=prod", False), ("missing!=x", True),
    ("env", True), ("missing", False), ("!missing", True), ("!env", False),
    ("tier in (web,api)", True), ("tier in ( api , db )", False), ("missing in (a)", False),
    ("tier notin (db)", True), ("tier notin (web)", False), ("missing notin (a)", True),
    ("env=prod,tier=web", True), ("env=prod, tier=db", False),
    ("version>6", True), ("version<7", False), ("version > 8", False), ("env>1", False), ("missing<9", False),
    ("kubernetes.io/metadata.name=shop", True), ("env in ()", False), ("empty=", False),
])
def test_selectors_match_as_kubernetes_does(text: str, expected: bool) -> None:
    assert matches(parse(text), LABELS) is expected


@pytest.mark.parametrize("text", [
    "env=prod,", ",env", "env prod", "env in web", "env in (a", "env in (a b)", "env=(", "!", "env>x",
    "Bad_Prefix.io/x=1", "-env=1", "env=" + "v" * 64, "env=a/b", "x" * 64, "env=prod tier=web", "env ~ prod",
])
def test_bad_selectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


# -- the model keeps a namespace's labels ------------------------------------------------------
def test_namespace_labels_in_the_model() -> None:
    obj: dict[str, Any] = {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"b": "2", "a": "1"}}}
    assert from_object(obj) == Namespace("shop", (("a", "1"), ("b", "2")))
    assert from_object({"kind": "Namespace", "metadata": {"name": "shop"}}) == Namespace("shop")
    with pytest.raises(ValueError, match=r"metadata\.labels"):
        from_object({"kind": "Namespace", "metadata": {"name": "shop", "labels": {"version": 1}}})


# -- --ignore-empty-service ----------------------------------------------------------------------
def kinds(records: list) -> set[tuple[str, int]]:
    return {(name, rtype) for name, rtype, _ in plain(records)}  # a Service's entry as its records


def test_an_empty_cluster_ip_service_keeps_only_its_ptr() -> None:
    assert service_records(WEB, (), (Z, "other.zone"), ignore_empty=True) == [
        ("10.0.96.10.in-addr.arpa", PTR, f"web.shop.svc.{Z}")]
    assert service_records(WEB, (slice_of(WEB, not_ready=("10.1.0.1",)),), (Z,), ignore_empty=True) == [
        ("10.0.96.10.in-addr.arpa", PTR, f"web.shop.svc.{Z}")]  # a not-ready endpoint is none
    # Without the option, or with a ready endpoint: every record.
    full = kinds(service_records(WEB, (), (Z,)))
    assert (f"web.shop.svc.{Z}", A) in full and (f"_http._tcp.web.shop.svc.{Z}", SRV) in full
    assert kinds(service_records(WEB, (slice_of(WEB, ("10.1.0.1",)),), (Z,), ignore_empty=True)) == full


def test_ignore_empty_counts_published_not_ready_endpoints_and_spares_other_types() -> None:
    warm = WEB._replace(publish_not_ready=True)
    assert (f"web.shop.svc.{Z}", A) in kinds(
        service_records(warm, (slice_of(warm, not_ready=("10.1.0.1",)),), (Z,), ignore_empty=True))
    assert service_records(EXT, (), (Z,), ignore_empty=True) == [(f"ext.shop.svc.{Z}", CNAME, "example.com")]
    assert service_records(DB, (), (Z,), ignore_empty=True) == []  # headless without endpoints: as always
    with_one = service_records(DB, (slice_of(DB, ("10.2.0.1",)),), (Z,), ignore_empty=True)
    assert with_one == service_records(DB, (slice_of(DB, ("10.2.0.1",)),), (Z,))


# -- the pipeline: --namespace-labels and --no-endpoints -----------------------------------------
def held(pipeline: Pipeline) -> set[tuple[str, int]]:
    """(name, type) of every record the index holds but the zones' own (SOA, NS, TXT)."""
    return {(name, rtype) for name, rtype, _ in pipeline.index.records() if rtype not in (SOA, NS, TXT)}


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(name, tuple(sorted(labels.items())))


def test_only_the_namespaces_the_selector_matches_are_served() -> None:
    p = Pipeline([Z], 5, pods=True, scope=Scope(namespace_labels=parse("dns=public")))
    # The Services come before their namespaces, as from two reflectors.
    p.apply([Replace("k8s:services", (WEB, DB)), Replace("k8s:endpointslices", (slice_of(DB, ("10.2.0.1",)),))])
    assert not held(p) and not p.index.exists(f"shop.svc.{Z}")
    p.apply([Replace("k8s:namespaces", (ns("shop", dns="public"), ns("back"))), Synced("k8s:namespaces")])
    names = held(p)
    assert {(f"web.shop.svc.{Z}", A), ("10.0.96.10.in-addr.arpa", PTR)} <= names
    assert p.index.exists(f"shop.svc.{Z}") and p.index.exists(f"shop.pod.{Z}")
    assert not {n for n, _ in names if "back" in n or n == "1.0.2.10.in-addr.arpa"}  # not even its PTRs
    assert not p.index.exists(f"back.svc.{Z}") and not p.index.exists(f"back.pod.{Z}")
    # Labels change: served at once, and no longer served at once.
    p.apply([Upsert("k8s:namespaces", ns("back", dns="public")), Upsert("k8s:namespaces", ns("shop", dns="no"))])
    names = held(p)
    assert {(f"db.back.svc.{Z}", A), ("1.0.2.10.in-addr.arpa", PTR)} <= names and p.index.exists(f"back.pod.{Z}")
    assert not {n for n, _ in names if "shop" in n or n == "10.0.96.10.in-addr.arpa"}
    assert not p.index.exists(f"shop.svc.{Z}") and not p.index.exists(f"shop.pod.{Z}")
    # A Namespace object gone: its Services stay known but unserved.
    p.apply([Delete("k8s:namespaces", ns("back").key)])
    assert not {n for n, _ in held(p) if "back" in n} and not p.index.exists(f"back.svc.{Z}")
    # Without the option, the same data serves both.
    plain = Pipeline([Z], 5)
    plain.apply([Replace("k8s", (WEB, DB, slice_of(DB, ("10.2.0.1",)), ns("back")))])
    assert {(f"web.shop.svc.{Z}", A), (f"db.back.svc.{Z}", A)} <= held(plain)


def test_a_label_change_that_keeps_the_verdict_changes_nothing() -> None:
    p = Pipeline([Z], 5, scope=Scope(namespace_labels=parse("dns")))
    p.apply([Replace("f", (WEB, ns("shop", dns="a")))])
    before = set(p.index.records())
    assert p.index.exists(f"shop.svc.{Z}") and (f"web.shop.svc.{Z}", A) in held(p)
    p.apply([Replace("f", (WEB, ns("shop", dns="b", other="x")))])
    assert set(p.index.records()) == before and p.index.exists(f"shop.svc.{Z}")
    p.apply([Replace("f", (WEB, ns("shop", other="x")))])  # now it does
    assert (f"web.shop.svc.{Z}", A) not in held(p) and not p.index.exists(f"shop.svc.{Z}")


def test_no_endpoints_serves_no_endpoint_records() -> None:
    p = Pipeline([Z], 5, scope=Scope(endpoints=False))
    p.apply([Replace("f", (WEB, DB, slice_of(DB, ("10.2.0.1",)), slice_of(WEB, ("10.1.0.1",))))])
    names = {n for n, _ in held(p)}
    assert f"web.shop.svc.{Z}" in names and "10.0.96.10.in-addr.arpa" in names
    assert not {n for n in names if "db" in n or n.endswith(".10.in-addr.arpa")} - {"10.0.96.10.in-addr.arpa"}
