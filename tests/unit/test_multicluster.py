"""Multicluster (--multicluster-zone, KEP-1645) as pure functions: ServiceImports and their slices parsed,
their records in the clusterset zone, and the pipeline keeping them apart from the cluster's own Services."""

from __future__ import annotations

from typing import Any

import pytest

from dnsd.cluster.model import (
    CLUSTER_IP,
    HEADLESS,
    EndpointSet,
    ImportedSlice,
    Namespace,
    Service,
    ServiceImport,
    from_object,
)
from dnsd.cluster.selector import parse
from dnsd.cluster.store import Delete, Replace, Upsert
from dnsd.dns.const import AAAA, EXISTS, PTR, SOA, SRV, TXT, A
from dnsd.zone.pipeline import Pipeline, Scope
from dnsd.zone.records import SrvData, import_records

MC = "clusterset.local"


def imp(name: str = "web", type_: str = "ClusterSetIP", ips: list[str] | None = None, ns: str = "shop",
        **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}
    if ips is not None:
        spec["ips"] = ips
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": ns}, "spec": spec, **extra}


def mc_slice(name: str, service: str, cluster: str | None, endpoints: list[dict[str, Any]],
             ns: str = "shop", **labels: str) -> dict[str, Any]:
    all_labels = {"multicluster.kubernetes.io/service-name": service, **labels}
    if cluster is not None:
        all_labels["multicluster.kubernetes.io/source-cluster"] = cluster
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns, "labels": all_labels},
            "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def ep(address: str, hostname: str = "", ready: bool = True) -> dict[str, Any]:
    return {"addresses": [address], "conditions": {"ready": ready}, **({"hostname": hostname} if hostname else {})}


def held(p: Pipeline) -> set[tuple[str, int]]:
    return {(name, rtype) for name, rtype, _ in p.index.records()}


# -- parsing ------------------------------------------------------------------------------------
def test_service_imports_parse_both_types() -> None:
    web = from_object(imp(ips=["10.42.0.1", "fd00::1", "10.42.0.1"]))
    assert isinstance(web, ServiceImport) and web.type == CLUSTER_IP and web.ips == ("10.42.0.1", "fd00::1")
    assert [p.name for p in web.ports] == ["http", ""] and web.key == ("ServiceImport", "shop", "web")
    db = from_object(imp("db", "Headless", ips=["10.42.0.2"]))
    assert isinstance(db, ServiceImport) and db.type == HEADLESS and db.ips == ()


