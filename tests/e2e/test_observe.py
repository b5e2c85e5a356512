"""Who asks what, on the real server: the query log's lines against the queries sent, field by field;
/debug/top across workers (clients, names, NXDOMAIN names, forwarded names); dnstap to golang-dnstap's
reader; their metrics."""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnstap_reader import Reader
from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, wait_for

CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"""
LINE = re.compile(r'^\[INFO\] (?P<client>[\d.]+):(?P<port>\d+) - (?P<id>\d+) "(?P<type>\S+) (?P<cls>\S+) (?P<name>\S+) '
                  r'(?P<proto>udp|tcp) (?P<size>\d+) (?P<do>true|false) (?P<bufsize>\d+)" (?P<rcode>\S+) '
                  r'(?P<flags>\S+) (?P<rsize>\d+) (?P<duration>\d+\.\d{6})s$')


def ask(server: Dnsd, name: str, rdtype: str = "A", *, source: str = "127.0.0.1", tcp: bool = False,
        edns: bool = False, do: bool = False) -> tuple[dns.message.Message, bytes, int]:
    """One query from ``source`` (a loopback address of its own): the query, the reply's bytes as received
    (their size is what the log gives), the source port."""
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns or do else False, want_dnssec=do, payload=1400)
    wire = query.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind((source, 0))
        sock.connect((server.address, server.port))
        if tcp:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(sock.recv(2), "big")
            reply = b""
            while len(reply) < size:
                reply += sock.recv(size - len(reply))
        else:
            sock.send(wire)
            reply = sock.recv(65535)
        return query, reply, sock.getsockname()[1]


def query_lines(server: Dnsd) -> list[dict[str, str]]:
    """The query log's lines, but for the start-up probe's (tests/helpers.py asks dns-version until it answers)."""
    lines = [m.groupdict() for raw in server.log().splitlines() if (m := LINE.match(raw))]
    return [f for f in lines if not f["name"].startswith("dns-version.")]


def metric(server: Dnsd, name: str) -> float:
    text = server.http("/metrics")[1]
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def cluster(manifest_dir: Path) -> Path:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    return manifest_dir


def test_query_log_lines_match_the_queries_field_by_field(start_dnsd: Callable[..., Dnsd], cluster: Path) -> None:
    server = start_dnsd("--manifests", str(cluster), "--log-queries")
    sent = [
        (*ask(server, "web.shop.svc.cluster.local", source="127.0.0.2"), "udp", "127.0.0.2"),
        (*ask(server, "WEB.shop.svc.cluster.local", "AAAA", source="127.0.0.3", edns=True), "udp", "127.0.0.3"),
        (*ask(server, "nope.shop.svc.cluster.local", source="127.0.0.4", tcp=True, do=True), "tcp", "127.0.0.4"),
        (*ask(server, "_http._tcp.web.shop.svc.cluster.local", "SRV", source="127.0.0.2", edns=True), "udp", "127.0.0.2"),
    ]
    lines = wait_for(lambda: (found := query_lines(server)) and len(found) == len(sent) and found)
    for (query, reply, port, proto, source), fields in zip(sent, lines, strict=True):
        question = query.question[0]
        assert fields["client"] == source and int(fields["port"]) == port
        assert int(fields["id"]) == query.id
        assert fields["type"] == dns.rdatatype.to_text(question.rdtype) and fields["cls"] == "IN"
        assert fields["name"] == question.name.to_text()  # as asked, the case included
        assert fields["proto"] == proto and int(fields["size"]) == len(query.to_wire())
        assert fields["do"] == ("true" if query.ednsflags & dns.flags.DO else "false")
        assert int(fields["bufsize"]) == (query.payload if query.edns >= 0 else 512)
        answer = dns.message.from_wire(reply)
        assert fields["rcode"] == dns.rcode.to_text(answer.rcode())
        assert fields["flags"].split(",") == [f for f in ("qr", "aa", "tc", "rd", "ra", "ad", "cd")
                                              if f in dns.flags.to_text(answer.flags).lower().split()]
        assert int(fields["rsize"]) == len(reply) and float(fields["duration"]) < 1
    assert metric(server, "dnsd_query_log_lines_total") == len(sent) + 1  # and the probe


def test_the_class_filter_and_the_rate_bound(start_dnsd: Callable[..., Dnsd], cluster: Path) -> None:
    denials = start_dnsd("--manifests", str(cluster), "--log-queries", "denial")
    for name in ("web.shop.svc.cluster.local", "nope.shop.svc.cluster.local", "shop.svc.cluster.local"):
        ask(denials, name)
    wait_for(lambda: len(query_lines(denials)) == 2)
    assert [(f["name"], f["rcode"]) for f in query_lines(denials)] == [
        ("nope.shop.svc.cluster.local.", "NXDOMAIN"), ("shop.svc.cluster.local.", "NOERROR")]  # NXDOMAIN, NODATA
    bounded = start_dnsd("--manifests", str(cluster), "--log-queries", "--log-queries-rate", "5")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        wire = dns.message.make_query("web.shop.svc.cluster.local", "A").to_wire()
        for _ in range(100):  # in well under a second: the bound lets ~5 through
            sock.sendto(wire, (bounded.address, bounded.port))
            sock.recv(512)
    wait_for(lambda: metric(bounded, "dnsd_query_log_dropped_total") + metric(bounded, "dnsd_query_log_lines_total")
             >= 100)
    assert 4 <= len(query_lines(bounded)) <= 10  # the bucket held 5; the start-up probe took one
    assert metric(bounded, "dnsd_query_log_dropped_total") >= 90


def test_debug_top_across_workers(start_dnsd: Callable[..., Dnsd], cluster: Path) -> None:
    with FakeUpstream() as upstream:
        server = start_dnsd("--manifests", str(cluster), "--upstream", f"127.0.0.1:{upstream.port}", workers=2)
        wait_for(lambda: server.http("/ready")[0] == 200, timeout=20)  # HTTP starts once the workers run
        asked = {"127.0.0.2": 30, "127.0.0.3": 20, "127.0.0.4": 10}
        for source, n in asked.items():
            for i in range(n):
                ask(server, "web.shop.svc.cluster.local", source=source, tcp=i % 5 == 0)
        for _ in range(7):
            ask(server, "typo.shop.svc.cluster.local", source="127.0.0.4")
        for i in range(3):
            ask(server, f"site{i}.example.org", source="127.0.0.5")

        def report() -> dict:
            status, body = server.http("/debug/top?limit=3")
            assert status == 200
            return json.loads(body)

        # Each worker reports once a second: wait for all 70 queries to be in (and the start-up probe's).
        top = wait_for(lambda: (r := report())["windows"]["1m"]["queries"] >= 71 and r, timeout=5)
        assert top["workers"] == 2 and top["capacity"] >= 10
        minute = top["windows"]["1m"]
        exact = [{"key": k, "count": n, "error": 0} for k, n in (("127.0.0.2", 30), ("127.0.0.3", 20), ("127.0.0.4", 17))]
        assert minute["clients"] == exact
        assert minute["names"][:2] == [{"key": "web.shop.svc.cluster.local", "count": 60, "error": 0},
                                       {"key": "typo.shop.svc.cluster.local", "count": 7, "error": 0}]
        assert minute["nxdomain"] == [{"key": "typo.shop.svc.cluster.local", "count": 7, "error": 0}]
        assert {i["key"] for i in minute["forwarded"]} == {"site0.example.org", "site1.example.org", "site2.example.org"}
        assert top["windows"]["15m"]["clients"] == exact
        assert server.http("/debug/top?limit=0")[0] == 400
        assert server.http("/debug/top?limit=x")[0] == 400


def test_top_talkers_can_be_turned_off(start_dnsd: Callable[..., Dnsd], cluster: Path) -> None:
    server = start_dnsd("--manifests", str(cluster), "--no-top-talkers")
    wait_for(lambda: server.http("/ready")[0] == 200, timeout=20)
    status, body = server.http("/debug/top")
    assert status == 404 and "--no-top-talkers" in body


@pytest.mark.skipif(shutil.which("dnstap") is None, reason="no dnstap reader (.ci/run installs it)")
def test_dnstap_streams_client_and_forwarder_messages(start_dnsd: Callable[..., Dnsd], cluster: Path,
                                                      tmp_path: Path) -> None:
    socket_path = tmp_path / "dnstap.sock"
    reader = Reader(f"unix:{socket_path}", tmp_path)
    try:
        with FakeUpstream() as upstream:
            server = start_dnsd("--manifests", str(cluster), "--upstream", f"127.0.0.1:{upstream.port}",
                                "--dnstap", f"unix:{socket_path}", "--dnstap-identity", "dnsd-test", workers=2)
            wait_for(lambda: metric(server, "dnsd_dnstap_frames_total") >= 2, timeout=10)  # the start-up probe's
            before = reader.count()
            cluster_q, cluster_reply, cluster_port = ask(server, "web.shop.svc.cluster.local", source="127.0.0.2")
            fwd_q, _, fwd_port = ask(server, "www.example.org", source="127.0.0.3", tcp=True)
            docs = reader.messages(before + 6)[before:]
    finally:
        reader.kill()
    kinds = sorted(d["message"]["type"] for d in docs)
    assert kinds == sorted(["CLIENT_QUERY", "CLIENT_RESPONSE"] * 2 + ["FORWARDER_QUERY", "FORWARDER_RESPONSE"])
    assert {d["identity"] for d in docs} == {"dnsd-test"} and {d["type"] for d in docs} == {"MESSAGE"}
    clients = [d["message"] for d in docs if d["message"]["type"].startswith("CLIENT_")]
    by_port = {m["query_port"]: m for m in clients if m["type"] == "CLIENT_RESPONSE"}
    assert by_port[cluster_port]["query_address"] == "127.0.0.2" and by_port[cluster_port]["socket_protocol"] == "UDP"
    assert by_port[fwd_port]["query_address"] == "127.0.0.3" and by_port[fwd_port]["socket_protocol"] == "TCP"
    assert f"id: {cluster_q.id}" in by_port[cluster_port]["response_message"]
    assert f"id: {fwd_q.id}" in by_port[fwd_port]["response_message"]
    assert by_port[cluster_port]["response_message"].count("IN\tA") == len(dns.message.from_wire(cluster_reply).answer)
    assert "web.shop.svc.cluster.local.\t5\tIN\tA\t10.96.0.10" in by_port[cluster_port]["response_message"]
    upstream_reply = next(d["message"] for d in docs if d["message"]["type"] == "FORWARDER_RESPONSE")
    assert upstream_reply["response_address"] == "127.0.0.1" and upstream_reply["response_port"] == upstream.port
    assert "www.example.org." in upstream_reply["response_message"]
