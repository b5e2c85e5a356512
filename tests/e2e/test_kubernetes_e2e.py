"""dnsd serving from the Kubernetes API: the real server, the real client, the fake API server."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import pytest

from tests.fakes.kube_api import FakeKubeAPI, endpoint_slice, namespace, service
from tests.helpers import Dnsd, answers, rcode, wait_for

Z = "cluster.local"
FAST = ("--kube-read-timeout", "1", "--kube-watch-timeout", "30")


@pytest.fixture
def api(api: FakeKubeAPI) -> FakeKubeAPI:
    """The shared fake API, holding a small cluster."""
    api.load([namespace("default"), namespace("shop"),
              service("default", "web", cluster_ip="10.96.0.10"),
              service("shop", "db", cluster_ip=None, ports=[("postgres", 5432, "TCP")]),
              endpoint_slice("shop", "db-1", "db", endpoints=[
                  {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": True}},
                  {"addresses": ["10.1.0.2"], "hostname": "db-1", "conditions": {"ready": True}},
              ], ports=[("postgres", 5432, "TCP")])])
    return api


def a_records(server: Dnsd, name: str) -> list[str]:
    return sorted(str(r) for rrset in server.query(name).answer for r in rrset)


def metric(server: Dnsd, name: str, labels: str = "") -> float | None:
    """The sum of every series of ``name`` whose labels contain ``labels``; None if there is none."""
    _, text = server.http("/metrics")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if re.match(rf"{name}(\{{| )", line) and labels in line]
    return sum(values) if values else None


def test_serves_the_cluster_and_follows_changes(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert a_records(server, f"web.default.svc.{Z}") == ["10.96.0.10"]
    assert a_records(server, f"db.shop.svc.{Z}") == ["10.1.0.1", "10.1.0.2"]
    assert server.dig("+short", f"db-1.db.shop.svc.{Z}").split() == ["10.1.0.2"]
    srv = server.query(f"_postgres._tcp.db.shop.svc.{Z}", "SRV")
    assert len(srv.answer[0]) == 2 and len(srv.additional) == 2

    api.update(service("default", "web", cluster_ip="10.96.0.11"))
    wait_for(lambda: a_records(server, f"web.default.svc.{Z}") == ["10.96.0.11"], timeout=2)
    api.update(endpoint_slice("shop", "db-1", "db", endpoints=[
        {"addresses": ["10.1.0.1"], "hostname": "db-0", "conditions": {"ready": True}},
        {"addresses": ["10.1.0.2"], "hostname": "db-1", "conditions": {"ready": False}},
    ], ports=[("postgres", 5432, "TCP")]))
    wait_for(lambda: a_records(server, f"db.shop.svc.{Z}") == ["10.1.0.1"], timeout=2)
    assert rcode(server.query(f"db-1.db.shop.svc.{Z}")) == "NXDOMAIN"
    api.delete("Service", "default", "web")
    wait_for(lambda: rcode(server.query(f"web.default.svc.{Z}")) == "NXDOMAIN", timeout=2)
    api.create(service("shop", "search", type="ExternalName", external_name="search.example.com"))
    wait_for(lambda: answers(server.query(f"search.shop.svc.{Z}")) == [
        f"search.shop.svc.{Z}. CNAME search.example.com."], timeout=2)
    # A namespace with nothing in it yet exists (NODATA), and stops existing when deleted.
    api.create(namespace("empty"))
    wait_for(lambda: rcode(server.query(f"empty.svc.{Z}")) == "NOERROR", timeout=2)
    api.delete("Namespace", "", "empty")
    wait_for(lambda: rcode(server.query(f"empty.svc.{Z}")) == "NXDOMAIN", timeout=2)


def test_event_to_answer_latency(start_dnsd, api: FakeKubeAPI, kubeconfig: str, capsys) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    latencies = []
    for i in range(40):
        name = f"lat{i}.default.svc.{Z}"
        started = time.perf_counter()
        api.create(service("default", f"lat{i}", cluster_ip=f"10.97.0.{i + 1}"))
        wait_for(lambda name=name: rcode(server.query(name, timeout=0.5)) == "NOERROR", timeout=2, interval=0.001)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p50, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95) - 1]
    with capsys.disabled():
        print(f"\nevent-to-answer over 40 creates: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms")
    assert p50 < 100 and p95 < 250


def test_servfail_not_nxdomain_before_first_sync(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    api.stall(True)  # the API accepts connections but answers nothing: no sync possible
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    assert server.http("/ready")[0] == 503
    for name in (f"web.default.svc.{Z}", f"nope.default.svc.{Z}", f"default.svc.{Z}"):
        msg = server.query(name)
        assert rcode(msg) == "SERVFAIL", name  # never a cacheable NXDOMAIN or NODATA
    assert rcode(server.query(f"dns-version.{Z}", "TXT")) == "NOERROR"  # what we know for sure is answered
    assert metric(server, "dnsd_source_synced", 'origin="k8s:services"') == 0.0
    api.unstall()
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert rcode(server.query(f"nope.default.svc.{Z}")) == "NXDOMAIN"
    assert a_records(server, f"web.default.svc.{Z}") == ["10.96.0.10"]
    assert metric(server, "dnsd_source_synced", 'origin="k8s:services"') == 1.0


def test_relist_after_410_leaves_exactly_the_right_records(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    api.down()  # cut off while the cluster changes, then the history is compacted: 410 on resume
    api.delete("Service", "default", "web")
    api.update(service("shop", "db", cluster_ip="10.96.1.1", ports=[("postgres", 5432, "TCP")]))
    api.create(service("shop", "cart", cluster_ip="10.96.1.2"))
    api.restart()
    api.up()
    wait_for(lambda: a_records(server, f"cart.shop.svc.{Z}") == ["10.96.1.2"], timeout=10)
    assert rcode(server.query(f"web.default.svc.{Z}")) == "NXDOMAIN"
    assert a_records(server, f"db.shop.svc.{Z}") == ["10.96.1.1"]  # no longer headless: no endpoint names
    assert rcode(server.query(f"db-0.db.shop.svc.{Z}")) == "NXDOMAIN"
    wait_for(lambda: "relisting after 410" in server.log(), timeout=5)


def test_stalled_watch_is_detected_and_resumed(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    api.stall(True)
    api.create(service("default", "late", cluster_ip="10.96.2.2"))
    wait_for(lambda: "outage begun" in server.log(), timeout=10)
    assert a_records(server, f"web.default.svc.{Z}") == ["10.96.0.10"]  # stale but served
    api.unstall()
    wait_for(lambda: a_records(server, f"late.default.svc.{Z}") == ["10.96.2.2"], timeout=10)
    wait_for(lambda: "outage ended" in server.log(), timeout=5)


def test_dead_api_keeps_answers_and_recovers(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    api.down()
    wait_for(lambda: metric(server, "dnsd_source_healthy", 'origin="k8s:services"') == 0.0, timeout=10)
    assert a_records(server, f"web.default.svc.{Z}") == ["10.96.0.10"]
    assert rcode(server.query(f"nope.default.svc.{Z}")) == "NXDOMAIN"  # still authoritative
    assert server.http("/ready")[0] == 200  # documented policy: stale data is served, stay in rotation
    time.sleep(1.2)
    assert (metric(server, "dnsd_watch_last_event_age_seconds", 'origin="k8s:services"') or 0) >= 1.0
    api.up()
    api.create(service("default", "back", cluster_ip="10.96.3.3"))
    wait_for(lambda: a_records(server, f"back.default.svc.{Z}") == ["10.96.3.3"], timeout=10)
    wait_for(lambda: metric(server, "dnsd_source_healthy", 'origin="k8s:services"') == 1.0, timeout=5)


def test_metrics_move(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    labels = 'proto="udp"'
    before = metric(server, "coredns_dns_requests_total", labels) or 0.0
    for _ in range(5):
        server.query(f"web.default.svc.{Z}")
    server.query(f"nope.default.svc.{Z}")
    wait_for(lambda: (metric(server, "coredns_dns_requests_total", labels) or 0) >= before + 6, timeout=5)
    assert (metric(server, "coredns_dns_responses_total", 'rcode="NXDOMAIN"') or 0) >= 1
    assert (metric(server, "coredns_dns_request_duration_seconds_count") or 0) >= 6
    records = metric(server, "dnsd_records")
    api.create(service("default", "more", cluster_ip="10.96.4.4"))
    wait_for(lambda: (metric(server, "dnsd_records") or 0) > (records or 0), timeout=5)
    assert (metric(server, "dnsd_programming_duration_seconds_count") or 0) >= 1
    assert metric(server, "dnsd_watch_last_event_age_seconds", 'origin="k8s:endpointslices"') is not None


def test_workers_share_one_watch_per_resource(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    server = start_dnsd("--kubeconfig", kubeconfig, *FAST, workers=2)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=20)
    api.create(service("default", "twice", cluster_ip="10.96.5.5"))
    # Each query may land on either worker: all of them must have the update.
    wait_for(lambda: all(a_records(server, f"twice.default.svc.{Z}") == ["10.96.5.5"] for _ in range(20)), timeout=5)
    assert api.open_watch_counts() == {"services": 1, "endpointslices": 1, "namespaces": 1}
    assert server.stop() == 0


def test_api_wins_over_manifests_and_filters(start_dnsd, api: FakeKubeAPI, kubeconfig: str, manifest_dir: Path) -> None:
    (manifest_dir / "local.yaml").write_text(
        "kind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.99.0.1}\n---\n"
        "kind: Service\nmetadata: {name: local, namespace: default}\nspec: {clusterIP: 10.99.0.2}\n"
    )
    server = start_dnsd("--kubeconfig", kubeconfig, "--manifests", str(manifest_dir), *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert a_records(server, f"web.default.svc.{Z}") == ["10.96.0.10"]  # the API's version
    assert a_records(server, f"local.default.svc.{Z}") == ["10.99.0.2"]  # files fill in the rest
    api.delete("Service", "default", "web")
    wait_for(lambda: a_records(server, f"web.default.svc.{Z}") == ["10.99.0.1"], timeout=2)


def test_namespace_and_label_selector(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    api.create(service("shop", "tagged", cluster_ip="10.96.6.6", labels={"dns": "yes"}))
    server = start_dnsd("--kubeconfig", kubeconfig, "--namespace", "shop", "--label-selector", "dns=yes", *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert a_records(server, f"tagged.shop.svc.{Z}") == ["10.96.6.6"]
    assert rcode(server.query(f"db.shop.svc.{Z}")) == "NXDOMAIN"  # no label
    assert rcode(server.query(f"web.default.svc.{Z}")) == "NXDOMAIN"  # other namespace
    assert rcode(server.query(f"default.svc.{Z}")) == "NXDOMAIN"
    assert rcode(server.query(f"shop.svc.{Z}")) == "NOERROR"
    assert not any(r.path.startswith("/api/v1/services") for r in api.requests())  # namespaced calls only


def test_endpoints_api(start_dnsd, api: FakeKubeAPI, kubeconfig: str) -> None:
    from tests.fakes.kube_api import endpoints

    api.create(service("shop", "manual", cluster_ip=None))
    api.create(endpoints("shop", "manual", addresses=["192.0.2.1"], not_ready=["192.0.2.2"]))
    server = start_dnsd("--kubeconfig", kubeconfig, "--endpoints-api", *FAST)
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=10)
    assert a_records(server, f"manual.shop.svc.{Z}") == ["192.0.2.1"]
    assert api.open_watch_counts().get("endpointslices", 0) == 0
    assert re.search(r"k8s:endpoints: synced", server.log())
