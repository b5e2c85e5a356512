"""Manifest files are hot-reloaded; a bad file is reported and its last good data kept."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import Dnsd, answers, rcode, wait_for

Z = "cluster.local"


def service(name: str, ip: str, ns: str = "app") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""


def a_of(server: Dnsd, name: str) -> list[str]:
    return [str(r) for rrset in server.query(name).answer for r in rrset]


def test_edit_add_delete_are_served_within_a_second(start_dnsd, manifest_dir: Path) -> None:
    path = manifest_dir / "svc.yaml"
    path.write_text(service("api", "10.96.5.1"))
    server = start_dnsd("--manifests", str(manifest_dir))
    name = f"api.app.svc.{Z}"
    assert a_of(server, name) == ["10.96.5.1"]

    started = time.monotonic()
    path.write_text(service("api", "10.96.5.2"))
    wait_for(lambda: a_of(server, name) == ["10.96.5.2"], timeout=1.0)
    edit_seconds = time.monotonic() - started

    (manifest_dir / "sub").mkdir()
    (manifest_dir / "sub" / "more.json").write_text(
        '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extra", "namespace": "app"},'
        ' "spec": {"clusterIP": "10.96.5.3"}}'
    )
    wait_for(lambda: a_of(server, f"extra.app.svc.{Z}") == ["10.96.5.3"], timeout=1.0)

    path.unlink()
    wait_for(lambda: rcode(server.query(name)) == "NXDOMAIN", timeout=1.0)
    assert a_of(server, f"extra.app.svc.{Z}") == ["10.96.5.3"]
    assert edit_seconds < 1.0


def test_editor_style_replace_by_rename(start_dnsd, manifest_dir: Path) -> None:
    path = manifest_dir / "svc.yaml"
    path.write_text(service("api", "10.96.6.1"))
    server = start_dnsd("--manifests", str(path))  # a single file, not a directory
    tmp = manifest_dir / ".svc.yaml.swp"
    tmp.write_text(service("api", "10.96.6.2"))
    tmp.replace(path)
    wait_for(lambda: a_of(server, f"api.app.svc.{Z}") == ["10.96.6.2"], timeout=1.0)


def test_broken_file_keeps_last_good_data_and_is_reported(start_dnsd, manifest_dir: Path) -> None:
    good = manifest_dir / "good.yaml"
    good.write_text(service("web", "10.96.7.1"))
    other = manifest_dir / "other.yaml"
    other.write_text(service("db", "10.96.7.2"))
    server = start_dnsd("--manifests", str(manifest_dir))

    # Bad YAML, then a bad IP, then a port out of range: each reported, old data still served.
    for broken, reason in [
        ("kind: Service\nmetadata: {name: web\n", "invalid YAML"),
        (service("web", "10.96.7.300"), "bad IP address"),
        (service("web", "10.96.7.9").replace("port: 80", "port: 70000"), "out of range"),
        ("kind: Service\nmetadata: {namespace: app}\nspec: {clusterIP: 10.96.7.9}\n", "metadata.name"),
    ]:
        good.write_text(broken)
        wait_for(lambda reason=reason: reason in server.log() and str(good) in server.log(), timeout=2.0)
        assert a_of(server, f"web.app.svc.{Z}") == ["10.96.7.1"]
    # An unrelated file still reloads while the other one is broken.
    other.write_text(service("db", "10.96.7.3"))
    wait_for(lambda: a_of(server, f"db.app.svc.{Z}") == ["10.96.7.3"], timeout=1.0)
    # Fixing the file applies it.
    good.write_text(service("web", "10.96.7.4"))
    wait_for(lambda: a_of(server, f"web.app.svc.{Z}") == ["10.96.7.4"], timeout=1.0)
    assert "good.yaml:1:" in server.log()


def test_broken_file_at_start_is_reported_and_the_rest_served(start_dnsd, manifest_dir: Path) -> None:
    (manifest_dir / "bad.yaml").write_text(service("x", "not-an-ip"))
    (manifest_dir / "ok.yaml").write_text(service("ok", "10.96.8.1"))
    server = start_dnsd("--manifests", str(manifest_dir))
    assert a_of(server, f"ok.app.svc.{Z}") == ["10.96.8.1"]
    assert rcode(server.query(f"x.app.svc.{Z}")) == "NXDOMAIN"
    assert "bad.yaml:1: Service app/x: bad IP address 'not-an-ip'" in server.log()


def test_endpoint_change_updates_headless_answers(start_dnsd, manifest_dir: Path) -> None:
    def slice_yaml(ips: list[str]) -> str:
        eps = ", ".join(f"{{addresses: [{ip}]}}" for ip in ips)
        return f"""apiVersion: v1
