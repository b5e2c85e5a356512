"""Sharing a port with another dnsd (a handover), and leaving it without losing a datagram.

Every listener sets SO_REUSEPORT, so a new dnsd of the same user can bind the address and port an
old one still serves; the kernel spreads new datagrams and connections over both. To leave, the
old one must first stop being chosen, then read what its sockets already hold: a closed UDP
socket loses its queue. ``seal`` does that for UDP: a connected socket is skipped when the
kernel picks a socket of the group by hash (and a wildcard-bound one leaves the group), while
the datagrams already queued stay readable. ``bound`` reads /proc to tell whether any other
socket shares a port (the steering program may be attached only when none does).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def seal(sock: socket.socket) -> None:
    """Connect a UDP listener to its own address and port: no client sends from there, so no new
    datagram is delivered to it, and what it holds can still be read (and answered with sendto)."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = LOOPBACK[sock.family]
    with contextlib.suppress(OSError):  # already closed, or no route: closing is all that is left
        sock.connect((host, port))


def proc_address(address: str, port: int) -> str:
    """``address:port`` as /proc/net/udp[6] prints a local address: each 32-bit word in the
    machine's byte order, in hex, then the port in hex."""
    packed = ipaddress.ip_address(address).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def bound(table: str, address: str, port: int) -> set[int]:
    """The inodes of the sockets in a /proc/net/udp[6] ``table`` whose local address is ``address:port``."""
    local = proc_address(address, port)
    inodes = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == local:
            inodes.add(int(fields[9]))
    return inodes


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def others(sock: socket.socket, ours: set[int]) -> set[int]:
    """The UDP sockets bound to ``sock``'s address and port that are not ``ours`` (another process's);
    empty where /proc cannot be read."""
    host, port = sock.getsockname()[:2]
    path = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(path) as f:
            table = f.read()
    except OSError:
        return set()
    return bound(table, host, port) - ours - {inode(sock)}


__all__ = ["bound", "inode", "others", "proc_address", "seal"]
