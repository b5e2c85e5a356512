"""The external zone's records (--external-zone): what a Service's external addresses become."""

from __future__ import annotations

import pytest

from dnsd.cluster.model import from_object
from dnsd.dns.const import AAAA, NS, SOA, SRV, A
from dnsd.zone.records import EXTERNAL, service_records, zone_records


def service(spec: dict, status: dict | None = None) -> object:
    obj = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return from_object(obj)


def test_external_ips_then_ingress_ips_deduplicated_and_canonical() -> None:
    svc = service({"clusterIP": "10.96.0.1", "externalIPs": ["198.51.100.7", "2001:DB8::1"]},
                  {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example"}, {"ip": "203.0.113.9"}]}})
    assert svc.external_ips == ("198.51.100.7", "2001:db8::1", "203.0.113.9")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("spec", "status"), [
    ({"clusterIP": "10.96.0.1", "externalIPs": "198.51.100.7"}, None),
    ({"clusterIP": "10.96.0.1"}, {"loadBalancer": {"ingress": {"ip": "198.51.100.7"}}}),
    ({"clusterIP": "10.96.0.1", "externalIPs": ["not-an-ip"]}, None),
])
def test_malformed_external_addresses_are_refused_with_a_reason(spec: dict, status: dict | None) -> None:
    with pytest.raises(ValueError):
        service(spec, status)


def test_records_in_the_external_zone() -> None:
    svc = service({"clusterIP": "10.96.0.1", "externalIPs": ["198.51.100.7", "2001:db8::1"],
                   "ports": [{"name": "http", "port": 80}, {"port": 81}]})
    records = service_records(svc, (), ["cluster.local"], external=["example.com"])  # type: ignore[arg-type]
    ext = {r for r in records if r[0].endswith("example.com")}
    assert {(name, rtype) for name, rtype, _ in ext} == {
        ("web.shop.example.com", A), ("web.shop.example.com", AAAA), ("_http._tcp.web.shop.example.com", SRV)}
    assert service_records(svc, (), ["cluster.local"]) == [r for r in records if r not in ext]  # nothing else changes


def test_headless_services_are_not_in_it() -> None:
    svc = service({"clusterIP": "None", "externalIPs": ["198.51.100.7"]})
    records = service_records(svc, (), ["cluster.local"], external=["example.com"])  # type: ignore[arg-type]
    assert not [r for r in records if r[0].endswith("example.com")]


def test_the_apex_names_its_own_server() -> None:
    apex = zone_records("example.com", "cluster.local", 1, 5, "10.0.0.53", EXTERNAL)
    assert [(name, rtype) for name, rtype, _ in apex] == [("example.com", SOA), ("example.com", NS), ("ns.dns.example.com", A)]
    assert apex[0][2].mname == "ns.dns.example.com"  # type: ignore[attr-defined]
