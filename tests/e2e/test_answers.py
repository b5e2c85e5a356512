"""The Kubernetes DNS schema, answer by answer, from the real server over UDP and TCP."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.rdatatype
import pytest

from tests.helpers import Dnsd, answers, rcode

Z = "cluster.local"


def soa_in_authority(msg) -> bool:
    return any(rrset.rdtype == dns.rdatatype.SOA and str(rrset.name) == f"{Z}." for rrset in msg.authority)


@pytest.fixture(params=["udp", "tcp"])
def ask(request: pytest.FixtureRequest, zones_server: Dnsd):
    tcp = request.param == "tcp"
    return lambda name, rdtype="A": zones_server.query(name, rdtype, tcp=tcp)


def test_cluster_ip_service(ask) -> None:
    msg = ask(f"web.default.svc.{Z}")
    assert rcode(msg) == "NOERROR"
    assert msg.flags & dns.flags.AA and not msg.flags & dns.flags.RA
    assert answers(msg) == [f"web.default.svc.{Z}. A 10.96.0.10"]
    assert msg.answer[0].ttl == 5


def test_dual_stack_service(ask) -> None:
    assert answers(ask(f"cart.shop.svc.{Z}", "A")) == [f"cart.shop.svc.{Z}. A 10.96.1.10"]
    assert answers(ask(f"cart.shop.svc.{Z}", "AAAA")) == [f"cart.shop.svc.{Z}. AAAA fd00:10:96::10"]


def test_single_stack_other_family_is_nodata(ask) -> None:
    msg = ask(f"web.default.svc.{Z}", "AAAA")
    assert rcode(msg) == "NOERROR" and not msg.answer and soa_in_authority(msg)


def test_srv_per_named_port(ask) -> None:
    msg = ask(f"_https._tcp.web.default.svc.{Z}", "SRV")
    assert answers(msg) == [f"_https._tcp.web.default.svc.{Z}. SRV 0 100 443 web.default.svc.{Z}."]
    assert [str(r) for rrset in msg.additional for r in rrset] == ["10.96.0.10"]  # the target's address


def test_srv_wrong_protocol_or_port_is_nxdomain(ask) -> None:
    assert rcode(ask(f"_http._udp.web.default.svc.{Z}", "SRV")) == "NXDOMAIN"
    assert rcode(ask(f"_gopher._tcp.web.default.svc.{Z}", "SRV")) == "NXDOMAIN"


def test_srv_protocol_label_is_empty_non_terminal(ask) -> None:
    msg = ask(f"_tcp.web.default.svc.{Z}", "SRV")
    assert rcode(msg) == "NOERROR" and not msg.answer


def test_headless_service_lists_ready_endpoints_only(ask) -> None:
    assert answers(ask(f"db.shop.svc.{Z}")) == [f"db.shop.svc.{Z}. A 10.244.1.20", f"db.shop.svc.{Z}. A 10.244.2.21"]
    assert answers(ask(f"db-0.db.shop.svc.{Z}")) == [f"db-0.db.shop.svc.{Z}. A 10.244.1.20"]
    assert rcode(ask(f"db-2.db.shop.svc.{Z}")) == "NXDOMAIN"  # ready: false


def test_headless_endpoint_without_hostname_gets_dashed_label(ask) -> None:
    assert answers(ask(f"10-244-1-30.metrics.shop.svc.{Z}")) == [f"10-244-1-30.metrics.shop.svc.{Z}. A 10.244.1.30"]


def test_headless_srv_targets_endpoints_with_addresses_in_additional(ask) -> None:
    msg = ask(f"_postgres._tcp.db.shop.svc.{Z}", "SRV")
    assert answers(msg) == [
        f"_postgres._tcp.db.shop.svc.{Z}. SRV 0 50 5432 db-0.db.shop.svc.{Z}.",
        f"_postgres._tcp.db.shop.svc.{Z}. SRV 0 50 5432 db-1.db.shop.svc.{Z}.",
    ]
    extra = sorted(f"{rrset.name} {r}" for rrset in msg.additional for r in rrset)
    assert extra == [f"db-0.db.shop.svc.{Z}. 10.244.1.20", f"db-1.db.shop.svc.{Z}. 10.244.2.21"]
    udp = ask(f"_statsd._udp.metrics.shop.svc.{Z}", "SRV")
    assert len(udp.answer[0]) == 2


def test_ptr_for_cluster_ip_and_endpoints(ask) -> None:
    assert answers(ask("10.0.96.10.in-addr.arpa", "PTR")) == [f"10.0.96.10.in-addr.arpa. PTR web.default.svc.{Z}."]
    assert answers(ask("20.1.244.10.in-addr.arpa", "PTR")) == [f"20.1.244.10.in-addr.arpa. PTR db-0.db.shop.svc.{Z}."]
    v6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa"
    assert answers(ask(v6, "PTR")) == [f"{v6}. PTR cart.shop.svc.{Z}."]
    assert rcode(ask("99.99.99.10.in-addr.arpa", "PTR")) == "NXDOMAIN"


def test_external_name_is_a_cname_for_every_type(ask) -> None:
    for rdtype in ("A", "AAAA", "CNAME"):
        msg = ask(f"search.shop.svc.{Z}", rdtype)
        assert answers(msg) == [f"search.shop.svc.{Z}. CNAME search.example.com."], rdtype


def test_external_name_has_no_names_below(ask) -> None:
    assert rcode(ask(f"_http._tcp.search.shop.svc.{Z}", "SRV")) == "NXDOMAIN"


def test_zone_apex_and_fixed_names(ask) -> None:
    soa = ask(Z, "SOA")
    assert len(soa.answer) == 1
    mname, rname, *_ = str(soa.answer[0][0]).split()
    assert (mname, rname) == (f"ns.dns.{Z}.", f"hostmaster.{Z}.")
    assert answers(ask(Z, "NS")) == [f"{Z}. NS ns.dns.{Z}."]
    assert answers(ask(f"ns.dns.{Z}", "A")) == [f"ns.dns.{Z}. A 127.0.0.1"]
    txt = ask(f"dns-version.{Z}", "TXT")
    assert answers(txt) == [f'dns-version.{Z}. TXT "1.1.0"'] and txt.answer[0].ttl == 28800


@pytest.mark.parametrize("name", [Z, f"svc.{Z}", f"shop.svc.{Z}", f"default.svc.{Z}"])
def test_empty_non_terminals_are_nodata(ask, name: str) -> None:
    msg = ask(name, "A")
    assert rcode(msg) == "NOERROR" and not msg.answer and soa_in_authority(msg)


@pytest.mark.parametrize("name", [
    f"nope.default.svc.{Z}", f"web.nope.svc.{Z}", f"a.b.web.default.svc.{Z}", f"web.default.svc.{Z}.svc.{Z}",
    f"web.default.pod.{Z}", f"x.{Z}",
])
def test_missing_names_are_nxdomain_with_soa(ask, name: str) -> None:
    msg = ask(name)
    assert rcode(msg) == "NXDOMAIN" and msg.flags & dns.flags.AA and soa_in_authority(msg)


def test_outside_the_zones_is_refused(ask) -> None:
    msg = ask("example.com")
    assert rcode(msg) == "REFUSED" and not msg.answer and not msg.flags & dns.flags.RA


def test_case_insensitive_match_keeps_the_askers_spelling(ask) -> None:
    msg = ask("WeB.DeFault.SVC.Cluster.Local")
    assert answers(msg) == ["WeB.DeFault.SVC.Cluster.Local. A 10.96.0.10"]


def test_dig_sees_the_same(zones_server: Dnsd) -> None:
    assert zones_server.dig("+short", f"web.default.svc.{Z}").split() == ["10.96.0.10"]
    assert sorted(zones_server.dig("+short", "+tcp", f"db.shop.svc.{Z}").split()) == ["10.244.1.20", "10.244.2.21"]
    out = zones_server.dig(f"nope.shop.svc.{Z}")
    assert "status: NXDOMAIN" in out and "flags: qr aa rd;" in out


# -- edge cases from manifests of our own ----------------------------------------------
EDGE = """
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: edge}
spec:
  clusterIP: None
  ports: [{name: http, port: 80}, {port: 81}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: multi-a, namespace: edge, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{name: http, port: 8080}, {port: 8081}]
