"""The kernel sends every query for one name to the same socket of the port's group, whatever its case or sender."""

from __future__ import annotations

import select
import socket

import dns.message
import pytest

from dnsd.process.steering import steer, worker_of
from tests.helpers import free_port

NAMES = [f"svc-{i}.ns-{i % 7}.svc.cluster.local" for i in range(40)] + ["a.b", "x", ".", "web.default.svc.cluster.local"]


def group(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        socks.append(s)
    return socks


def receiver(socks: list[socket.socket], timeout: float = 2.0) -> tuple[int, bytes]:
    ready, _, _ = select.select(socks, [], [], timeout)
    assert ready, "no socket got the query"
    sock = ready[0]
    return socks.index(sock), sock.recv(4096)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_name_lands_on_one_socket(workers: int) -> None:
    port = free_port()
    socks = group(port, workers)
    try:
        assert steer(socks[0], workers)
        landed: dict[str, set[int]] = {}
        for i, name in enumerate(NAMES * 3):
            spelled = name.upper() if i % 2 else name  # case does not move a name
            query = dns.message.make_query(spelled, "A" if i % 3 else "AAAA", use_edns=i % 4 == 0).to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:  # a new source port each time
                client.sendto(query, ("127.0.0.1", port))
                index, got = receiver(socks)
            assert got == query
            assert index == worker_of(dns.message.make_query(name, "A").to_wire(), workers)
            landed.setdefault(name, set()).add(index)
        assert all(len(v) == 1 for v in landed.values()), landed
        assert len(set().union(*landed.values())) == workers, "the names spread over every socket"
    finally:
        for s in socks:
            s.close()


def test_a_short_or_odd_datagram_still_lands_somewhere() -> None:
    port = free_port()
    socks = group(port, 3)
    try:
        assert steer(socks[0], 3)
        for payload in (b"", b"\x00", b"\x12\x34" + b"\xff" * 11, b"\x00" * 12 + b"\x3f" + b"A" * 200):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(payload, ("127.0.0.1", port))
                assert receiver(socks)[1] == payload
    finally:
        for s in socks:
            s.close()
