"""What the main process and its workers share: the socket pairs between them, the messages on them,
and the TCP connection counts every serving process maps."""

from __future__ import annotations

import fcntl
import mmap
import os
import pickle
import socket
import struct
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, TypeVar

_P = TypeVar("_P")
CLEAR = None  # in place of the names: every rendered reply may be stale (a relist touched too many to list)


class Barrier(NamedTuple):
    """Sent to a worker after changes; it reports ``("read", token)`` once it has read every message before."""

    token: int


def worker_ends(start: Callable[[tuple[int, int]], _P]) -> tuple[_P, Connection, socket.socket]:
    """Two socket pairs for a new worker: ``start`` hands it its ends (reports, changes) and returns
    its process; ours are its reports (a Connection, read by a thread) and its changes (a socket
    written from the event loop, see worker.frame)."""
    reports, reports_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    changes, changes_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = start((reports_theirs.fileno(), changes_theirs.fileno()))
    except OSError:
        reports.close()
        changes.close()
        raise
    finally:
        reports_theirs.close()
        changes_theirs.close()
    return process, Connection(reports.detach()), changes


def frame(message: Any) -> bytes:
    """One message from the main process: a 4-byte length, then the pickle (same program, trusted)."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return struct.pack("!I", len(data)) + data


class Frames:
    """Messages out of the bytes read so far (a read may end anywhere in a message)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        out, buf = [], self.buffer
        while len(buf) >= 4:
            size = struct.unpack_from("!I", buf)[0]
            if len(buf) < 4 + size:
                break
            out.append(pickle.loads(bytes(buf[4 : 4 + size])))
            del buf[: 4 + size]
        return out


class SharedCounts:
    """One TCP connection count per worker, in a small file every serving process maps (a worker
    started fresh for a dead one opens it by its path, one forked shares the mapping), changed
    under an flock of that file."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 4 * size:
                os.ftruncate(fd, 4 * size)
            self._map = mmap.mmap(fd, 4 * size)
        finally:
            os.close(fd)
        self._counts = memoryview(self._map).cast("i")
        self._lock = _FileLock(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedCounts, (self.path, self.size)  # for a fresh worker: the path, not the mapping

    def get_lock(self) -> _FileLock:
        return self._lock

    def __getitem__(self, number: int) -> int:
        return self._counts[number]

    def __setitem__(self, number: int, value: int) -> None:
        self._counts[number] = value

    def __iter__(self) -> Iterator[int]:
        return iter(self._counts)


class _FileLock:
    """An exclusive flock of ``path`` through a descriptor this process opened itself: flock is held
    per open file, so a forked child sharing its parent's would not exclude it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.pid = 0

    def __enter__(self) -> None:
        if self.pid != os.getpid():
            if self.fd >= 0:
                os.close(self.fd)  # the parent's, inherited
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self.pid = os.getpid()
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


__all__ = ["CLEAR", "Barrier", "Frames", "SharedCounts", "frame", "worker_ends"]