endpoints:
  - {addresses: [10.0.0.1]}
  - {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}}
  - {addresses: [10.0.0.3], conditions: {}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: multi-b, namespace: edge, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.0.0.1]}
  - {addresses: [10.0.0.4]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: multi-v6, namespace: edge, labels: {kubernetes.io/service-name: multi}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: ["fd00::1"]}
  - {addresses: ["fd00::"]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: edge}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-x, namespace: edge, labels: {kubernetes.io/service-name: empty}}
addressType: IPv4
endpoints:
  - {addresses: [10.0.1.1], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: edge}
spec: {clusterIP: None, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: manual, namespace: edge}
subsets:
  - addresses: [{ip: 192.0.2.1, hostname: one}]
    notReadyAddresses: [{ip: 192.0.2.2}]
    ports: [{name: dns, port: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: both, namespace: edge}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Endpoints
metadata: {name: both, namespace: edge}
subsets: [{addresses: [{ip: 192.0.2.9}]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: both-1, namespace: edge, labels: {kubernetes.io/service-name: both}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.10]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
"""


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory: pytest.TempPathFactory):
    d: Path = tmp_path_factory.mktemp("edge")
    (d / "edge.yaml").write_text(EDGE)
    server = Dnsd("--manifests", str(d)).wait_listening()
    yield server
    assert server.stop() == 0


def test_slices_merge_without_duplicates_and_unready(edge_server: Dnsd) -> None:
    got = answers(edge_server.query(f"multi.edge.svc.{Z}"))
    assert got == [f"multi.edge.svc.{Z}. A 10.0.0.{i}" for i in (1, 3, 4)]
    assert len(edge_server.query(f"multi.edge.svc.{Z}", "AAAA").answer[0]) == 2


def test_ipv6_endpoint_labels(edge_server: Dnsd) -> None:
    assert answers(edge_server.query(f"fd00--1.multi.edge.svc.{Z}", "AAAA")) == [f"fd00--1.multi.edge.svc.{Z}. AAAA fd00::1"]
    assert answers(edge_server.query(f"fd00--0.multi.edge.svc.{Z}", "AAAA")) == [f"fd00--0.multi.edge.svc.{Z}. AAAA fd00::"]


def test_unnamed_ports_have_no_srv_and_headless_weights_spread(edge_server: Dnsd) -> None:
    msg = edge_server.query(f"_http._tcp.multi.edge.svc.{Z}", "SRV")
    weights = {int(str(r).split()[1]) for r in msg.answer[0]}
    assert len(msg.answer[0]) == 5 and weights == {20}
    assert {str(r).split()[2] for r in msg.answer[0]} == {"8080"}  # the endpoint port, not the Service port


def test_headless_without_ready_endpoints_is_nxdomain(edge_server: Dnsd) -> None:
    assert rcode(edge_server.query(f"empty.edge.svc.{Z}")) == "NXDOMAIN"


def test_selectorless_service_with_legacy_endpoints(edge_server: Dnsd) -> None:
    assert answers(edge_server.query(f"manual.edge.svc.{Z}")) == [f"manual.edge.svc.{Z}. A 192.0.2.1"]
    assert answers(edge_server.query(f"one.manual.edge.svc.{Z}")) == [f"one.manual.edge.svc.{Z}. A 192.0.2.1"]
    srv = edge_server.query(f"_dns._udp.manual.edge.svc.{Z}", "SRV", tcp=True)
    assert answers(srv) == [f"_dns._udp.manual.edge.svc.{Z}. SRV 0 100 5353 one.manual.edge.svc.{Z}."]
    assert answers(edge_server.query("1.2.0.192.in-addr.arpa", "PTR")) == [
        f"1.2.0.192.in-addr.arpa. PTR one.manual.edge.svc.{Z}."]


def test_legacy_endpoints_ignored_when_slices_exist(edge_server: Dnsd) -> None:
    assert answers(edge_server.query(f"both.edge.svc.{Z}")) == [f"both.edge.svc.{Z}. A 192.0.2.10"]


def test_namespace_without_services_exists(edge_server: Dnsd) -> None:
    msg = edge_server.query(f"quiet.svc.{Z}")
    assert rcode(msg) == "NOERROR" and not msg.answer
    assert rcode(edge_server.query(f"loud.svc.{Z}")) == "NXDOMAIN"


def test_several_zones(start_dnsd, manifest_dir: Path) -> None:
    (manifest_dir / "e.yaml").write_text(EDGE)
    server = start_dnsd("--manifests", str(manifest_dir), "--domain", Z, "--domain", "corp.internal", "--ttl", "30")
    assert answers(server.query("manual.edge.svc.corp.internal")) == ["manual.edge.svc.corp.internal. A 192.0.2.1"]
    msg = server.query("manual.edge.svc.corp.internal")
    assert msg.answer[0].ttl == 30
    assert rcode(server.query("corp.internal", "SOA")) == "NOERROR"
    # PTRs name the first zone only
    assert answers(server.query("1.2.0.192.in-addr.arpa", "PTR")) == [f"1.2.0.192.in-addr.arpa. PTR one.manual.edge.svc.{Z}."]
