"""Cluster names during a flood of external names (issue 7): a table hit is not kept waiting behind
forwarding work, and the forwards set aside for it are all answered in the end.

The upstream is a plain UDP socket the test reads itself. The cluster-name query is sent from that
same socket, so dnsd's forwards and its reply to the cluster name land in one receive queue in the
order dnsd sent them: the order is read there, not guessed from clocks.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time
from collections.abc import Callable

import dns.message
import pytest

from dnsd.net.udp import UdpListener
from tests.helpers import Dnsd

CLUSTER = "web.default.svc.cluster.local"
MISSES = 4 * UdpListener.BATCH  # unique external names, all waiting in dnsd's socket at once


def query(name: str, qid: int) -> bytes:
    msg = dns.message.make_query(name, "A", use_edns=0)
    msg.id = qid
    return msg.to_wire()


def answer(data: bytes) -> bytes:
    """The upstream's reply to a forward: the query with QR and RA set (NOERROR, no records)."""
    return data[:2] + bytes((data[2] | 0x80, data[3] | 0x80)) + data[4:]


def question(data: bytes) -> str:
    return str(dns.message.from_wire(data).question[0].name)


@pytest.mark.parametrize("shed_after", ["0", "2"], ids=["shed-off", "shed"])
def test_cluster_name_is_answered_before_the_misses_queued_ahead_of_it(start_dnsd: Callable[..., Dnsd],
                                                                       shed_after: str) -> None:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    server = start_dnsd("--upstream", f"127.0.0.1:{upstream.getsockname()[1]}", "--shed-after", shed_after,
                        "--upstream-timeout", "4", "--forward-timeout", "8")
    flood.connect(("127.0.0.1", server.port))
    try:
        time.sleep(1.0)  # the start-up loop probes are sent (they are ignored below)
        # Asked once, the cluster name's reply is in the table (what a name in use is): a table hit.
        upstream.sendto(query(CLUSTER, 1), ("127.0.0.1", server.port))
        upstream.settimeout(5)
        while upstream.recv(4096)[:2] != (1).to_bytes(2, "big"):
            pass
        os.kill(server.proc.pid, signal.SIGSTOP)  # everything below waits in dnsd's socket together
        try:
            for i in range(MISSES):
                flood.send(query(f"m{i}.flood.example", i))
            upstream.sendto(query(CLUSTER, 0xBEEF), ("127.0.0.1", server.port))
            time.sleep(0.2)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)

        # What reaches the upstream socket, in dnsd's order, until the cluster name's reply.
        upstream.settimeout(10)
        forwarded: list[tuple[bytes, tuple[str, int]]] = []
        cluster_reply = None
        while cluster_reply is None:
            data, addr = upstream.recvfrom(4096)
            if data[2] & 0x80:
                if data[:2] == (0xBEEF).to_bytes(2, "big"):
                    cluster_reply = dns.message.from_wire(data)
            elif question(data).endswith(".flood.example."):
                forwarded.append((data, addr))
        assert [str(r) for r in cluster_reply.answer] and cluster_reply.rcode() == 0, cluster_reply
        # Before: dnsd answered its batches of BATCH misses in turn, so a cluster name queued behind
        # 4 batches was answered after 3 of them were forwarded. Now it is read between two misses.
        assert len(forwarded) < UdpListener.BATCH, f"{len(forwarded)} forwards went out before the cluster name"

        # Every miss is answered once, forwarded (NOERROR) or shed (REFUSED): none is lost on the way.
        replies: dict[int, list[int]] = collections.defaultdict(list)
        flood.settimeout(0.05)
        deadline = time.monotonic() + 30
        while sum(map(len, replies.values())) < MISSES and time.monotonic() < deadline:
            for data, addr in forwarded:
                upstream.sendto(answer(data), addr)
            forwarded.clear()
            upstream.setblocking(False)
            try:
                while True:
                    data, addr = upstream.recvfrom(4096)
                    if not data[2] & 0x80 and question(data).endswith(".flood.example."):
                        forwarded.append((data, addr))
            except BlockingIOError:
                pass
            try:
                while True:
                    reply = flood.recv(4096)
                    replies[int.from_bytes(reply[:2], "big")].append(reply[3] & 0x0F)
            except (TimeoutError, BlockingIOError):
                pass
        assert sorted(replies) == list(range(MISSES)), f"unanswered: {sorted(set(range(MISSES)) - set(replies))}"
        assert all(len(codes) == 1 for codes in replies.values()), "one reply per query"
        rcodes = collections.Counter(codes[0] for codes in replies.values())
        assert set(rcodes) <= {0, 5} and rcodes[0] > 0, rcodes
        if shed_after == "0":
            assert rcodes == {0: MISSES}, "without shedding every miss is forwarded"
    finally:
        upstream.close()
        flood.close()