@pytest.mark.parametrize(("obj", "reason"), [
    (imp(type_="LoadBalancer"), "spec.type 'LoadBalancer' is not ClusterSetIP or Headless"),
    (imp(type_=None), "spec.type None"),
    (imp(ips=["10.0.0.300"]), "bad IP address"),
    (imp(ips="10.0.0.1"), "spec.ips must be a list"),
    (imp(name="Web"), "metadata.name 'Web' is not a valid DNS label"),
    (mc_slice("db-a", "db", None, [ep("10.1.0.5")]), "needs the label multicluster.kubernetes.io/source-cluster"),
    (mc_slice("db-a", "db", "Cluster_A", [ep("10.1.0.5")]), "label multicluster.kubernetes.io/source-cluster"),
])
def test_bad_imports_and_slices_are_refused_with_a_reason(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        from_object(obj)


def test_another_apis_service_import_is_not_ours() -> None:
    assert from_object(imp(apiVersion="application-networking.k8s.aws/v1alpha1")) is None
    # Items of a typed list carry no apiVersion: the list's own path said which API it is.
    bare = imp()
    del bare["apiVersion"]
    assert isinstance(from_object(bare, "ServiceImport"), ServiceImport)


def test_imported_slices_name_their_cluster_and_a_services_own_label_wins() -> None:
    imported = from_object(mc_slice("db-a", "db", "cluster-a", [ep("10.1.0.5", "db-0"), ep("10.1.0.6", ready=False)]))
    assert isinstance(imported, ImportedSlice) and imported.cluster == "cluster-a" and imported.service == "db"
    assert imported.key == ("EndpointSlice", "shop", "db-a")  # the same object for the store as any slice
    assert list(imported.subsets[0].endpoints()) == [("10.1.0.5", "db-0")]
    both = from_object(mc_slice("web-x", "web", "cluster-a", [ep("10.1.0.7")], **{"kubernetes.io/service-name": "web"}))
    assert isinstance(both, EndpointSet) and both.service == "web"


# -- records -------------------------------------------------------------------------------------
def test_a_clusterset_ip_import_answers_its_ips_and_an_srv_per_port() -> None:
    web = from_object(imp(ips=["10.42.0.1", "fd00::1"]))
    assert isinstance(web, ServiceImport)
    base = f"web.shop.svc.{MC}"
    assert sorted(import_records(web, (), [MC]), key=str) == sorted([
        (base, A, "10.42.0.1"), (base, AAAA, "fd00::1"),
        (f"_http._tcp.{base}", SRV, SrvData(0, 100, 80, base)),
        (base, SRV, SrvData(0, 100, 80, base)), (base, SRV, SrvData(0, 100, 81, base)),
    ], key=str)
    # No PTR, and no per-cluster name: a ClusterSetIP import is one address for the whole clusterset.
    without = from_object(imp(ips=None))
    assert isinstance(without, ServiceImport)
    assert (base, EXISTS, "") in import_records(without, (), [MC])


def test_a_headless_import_answers_ready_endpoints_by_cluster() -> None:
    db = from_object(imp("db", "Headless"))
    a = from_object(mc_slice("db-a", "db", "cluster-a", [ep("10.1.0.5", "db-0"), ep("10.1.0.6", ready=False)]))
    b = from_object(mc_slice("db-b", "db", "cluster-b", [ep("10.2.0.7")]))
    assert isinstance(db, ServiceImport) and isinstance(a, ImportedSlice) and isinstance(b, ImportedSlice)
    records = import_records(db, (a, b), [MC])
    base = f"db.shop.svc.{MC}"
    pet, dashed = f"db-0.cluster-a.{base}", f"10-2-0-7.cluster-b.{base}"
    addresses = {(n, t, d) for n, t, d in records if t == A}
    assert addresses == {(base, A, "10.1.0.5"), (base, A, "10.2.0.7"), (pet, A, "10.1.0.5"), (dashed, A, "10.2.0.7")}
    srv = {d for n, t, d in records if n == f"_http._tcp.{base}" and t == SRV}
    assert {t for group in srv for t in group.targets} == {pet, dashed}  # N endpoints x M named ports
    assert not [r for r in records if r[1] == PTR]
    assert import_records(db, (), [MC]) == []  # no ready endpoint: the name does not exist (NXDOMAIN)
    assert import_records(None, (a, b), [MC]) == []  # slices without their import: nothing


# -- the pipeline --------------------------------------------------------------------------------
def test_imports_live_beside_services_of_the_same_name() -> None:
    p = Pipeline(["cluster.local"], 5, multicluster=[MC])
    web_svc = Service("shop", "web", CLUSTER_IP, ("10.96.0.10",), ())
    web_imp = from_object(imp(ips=["10.42.0.1"]))
    assert web_imp is not None
    p.apply([Replace("file:a", (web_svc, web_imp))])
    assert p.index.rrset("web.shop.svc.cluster.local", A) == ("10.96.0.10",)
    assert p.index.rrset(f"web.shop.svc.{MC}", A) == ("10.42.0.1",)
    assert p.index.rrset(f"dns-version.{MC}", TXT) == ("1.0.0",) and p.index.rrset(MC, SOA)
    # The import goes; the Service stays, and the other way round.
    p.apply([Delete("file:a", web_imp.key)])
    assert not p.index.exists(f"web.shop.svc.{MC}") and not p.index.exists(f"shop.svc.{MC}")
    assert p.index.rrset("web.shop.svc.cluster.local", A) == ("10.96.0.10",)
    p.apply([Upsert("file:a", web_imp), Delete("file:a", web_svc.key)])
    assert p.index.rrset(f"web.shop.svc.{MC}", A) == ("10.42.0.1",)
    assert not p.index.exists("web.shop.svc.cluster.local")


def test_slices_follow_their_import_in_any_order() -> None:
    p = Pipeline(["cluster.local"], 5, multicluster=[MC])
    a = from_object(mc_slice("db-a", "db", "cluster-a", [ep("10.1.0.5")]))
    db = from_object(imp("db", "Headless"))
    assert a is not None and db is not None
    p.apply([Replace("k8s:endpointslices", (a,))])
    assert not p.index.exists(f"db.shop.svc.{MC}")  # a slice alone serves nothing
    p.apply([Replace("k8s:serviceimports", (db,))])
    assert p.index.rrset(f"db.shop.svc.{MC}", A) == ("10.1.0.5",)
    moved = from_object(mc_slice("db-a", "db", "cluster-a", [ep("10.1.0.9")]))
    assert moved is not None
    p.apply([Upsert("k8s:endpointslices", moved)])
    assert p.index.rrset(f"db.shop.svc.{MC}", A) == ("10.1.0.9",)
    assert not p.index.exists(f"10-1-0-5.cluster-a.db.shop.svc.{MC}")


def test_without_the_zone_imports_make_no_records() -> None:
    p = Pipeline(["cluster.local"], 5)
    web_imp = from_object(imp(ips=["10.42.0.1"]))
    assert web_imp is not None
    p.apply([Replace("file:a", (web_imp,))])
    assert not [n for n, _ in held(p) if "shop" in n or "42" in n]


def test_scope_options_apply_to_imports() -> None:
    db = from_object(imp("db", "Headless"))
    web = from_object(imp(ips=["10.42.0.1"]))
    a = from_object(mc_slice("db-a", "db", "cluster-a", [ep("10.1.0.5")]))
    assert db is not None and web is not None and a is not None
    no_endpoints = Pipeline(["cluster.local"], 5, multicluster=[MC], scope=Scope(endpoints=False))
    no_endpoints.apply([Replace("f", (db, web, a))])
    assert not no_endpoints.index.exists(f"db.shop.svc.{MC}")
    assert no_endpoints.index.rrset(f"web.shop.svc.{MC}", A) == ("10.42.0.1",)
    labelled = Pipeline(["cluster.local"], 5, multicluster=[MC], scope=Scope(namespace_labels=parse("dns=public")))
    labelled.apply([Replace("f", (db, web, a, Namespace("shop", (("dns", "no"),))))])
    assert not labelled.index.exists(f"web.shop.svc.{MC}")
    labelled.apply([Upsert("f", Namespace("shop", (("dns", "public"),)))])
    assert labelled.index.rrset(f"web.shop.svc.{MC}", A) == ("10.42.0.1",)
    assert labelled.index.rrset(f"db.shop.svc.{MC}", A) == ("10.1.0.5",)
