"""recvmmsg/sendmmsg through ctypes (net/mmsg.py) on real loopback sockets, IPv4 and IPv6: datagrams and
their peers read in one call, replies sent back in one call to the right peers; and the listener's
plain recvfrom/sendto loop, kept for systems without them, answering alike."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from dnsd.net import mmsg
from dnsd.net.udp import UdpListener
from dnsd.observe.metrics import Listener

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="no recvmmsg/sendmmsg here")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_batch_is_read_and_answered_to_each_peer(family: int) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_DGRAM) as server:
        server.bind((host, 0))
        server.setblocking(False)
        batch = mmsg.Batch(server, 8, 513)
        assert batch.receive() == []  # nothing waiting: no error, no block
        clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
        for c in clients:
            c.bind((host, 0))
        try:
            for i, client in enumerate(clients * 4):  # 12 datagrams: more than a batch
                client.sendto(b"query %d" % i, server.getsockname()[:2])
            datagrams = batch.receive()
            assert datagrams == [b"query %d" % i for i in range(8)]
            assert [batch.address(i) for i in range(8)] == [c.getsockname()[:2] for c in clients * 3][:8]
            replies: list[bytes | None] = [b"reply to " + data + b"x" * 1000 * (i == 2)  # one big reply
                                           for i, data in enumerate(datagrams)]
            replies[1], replies[4] = None, b""  # one left to the caller, one dropped
            assert batch.reply_all(replies) == [1]
            batch.flush()
            rest = batch.receive()
            assert rest == [b"query %d" % i for i in range(8, 12)]
            # Every slot answered: each reply goes to its own slot's peer again, though the batch before
            # sent some to another slot's (the ones after the skipped slots).
            assert batch.reply_all([b"reply to " + data for data in rest]) == []
            batch.flush()
            for c in clients:
                c.settimeout(1)
            got = {c.getsockname()[:2]: sorted(c.recv(4096) for _ in range([4, 2, 4][k])) for k, c in enumerate(clients)}
            assert got[clients[0].getsockname()[:2]] == [b"reply to query 0", b"reply to query 3", b"reply to query 6",
                                                          b"reply to query 9"]
            assert got[clients[1].getsockname()[:2]] == [b"reply to query 10", b"reply to query 7"]
            clients[1].settimeout(0.2)
            with pytest.raises(TimeoutError):
                clients[1].recv(4096)  # nothing for the slot left (1) or dropped (4), not even an empty datagram
            assert got[clients[2].getsockname()[:2]] == [b"reply to query 11", b"reply to query 2" + b"x" * 1000,
                                                          b"reply to query 5", b"reply to query 8"]
        finally:
            for c in clients:
                c.close()


def test_a_lone_datagram_is_read_to_its_own_length() -> None:
    """A batch of one (the common case below saturation) is read exactly, not with what a longer
    datagram left in its slot before."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        batch = mmsg.Batch(server, 8, 513)
        for data in (b"a longer query first", b"short", b"", b"x" * 513):
            client.sendto(data, server.getsockname())
            assert batch.receive() == [data]
            assert batch.address(0) == client.getsockname()


class _Table:
    """A Responder whose table answers every query with its reverse."""

    forward = None

    def fast(self, query: bytes, limit: int, counts: dict) -> bytes | None:
        return query[::-1]

    def fast_many(self, queries: list[bytes], counts: dict) -> list[bytes | None]:
        return [query[::-1] for query in queries]


def _listener(server: socket.socket, batched: bool, **options: Any) -> UdpListener:
    """A listener on ``server`` (bound to 127.0.0.1 here) answering from _Table; without batches when not ``batched``,
    as on a system without recvmmsg."""
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    listener = UdpListener(server, _Table(), Listener("udp", "1", "dns://test"), **options)  # type: ignore[arg-type]
    if not batched:
        listener.batch = None
    return listener


@pytest.mark.parametrize("batched", [True, False])
def test_the_listener_answers_alike_with_and_without_mmsg(batched: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        listener = _listener(server, batched)
        assert (listener.batch is not None) is batched
        for i in range(5):
            client.sendto(b"abc%d" % i, server.getsockname())
        listener.readable()
        client.settimeout(1)
        assert sorted(client.recv(100) for _ in range(5)) == sorted(b"%dcba" % i for i in range(5))
        assert listener.listener.duration.counts and sum(listener.listener.duration.counts) == 5


@pytest.mark.parametrize("batched", [True, False])
def test_a_client_not_allowed_gets_refused_or_nothing(batched: bool) -> None:
    import dnslib

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        listener = _listener(server, batched, allowed=lambda host: False)
        query = dnslib.DNSRecord.question("web.default.svc.cluster.local", "A")
        response = dnslib.DNSRecord.question("web.default.svc.cluster.local", "A")
        response.header.qr = 1  # a response is never answered, not even with REFUSED
        client.sendto(response.pack(), server.getsockname())
        client.sendto(query.pack(), server.getsockname())
        listener.readable()
        client.settimeout(1)
        reply = dnslib.DNSRecord.parse(client.recv(4096))
        assert reply.header.id == query.header.id and reply.header.rcode == dnslib.RCODE.REFUSED
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(4096)
