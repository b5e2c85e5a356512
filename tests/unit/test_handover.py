"""The pieces of a handover on real sockets: sealing a UDP listener in a SO_REUSEPORT group, taking
the steering program off a group, and finding another process's sockets on a port in /proc."""

from __future__ import annotations

import argparse
import socket
import struct

import pytest

from dnsd import argtypes
from dnsd.net.reuseport import bound, inode, others, proc_address, seal
from dnsd.process.steering import steer, unsteer
from tests.helpers import free_port


def group(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.settimeout(0)
        socks.append(s)
    return socks


def received(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(512)
        except BlockingIOError:
            return count
        count += 1


def send_from_many(port: int, count: int) -> None:
    for _ in range(count):  # a new source port each: the kernel's hash spreads them
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"q", ("127.0.0.1", port))


def test_a_sealed_socket_gets_nothing_new_and_keeps_what_it_holds() -> None:
    port = free_port()
    old, new = group(port, 2)
    with old, new:
        send_from_many(port, 50)
        held = received(old)
        assert held and received(new), "spread over both"
        send_from_many(port, 50)
        seal(old)
        assert received(old) > 0, "what was queued before the seal is still read"
        received(new)
        send_from_many(port, 100)
        assert received(old) == 0
        assert received(new) == 100


def test_unsteer_hands_the_group_back_to_the_kernel_hash() -> None:
    port = free_port()
    old, new = group(port, 2)
    with old, new:
        assert steer(old, 1)  # every datagram to the group's first socket
        send_from_many(port, 40)
        assert (received(old), received(new)) == (40, 0)
        unsteer(old)
        seal(old)  # a program would still choose it; the hash skips a connected socket
        send_from_many(port, 40)
        assert (received(old), received(new)) == (0, 40)
        unsteer(new)  # no program left: nothing to do


def test_others_on_the_port() -> None:
    port = free_port()
    a, b = group(port, 2)
    with a, b:
        assert others(a, set()) == {inode(b)}
        assert others(a, {inode(b)}) == set()


def test_proc_address_and_bound() -> None:
    little = struct.pack("=I", 1) == b"\x01\x00\x00\x00"
    assert proc_address("127.0.0.1", 53) == ("0100007F:0035" if little else "7F000001:0035")
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             f"  1: {proc_address('127.0.0.1', 53)} 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 111 2\n"
             f"  2: {proc_address('127.0.0.2', 53)} 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 222 2\n"
             f"  3: {proc_address('127.0.0.1', 53)} 0100007F:0035 01 00000000:00000000 00:00000000 00000000 0 0 333 2\n")
    assert bound(table, "127.0.0.1", 53) == {111, 333}
    assert bound(table, "::1", 53) == set()
    assert len(proc_address("::1", 53)) == 32 + 5


@pytest.mark.parametrize(("value", "ok"), [("0", 0.0), ("5", 5.0), ("2.5", 2.5), ("-1", None), ("nan", None),
                                           ("x", None), ("3601", None)])
def test_lameduck_values(value: str, ok: float | None) -> None:
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            argtypes.duration(value)
    else:
        assert argtypes.duration(value) == ok
