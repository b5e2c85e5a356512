"""recvmmsg(2) and sendmmsg(2) for one UDP socket: a batch of datagrams per system call.

Python's socket module has neither, and no maintained package offers them (PyPI's pysockmmsg is an
unmaintained 0.0.2), so they are called through ctypes on preallocated arrays: one receive buffer
per slot, the peers' addresses kept in their raw sockaddr form (a reply goes back to the same bytes:
no (host, port) tuple is built unless something asks for it), and one send buffer per slot into
which replies are copied. On a system without them (``available()`` False) the listener keeps its
recvfrom/sendto loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import sys
from typing import Any

MSG_DONTWAIT = 0x40
SLOT = 4096  # bytes of a send slot: the largest UDP reply (--udp-max-payload caps at 4096)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class Batch:
    """Receive up to ``size`` datagrams at once, answer them by slot, send the answers at once."""

    def __init__(self, sock: socket.socket, size: int, read: int) -> None:
        assert _LIBC is not None
        self.fd = sock.fileno()
        self.family = sock.family
        self.size, self.read = size, read
        self.namelen = 16 if sock.family == socket.AF_INET else 28  # sockaddr_in / sockaddr_in6: never changes
        self._recv, self._send = _LIBC.recvmmsg, _LIBC.sendmmsg
        self.rbuf = ctypes.create_string_buffer(size * read)
        self.names = ctypes.create_string_buffer(size * 28)
        self.sbuf = ctypes.create_string_buffer(size * SLOT)
        self.snames = ctypes.create_string_buffer(size * 28)
        self.riov, self.siov = (_Iovec * size)(), (_Iovec * size)()
        self.rmsgs, self.smsgs = (_Mmsghdr * size)(), (_Mmsghdr * size)()
        rbase, sbase = ctypes.addressof(self.rbuf), ctypes.addressof(self.sbuf)
        nbase, snbase = ctypes.addressof(self.names), ctypes.addressof(self.snames)
        for i in range(size):
            self.riov[i].iov_base, self.riov[i].iov_len = rbase + i * read, read
            self.siov[i].iov_base, self.siov[i].iov_len = sbase + i * SLOT, 0
            for msgs, iov, names in ((self.rmsgs, self.riov, nbase), (self.smsgs, self.siov, snbase)):
                hdr = msgs[i].msg_hdr
                hdr.msg_name, hdr.msg_namelen = names + i * 28, self.namelen
                hdr.msg_iov, hdr.msg_iovlen = ctypes.addressof(iov[i]), 1
        # Views for the per-datagram work: slicing memory is ~5x cheaper than ctypes attribute access.
        self.rview, self.sview = memoryview(self.rbuf).cast("B"), memoryview(self.sbuf).cast("B")
        self.nview, self.snview = memoryview(self.names).cast("B"), memoryview(self.snames).cast("B")
        stride = ctypes.sizeof(_Mmsghdr) // 4
        self._lengths = memoryview(self.rmsgs).cast("B").cast("I")[ctypes.sizeof(_Msghdr) // 4 :: stride]
        self._send_lengths = memoryview(self.siov).cast("B").cast("Q")[1::2]  # each iovec's iov_len
        self.count = 0  # replies queued for send()

    def receive(self) -> int:
        """Datagrams read into slots 0..n-1 (0: none waiting); OSError on a socket error."""
        got = self._recv(self.fd, self.rmsgs, self.size, MSG_DONTWAIT, None)
        if got < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(code, errno.errorcode.get(code, "recvmmsg"))
        return int(got)

    def data(self, i: int) -> bytes:
        start = i * self.read
        return self.rview[start : start + self._lengths[i]].tobytes()

    def address(self, i: int) -> tuple[str, int]:
        """The peer of slot ``i`` as (host, port): built only when something needs it (ACL, logs, a miss)."""
        name = self.nview[i * 28 : i * 28 + self.namelen]
        port = (name[2] << 8) | name[3]
        if self.namelen == 16:
            return socket.inet_ntop(socket.AF_INET, name[4:8]), port
        return socket.inet_ntop(socket.AF_INET6, name[8:24]), port

    def reply(self, i: int, data: bytes) -> None:
        """Queue ``data`` for the peer of slot ``i`` (sent by flush())."""
        j = self.count
        self.count = j + 1
        start = j * SLOT
        self.sview[start : start + len(data)] = data
        self._send_lengths[j] = len(data)
        self.snview[j * 28 : j * 28 + self.namelen] = self.nview[i * 28 : i * 28 + self.namelen]

    def flush(self) -> None:
        """Send every queued reply; what the send buffer cannot take is lost, as sendto would lose it."""
        count, sent = self.count, 0
        self.count = 0
        while sent < count:
            done = self._send(self.fd, ctypes.byref(self.smsgs, sent * ctypes.sizeof(_Mmsghdr)), count - sent, 0)
            if done <= 0:
                return  # EAGAIN (buffer full) or an error for this peer: the rest of the batch is dropped
            sent += done


__all__ = ["Batch", "available"]
