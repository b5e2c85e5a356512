"""Node-local mode (--cluster-dns): dnsd as the cluster DNS (manifests, 127.0.0.1) and a second dnsd as the
node cache (127.0.0.2) with no source of its own, asking the first over one kept-open TCP connection."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, answers, free_port, rcode, wait_for
from tests.stream import Stream, query

WEB = "web.app.svc.cluster.local"
NODE = "127.0.0.2"


def service(name: str, ip: str, ns: str = "app") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


class Pair:
    """The cluster DNS and the node cache in front of it."""

    def __init__(self, manifests: Path, upstream: FakeUpstream, ttl: int = 2) -> None:
        self.manifests, self.upstream, self.ttl = manifests, upstream, ttl
        self.cluster_port = free_port()
        self.cluster = self.start_cluster()
        self.node = Dnsd("--address", NODE, "--cluster-dns", f"127.0.0.1:{self.cluster_port}",
                         "--upstream", upstream.server, port=free_port(NODE))
        self.node.address = NODE
        self.node.wait_listening()

    def start_cluster(self) -> Dnsd:
        # A short idle timeout: the node's connection is never idle, so a drain lasts that long.
        return Dnsd("--manifests", str(self.manifests), "--ttl", str(self.ttl), "--upstream", self.upstream.server,
                    "--tcp-idle-timeout", "2", port=self.cluster_port).wait_listening()

    def stop(self) -> None:
        for server in (self.node, self.cluster):
            server.stop()


@pytest.fixture
def pair(manifest_dir: Path, upstream: FakeUpstream) -> Iterator[Pair]:
    (manifest_dir / "web.yaml").write_text(service("web", "10.96.7.1"))
    p = Pair(manifest_dir, upstream)
    yield p
    p.stop()


def a_of(server: Dnsd, name: str, tcp: bool = False) -> list[str]:
    return [str(r) for rrset in server.query(name, tcp=tcp).answer for r in rrset if rrset.rdtype == 1]


def established(port: int) -> int:
    """TCP connections established to ``port`` on loopback (the cluster DNS's side of them)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_cluster_names_resolve_through_the_cache(pair: Pair, upstream: FakeUpstream) -> None:
    assert pair.node.http("/ready")[0] == 200  # no source to wait for
    assert a_of(pair.node, WEB) == ["10.96.7.1"]
    assert a_of(pair.node, WEB, tcp=True) == ["10.96.7.1"]
    ptr = pair.node.query("1.7.96.10.in-addr.arpa", "PTR")
    assert answers(ptr) == [f"1.7.96.10.in-addr.arpa. PTR {WEB}."]
    nx = pair.node.query("nope.app.svc.cluster.local")
    assert rcode(nx) == "NXDOMAIN" and nx.authority  # the cluster's negative, with its SOA
    leaked = [q.name for q in upstream.seen if q.name.endswith(("cluster.local.", "arpa."))]
    assert not leaked, "cluster names never reach the node's upstream"
    assert a_of(pair.node, "example.com") == ["192.0.2.1"]  # everything else does
    assert upstream.count("example.com") == 1
    assert established(pair.cluster_port) == 1


def test_a_change_in_the_cluster_is_seen_within_its_ttl(pair: Pair) -> None:
    assert a_of(pair.node, WEB) == ["10.96.7.1"]
    (pair.manifests / "web.yaml").write_text(service("web", "10.96.7.2"))
    wait_for(lambda: a_of(pair.cluster, WEB) == ["10.96.7.2"], timeout=5)  # the cluster DNS has it
    changed = time.monotonic()
    wait_for(lambda: a_of(pair.node, WEB) == ["10.96.7.2"], timeout=pair.ttl + 1, interval=0.05)
    assert time.monotonic() - changed <= pair.ttl + 0.2


def test_cluster_dns_restart_costs_no_cached_answer(pair: Pair) -> None:
    names = [f"svc{i}.app.svc.cluster.local" for i in range(20)]
    (pair.manifests / "more.yaml").write_text("---\n".join(service(f"svc{i}", f"10.96.8.{i + 1}") for i in range(20)))
    wait_for(lambda: a_of(pair.cluster, names[-1]) == ["10.96.8.20"], timeout=5)
    for i, name in enumerate(names):  # cached by the node
        assert a_of(pair.node, name) == [f"10.96.8.{i + 1}"]
    stream = Stream(NODE, pair.node.port, WEB, udp=200, tcp=20, pipelined=50).start()
    time.sleep(0.5)
    assert pair.cluster.stop() == 0
    down = time.monotonic()
    while time.monotonic() - down < pair.ttl + 1.5:  # past every cached TTL: answered stale
        for i, name in enumerate(names):
            assert a_of(pair.node, name) == [f"10.96.8.{i + 1}"], name
        time.sleep(0.2)
    pair.cluster = pair.start_cluster()  # back on the same port: the node reconnects
    (pair.manifests / "new.yaml").write_text(service("new", "10.96.9.1"))
    wait_for(lambda: a_of(pair.node, "new.app.svc.cluster.local") == ["10.96.9.1"], timeout=10)
    counts = stream.stop()
    for kind, c in counts.items():
        assert c.lost == 0 and c.wrong == 0 and c.answered == c.sent > 0, (kind, str(c))


def test_many_queries_share_one_connection(pair: Pair) -> None:
    """200 distinct names at once from many clients: one TCP connection to the cluster DNS carries them all."""
    names = [f"10-244-{i // 250}-{i % 250 + 1}.app.pod.cluster.local" for i in range(200)]
    socks = []
    for i, name in enumerate(names):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(query(name, i + 1), (NODE, pair.node.port))
        socks.append(s)
    try:
        for s in socks:
            s.settimeout(5)
            reply = dns.message.from_wire(s.recv(4096))
            assert rcode(reply) == "NOERROR" and reply.answer
    finally:
        for s in socks:
            s.close()
    assert established(pair.cluster_port) == 1
    metrics = pair.cluster.http("/metrics")[1]
    tcp_requests = [line for line in metrics.splitlines()
                    if line.startswith("coredns_dns_requests_total") and 'proto="tcp"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in tcp_requests) >= 200


def test_forwarded_answers_on_one_connection_come_out_of_order(start_dnsd, upstream: FakeUpstream) -> None:
    """The cluster DNS answers a pipelined connection's cluster names at once, even behind a slow forward."""
    upstream.modes["slow.example"] = "slow"
    upstream.delay = 1.0
    server = start_dnsd("--upstream", upstream.server)
    with socket.create_connection((server.address, server.port), timeout=5) as conn:
        for qid, name in ((1, "slow.example"), (2, "web.default.svc.cluster.local")):
            q = query(name, qid)
            conn.sendall(len(q).to_bytes(2, "big") + q)
        ids = []
        for _ in range(2):
            size = int.from_bytes(conn.recv(2, socket.MSG_WAITALL), "big")
            ids.append(int.from_bytes(conn.recv(size, socket.MSG_WAITALL)[:2], "big"))
    assert ids == [2, 1]


def test_cluster_dns_flag_checks(tmp_path: Path) -> None:
    from tests.e2e.test_cli import dnsd

    result = dnsd("serve", "--cluster-dns", "tls://10.0.0.10", "--upstream", "none", "--http-address", "")
    assert result.returncode == 2 and "--cluster-dns" in result.stderr and "over TCP" in result.stderr
    result = dnsd("serve", "--cluster-dns", "10.0.0.10", "--manifests", str(tmp_path), "--upstream", "none")
    assert result.returncode == 2 and "--manifests cannot go with it" in result.stderr


def test_node_cache_handover(pair: Pair) -> None:
    """A second node cache on the same address takes over from the first (the DaemonSet's surge pod)."""
    stream = Stream(NODE, pair.node.port, WEB, udp=300, tcp=20, pipelined=50).start()
    time.sleep(0.5)
    new = Dnsd("--address", NODE, "--cluster-dns", f"127.0.0.1:{pair.cluster_port}", "--upstream",
               pair.upstream.server, "--tcp-idle-timeout", "2", port=pair.node.port)
    new.address = NODE
    try:
        wait_for(lambda: "dnsd serving" in new.log(), timeout=20)
        time.sleep(0.5)
        pair.node.proc.send_signal(signal.SIGTERM)
        assert pair.node.proc.wait(20) == 0, pair.node.log()
        time.sleep(0.5)
        counts = stream.stop()
        for kind, c in counts.items():
            assert c.lost == 0 and c.wrong == 0 and c.answered == c.sent > 0, (kind, str(c))
        assert a_of(new, WEB) == ["10.96.7.1"]
    finally:
        pair.node = new