kind: Service
metadata: {{name: hs, namespace: app}}
spec: {{clusterIP: None}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: hs-1, namespace: app, labels: {{kubernetes.io/service-name: hs}}}}
addressType: IPv4
endpoints: [{eps}]
"""

    path = manifest_dir / "hs.yaml"
    path.write_text(slice_yaml(["10.1.0.1", "10.1.0.2"]))
    server = start_dnsd("--manifests", str(manifest_dir))
    name = f"hs.app.svc.{Z}"
    assert sorted(a_of(server, name)) == ["10.1.0.1", "10.1.0.2"]
    path.write_text(slice_yaml(["10.1.0.2", "10.1.0.3"]))
    wait_for(lambda: sorted(a_of(server, name)) == ["10.1.0.2", "10.1.0.3"], timeout=1.0)
    assert rcode(server.query(f"10-1-0-1.{name}")) == "NXDOMAIN"
    assert answers(server.query("3.0.1.10.in-addr.arpa", "PTR")) == [f"3.0.1.10.in-addr.arpa. PTR 10-1-0-3.{name}."]
    # The SOA serial moves when served data changes.
    serial = lambda: server.query(Z, "SOA").answer[0][0].serial  # noqa: E731
    before = serial()
    time.sleep(1.05)
    path.write_text(slice_yaml(["10.1.0.4"]))
    wait_for(lambda: serial() > before, timeout=2.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_change_reaches_every_name_the_service_answers(start_dnsd, manifest_dir: Path, workers: int) -> None:
    """A ClusterIP Service's name, its ``_port._proto`` SRVs and their ``_proto`` names follow its ports,
    though each was answered (and kept) before: by one process, and by workers reading the shared file."""
    path = manifest_dir / "svc.yaml"
    base = f"api.app.svc.{Z}"
    path.write_text(service("api", "10.96.8.1").replace(
        "ports: [{name: http, port: 80}]", "ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]"))
    server = start_dnsd("--manifests", str(manifest_dir), workers=workers)

    def srv(name: str) -> list[str]:
        return answers(server.query(name, "SRV"))

    for _ in range(4):  # a new socket each time: every worker answers (and keeps) some
        assert srv(base) == [f"{base}. SRV 0 100 53 {base}.", f"{base}. SRV 0 100 80 {base}."]
        assert srv(f"_http._tcp.{base}") == [f"_http._tcp.{base}. SRV 0 100 80 {base}."]
        assert srv(f"_dns._udp.{base}") == [f"_dns._udp.{base}. SRV 0 100 53 {base}."]
        assert rcode(server.query(f"_udp.{base}", "SRV")) == "NOERROR"  # an empty non-terminal
        assert rcode(server.query(f"_grpc._tcp.{base}", "SRV")) == "NXDOMAIN"

    path.write_text(service("api", "10.96.8.1").replace("{name: http, port: 80}", "{name: grpc, port: 9090}"))
    wait_for(lambda: srv(f"_grpc._tcp.{base}") == [f"_grpc._tcp.{base}. SRV 0 100 9090 {base}."], timeout=2.0)
    for _ in range(4):
        assert srv(base) == [f"{base}. SRV 0 100 9090 {base}."]
        assert rcode(server.query(f"_http._tcp.{base}", "SRV")) == "NXDOMAIN"
        assert rcode(server.query(f"_dns._udp.{base}", "SRV")) == "NXDOMAIN"
        assert rcode(server.query(f"_udp.{base}", "SRV")) == "NXDOMAIN"
        assert rcode(server.query(f"_tcp.{base}", "SRV")) == "NOERROR"
        assert answers(server.query(base)) == [f"{base}. A 10.96.8.1"]
