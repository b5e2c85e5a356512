"""Zone transfer: kdig and Knot DNS (as a real secondary) load each served zone from dnsd over TCP,
and get what ``dnsd records`` prints; everyone else is REFUSED."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.helpers import ROOT, Dnsd, free_port, rcode, wait_for

Z = "cluster.local"
needs_kdig = pytest.mark.skipif(shutil.which("kdig") is None, reason="kdig (knot-dnsutils) is not installed")
needs_knotd = pytest.mark.skipif(shutil.which("knotd") is None, reason="knotd (knot) is not installed")


def big_cluster(path: Path, services: int = 300) -> None:
    """Enough records for several AXFR messages (200 records each)."""
    docs = []
    for i in range(services):
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns{i % 7}}}\n"
                    f"spec: {{clusterIP: 10.96.{i // 250}.{i % 250 + 1}, ports: [{{name: http, port: 80}}]}}\n")
    docs.append("apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: ns0}\n"
                "spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}\n")
    docs.append("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                "metadata: {name: db-1, namespace: ns0, labels: {kubernetes.io/service-name: db}}\n"
                "addressType: IPv6\nports: [{name: pg, port: 5432}]\n"
                "endpoints: [{addresses: ['fd00::5'], hostname: db-0}]\n")
    path.write_text("---\n".join(docs))


def normalized(lines: list[str], zone: str) -> set[tuple[str, ...]]:
    """Zone-file lines of ``zone`` as (name, ttl, class, type, rdata...) with the SOA serial masked."""
    out = set()
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        name = fields[0].lower()
        if not (name == f"{zone}." or name.endswith(f".{zone}.")):
            continue
        if fields[3] == "SOA":
            fields[6] = "SERIAL"
        out.add(tuple(fields))
    return out


def dnsd_records(manifests: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "dnsd", "records", "--manifests", str(manifests)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("xfr")
    big_cluster(d / "big.yaml")
    return d


@pytest.fixture(scope="module")
def primary(cluster: Path):
    s = Dnsd("--manifests", str(cluster), "--transfer-to", "127.0.0.0/8", "--transfer-to", "::1").wait_listening()
    yield s
    assert s.stop() == 0, s.log()


@needs_kdig
@pytest.mark.parametrize("zone", [Z, "in-addr.arpa", "ip6.arpa"])
def test_kdig_axfr_matches_dnsd_records(primary: Dnsd, cluster: Path, zone: str) -> None:
    out = subprocess.run(["kdig", f"@{primary.address}", "-p", str(primary.port), "AXFR", zone, "+nocomments"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line and not line.startswith(";")]
    soas = [line for line in lines if line.split()[3:4] == ["SOA"]]
    assert len(soas) == 2 and lines[0] == soas[0] and soas[0] == soas[1], "the transfer starts and ends with the SOA"
    got, want = normalized(lines, zone), normalized(dnsd_records(cluster), zone)
    if zone == Z:  # the NS host's address names the listen address: serve-only
        got = {r for r in got if r[0] != f"ns.dns.{Z}."}
        assert len(got) > 600
    assert got == want


def test_dnspython_axfr_several_messages(primary: Dnsd) -> None:
    messages = list(dns.query.xfr(primary.address, Z, port=primary.port, timeout=10, relativize=False))
    assert len(messages) >= 4, "records are spread over several messages"
    assert messages[0].question and str(messages[0].question[0].name) == f"{Z}."
    assert all(m.id == messages[0].id for m in messages)
    assert not any(m.question for m in messages[1:])


@needs_kdig
def test_ixfr_gets_the_full_zone(primary: Dnsd) -> None:
    """dnsd keeps no history: IXFR from an old serial is answered with the whole zone (RFC 1995 4)."""
    out = subprocess.run(["kdig", f"@{primary.address}", "-p", str(primary.port), "IXFR=1", Z, "+nocomments"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line and not line.startswith(";")]
    assert [f[3] for f in lines].count("SOA") == 2 and len(lines) > 600
    assert [f"s1.ns1.svc.{Z}.", "5", "IN", "A", "10.96.0.2"] in lines


def test_transfer_refused_outside_the_acl_and_over_udp(start_dnsd, primary: Dnsd, cluster: Path) -> None:
    nobody = start_dnsd("--manifests", str(cluster))  # default: nobody may transfer
    others = start_dnsd("--manifests", str(cluster), "--transfer-to", "10.0.0.0/8")
    for server in (nobody, others):
        assert rcode(server.query(Z, "AXFR", tcp=True)) == "REFUSED"
    assert rcode(primary.query(Z, "AXFR")) == "REFUSED"  # UDP
    assert rcode(primary.query(f"s1.ns0.svc.{Z}", "AXFR", tcp=True)) == "REFUSED"  # not a zone apex


class primary_connection:
    def __init__(self, server: Dnsd) -> None:
        self.server = server

    def __enter__(self):
        import socket

        self.sock = socket.create_connection((self.server.address, self.server.port), timeout=5)
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_queries_after_a_transfer_on_one_connection(primary: Dnsd) -> None:
    with primary_connection(primary) as sock:
        dns.query.send_tcp(sock, dns.message.make_query(Z, "AXFR"))
        seen_soa = 0
        while seen_soa < 2:
            msg, _ = dns.query.receive_tcp(sock, time.time() + 5)
            seen_soa += sum(1 for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SOA)
        dns.query.send_tcp(sock, dns.message.make_query(f"s1.ns1.svc.{Z}", "A"))
        msg, _ = dns.query.receive_tcp(sock, time.time() + 5)
        assert [str(r) for r in msg.answer[0]] == ["10.96.0.2"]


@needs_knotd
def test_knot_loads_the_zone_as_a_secondary(primary: Dnsd, tmp_path: Path) -> None:
    port = free_port()
    for sub in ("run", "storage"):
        (tmp_path / sub).mkdir()
    conf = tmp_path / "knot.conf"
    conf.write_text(
        f"server:\n    rundir: {tmp_path / 'run'}\n    listen: 127.0.0.1@{port}\n"
        "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
        f"database:\n    storage: {tmp_path / 'storage'}\n"
        "log:\n  - target: stderr\n    any: info\n"
        f"remote:\n  - id: dnsd\n    address: {primary.address}@{primary.port}\n"
        "template:\n  - id: default\n    zonefile-sync: -1\n    journal-content: none\n"
        f"zone:\n  - domain: {Z}\n    master: dnsd\n  - domain: in-addr.arpa\n    master: dnsd\n"
    )
    log = open(tmp_path / "knot.log", "w+")  # noqa: SIM115
    knot = subprocess.Popen(["knotd", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        def ask(name: str, rdtype: str) -> dns.message.Message | None:
            try:
                return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=0.5)
            except Exception:
                return None

        def loaded() -> bool:
            msg = ask(f"s1.ns1.svc.{Z}", "A")
            return msg is not None and bool(msg.answer)

        wait_for(loaded, timeout=20, interval=0.2)
        assert [str(r) for r in ask(f"s1.ns1.svc.{Z}", "A").answer[0]] == ["10.96.0.2"]
        srv = ask(f"_pg._tcp.db.ns0.svc.{Z}", "SRV")
        assert [str(r) for r in srv.answer[0]] == [f"0 100 5432 db-0.db.ns0.svc.{Z}."]
        ptr = wait_for(lambda: (m := ask("2.0.96.10.in-addr.arpa", "PTR")) and m.answer and m, timeout=10)
        assert [str(r) for r in ptr.answer[0]] == [f"s1.ns1.svc.{Z}."]
        ours, theirs = primary.query(Z, "SOA"), ask(Z, "SOA")
        assert str(ours.answer[0][0]) == str(theirs.answer[0][0]), "the secondary holds our serial"
    finally:
        knot.terminate()
        knot.wait(10)
        log.close()
