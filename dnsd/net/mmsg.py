"""recvmmsg(2) and sendmmsg(2) for one UDP socket: a batch of datagrams per system call.

Python's socket module has neither, and no maintained package offers them (PyPI's pysockmmsg is an
unmaintained 0.0.2), so they are called through ctypes on preallocated arrays: one receive buffer
per slot, the peers' addresses kept in their raw sockaddr form (a reply goes back to the same bytes:
no (host, port) tuple is built unless something asks for it), and replies sent from where they are.
On a system without them (``available()`` False) the listener keeps its recvfrom/sendto loop.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import socket
import sys
from typing import Any

MSG_DONTWAIT = 0x40


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


def _open(name: str | None) -> Any:
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.recvmmsg, libc.sendmmsg  # noqa: B018 (both must exist)
        return libc
    except (OSError, AttributeError):
        return None


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    # glibc's name first: find_library("c") runs `ldconfig -p` in a subprocess, which every start would wait for.
    return _open("libc.so.6") or _open(ctypes.util.find_library("c"))


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


# Where a bytes object's data starts, from its address (id): sendmmsg reads a reply where it is, with
# no copy into a buffer of ours. CPython's layout; the reply is held until the call returns.
_BYTES_DATA = bytes.__basicsize__ - 1


_MMSGHDR = ctypes.sizeof(_Mmsghdr)


class Batch:
    """Receive up to ``size`` datagrams at once, answer them by slot, send the answers at once."""

    def __init__(self, sock: socket.socket, size: int, read: int) -> None:
        assert _LIBC is not None
        self.fd = sock.fileno()
        self.size, self.read = size, read
        self.namelen = 16 if sock.family == socket.AF_INET else 28  # sockaddr_in / sockaddr_in6: never changes
        # No argtypes: ctypes then converts nothing, a third of a call's cost. So every argument is a C int
        # (fd, counts, flags) or a ready pointer (c_void_p, None), and the calls below must keep it so.
        self._recv, self._send = _LIBC.recvmmsg, _LIBC.sendmmsg
        self.rbuf = ctypes.create_string_buffer(size * read)
        self.names = ctypes.create_string_buffer(size * 28)
        self.riov, self.siov = (_Iovec * size)(), (_Iovec * size)()
        self.rmsgs, self.smsgs = (_Mmsghdr * size)(), (_Mmsghdr * size)()
        rbase, self.nbase = ctypes.addressof(self.rbuf), ctypes.addressof(self.names)
        for i in range(size):
            self.riov[i].iov_base, self.riov[i].iov_len = rbase + i * read, read
            for msgs, iov in ((self.rmsgs, self.riov), (self.smsgs, self.siov)):
                hdr = msgs[i].msg_hdr
                hdr.msg_name, hdr.msg_namelen = self.nbase + i * 28, self.namelen
                hdr.msg_iov, hdr.msg_iovlen = ctypes.addressof(iov[i]), 1
        self._rmsgs_at = ctypes.c_void_p(ctypes.addressof(self.rmsgs))
        self._smsgs_at = ctypes.addressof(self.smsgs)
        self._smsgs_ptr = ctypes.c_void_p(self._smsgs_at)
        # Views for the per-datagram work: indexing memory is ~5x cheaper than ctypes attribute access.
        self.rview = memoryview(self.rbuf).cast("B")
        self._slots = [self.rview[i * read : (i + 1) * read] for i in range(size)]  # one view per slot, sliced per datagram
        self.nview = memoryview(self.names).cast("B")
        stride = ctypes.sizeof(_Mmsghdr) // 8
        self._lengths = memoryview(self.rmsgs).cast("B").cast("I")[ctypes.sizeof(_Msghdr) // 4 :: stride * 2]
        # As C longs ("l", 64 bits on Linux), not "Q": CPython stores a long through a faster path.
        self._send_names = memoryview(self.smsgs).cast("B").cast("l")[::stride]  # each message's msg_name
        self._send_iov = memoryview(self.siov).cast("B").cast("l")  # iov_base, iov_len of each message
        self.replies: list[bytes] = []  # queued for flush(), held until it returns
        self._moved = False  # a message's peer is not its slot's (a reply was skipped): flush() puts them back
        self._own_names = array.array("l", range(self.nbase, self.nbase + size * 28, 28))

    def receive(self) -> list[bytes]:
        """The datagrams waiting, up to ``size``, in slots 0..n-1 (none: an empty list); OSError on a socket error."""
        self.replies.clear()  # never sent to the slots' next peers (flush() clears them too)
        if self._moved:
            self._put_back()
        got = self._recv(self.fd, self._rmsgs_at, self.size, MSG_DONTWAIT, None)
        if got <= 0:
            if got == 0:
                return []
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, errno.errorcode.get(code, "recvmmsg"))
        if got == 1:  # the commonest batch below saturation: no zip, list or comprehension to set up
            return [self._slots[0][: self._lengths[0]].tobytes()]
        return [slot[:n].tobytes() for slot, n in zip(self._slots, self._lengths[:got].tolist(), strict=False)]

    def address(self, i: int) -> tuple[str, int]:
        """The peer of slot ``i`` as (host, port): built only when something needs it (ACL, logs, a miss)."""
        at = i * 28
        name = self.nview[at : at + self.namelen].tobytes()
        if self.namelen == 16:
            return socket.inet_ntop(socket.AF_INET, name[4:8]), (name[2] << 8) | name[3]
        return socket.inet_ntop(socket.AF_INET6, name[8:24]), (name[2] << 8) | name[3]

    def reply_all(self, replies: list[bytes | None]) -> list[int]:
        """Queue ``replies[i]`` for the peer of slot ``i`` (sent by flush()): two pointers set per reply,
        nothing copied. An empty reply is no reply (a dropped query); the slots whose reply is None are
        returned, in order, for the caller to answer."""
        queued, names, iov, nbase = self.replies, self._send_names, self._send_iov, self.nbase
        left: list[int] = []
        j = len(queued)
        k = 2 * j  # message j's iov_base; its iov_len follows
        for i, data in enumerate(replies):
            if not data:
                if data is None:
                    left.append(i)
                continue
            queued.append(data)
            if i != j:  # else the message's peer is already the slot's own (__init__, flush)
                names[j] = nbase + i * 28
                self._moved = True
            iov[k] = id(data) + _BYTES_DATA
            iov[k + 1] = len(data)
            j += 1
            k += 2
        return left

    def flush(self) -> None:
        """Send every queued reply; what the send buffer cannot take is lost, as sendto would lose it."""
        count = len(self.replies)
        if not count:
            return
        sent = self._send(self.fd, self._smsgs_ptr, count, 0)
        while 0 < sent < count:
            done = self._send(self.fd, ctypes.c_void_p(self._smsgs_at + sent * _MMSGHDR), count - sent, 0)
            if done <= 0:
                break  # EAGAIN (buffer full) or an error for this peer: the rest of the batch is dropped
            sent += done
        self.replies.clear()
        if self._moved:
            self._put_back()

    def _put_back(self) -> None:
        """Each message's peer back to its slot's."""
        self._moved = False
        self._send_names[:] = self._own_names


__all__ = ["Batch", "available"]
