"""bench/floor_server.py, the Python floor bench/qps measures beside dnsd and Knot: it must answer as dnsd does,
or its row in the table would measure a server doing less."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from bench import gen_cluster
from bench.floor_server import question
from tests.helpers import ROOT, Dnsd, answers, free_port, rcode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    tmp = tmp_path_factory.mktemp("floor")
    services = gen_cluster.generate(100, 1000, seed=3)
    gen_cluster.write_manifests(services, tmp / "cluster", 3)
    lines = gen_cluster.queries(services, 400, seed=3)
    (tmp / "queries.txt").write_text("\n".join(lines) + "\n")
    return tmp, lines


@pytest.fixture(scope="module")
def servers(cluster: tuple[Path, list[str]]) -> Iterator[tuple[int, int]]:
    tmp, _ = cluster
    port = free_port()
    floor = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), "--manifests", str(tmp / "cluster"),
                              "--queries", str(tmp / "queries.txt"), "--port", str(port)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    dnsd = Dnsd("--manifests", str(tmp / "cluster"), "--no-loadbalance", http=False).wait_listening()
    try:
        assert floor.stdout is not None
        assert floor.stdout.readline().startswith(b"floor: ")  # its table is built: it is listening
        yield port, dnsd.port
    finally:
        dnsd.stop()
        floor.terminate()
        floor.wait(10)


def ask(port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(4096)


def test_the_floor_answers_the_query_file_byte_for_byte_as_dnsd(cluster: tuple[Path, list[str]],
                                                                  servers: tuple[int, int]) -> None:
    _, lines = cluster
    floor, dnsd = servers
    rng = random.Random(5)
    sample = sorted(set(lines))
    for line in rng.sample(sample, 80):
        name, qtype = line.split()
        query = rng.randbytes(2) + question(name, qtype)
        got, want = ask(floor, query), ask(dnsd, query)
        assert got[:2] == query[:2], line  # its own ID back
        assert got == want, line


def test_a_query_outside_the_file_is_answered_by_the_responder(servers: tuple[int, int]) -> None:
    floor, dnsd = servers
    for name, qtype in (("cluster.local.", "SOA"), ("nowhere.cluster.local.", "A"), ("dns-version.cluster.local.", "TXT")):
        q = dns.message.make_query(name, qtype)
        got = dns.query.udp(q, "127.0.0.1", port=floor, timeout=2)
        want = dns.query.udp(q, "127.0.0.1", port=dnsd, timeout=2)
        assert (rcode(got), answers(got)) == (rcode(want), answers(want)), name


def test_many_queries_at_once_all_come_back(cluster: tuple[Path, list[str]], servers: tuple[int, int]) -> None:
    """A burst bigger than one recvmmsg batch: every datagram of it gets its reply, to its own sender."""
    _, lines = cluster
    floor, _ = servers
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        sent: dict[tuple[int, bytes], bytes] = {}
        for i, line in enumerate(lines[:150]):
            name, qtype = line.split()
            query = i.to_bytes(2, "big") + question(name, qtype)
            socks[i % 3].sendto(query, ("127.0.0.1", floor))
            sent[(i % 3, query[:2])] = query
        got = 0
        for k, s in enumerate(socks):
            s.settimeout(2)
            for _ in range(sum(1 for sock, _ in sent if sock == k)):
                reply = s.recv(4096)
                query = sent[(k, reply[:2])]  # a reply comes back to the socket that asked
                assert reply[12:len(query)] == query[12:]  # the question as asked
                got += 1
        assert got == len(sent)
    finally:
        for s in socks:
            s.close()
