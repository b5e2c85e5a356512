"""A small process that forks the first workers, itself forked from dnsd before any data or thread exists.

Forked, not spawned: the zygote and every worker it forks share the interpreter and the
modules dnsd had imported at that moment with the main process, page for page, until
one of them writes to a page (the GC is frozen first, so a collection does not). That
makes a worker cost its own few MB instead of a fresh interpreter's, and unlike
multiprocessing's fork server no resource tracker process comes along.

The zygote exits once those workers run (WorkerPool.start): CPython writes the reference
count of every object it reads, so each worker copies the pages it runs through, and the
zygote would keep its own copy of every page they had all copied.
Its workers are then the main process's children (a child subreaper adopts them). The main
process never forks once its threads run (a child of a threaded process can inherit a held
lock): a worker that dies is started fresh (spawn.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from dnsd.config import Config
from dnsd.process import worker  # before the fork: the workers share its modules' pages (idna, unicodedata)
from dnsd.process.ipc import worker_ends
from dnsd.runtime import release_heap

PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the one its descendants' orphans go to (Linux), not init: the workers
    outlive their zygote, and only dnsd can reap them (as PID 1 of a container it must anyway).
    Where it fails, init adopts them and Forked.is_alive still sees them go."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Forked:
    """A worker forked by the zygote: its child, then ours once the zygote is gone."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        if self.exitcode is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # still the zygote's, which reaps it at once
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            return True
        if pid:
            self.exitcode = os.waitstatus_to_exitcode(status)
            return False
        return True

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def stop(self, now: bool) -> None:
        """SIGUSR1: close at once; SIGTERM: drain first (worker.py)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1 if now else signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)


class Zygote:
    """Start with ``Zygote(...)`` while dnsd is still one thread; then ``fork(number)``.

    ``tcp_counts``: the shared per-worker TCP connection counts (listeners.Slots), inherited.
    """

    def __init__(self, config: Config, directory: str, tcp_counts: Any) -> None:
        adopt_orphans()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the zygote
            ours.close()
            _serve(theirs, config, directory, tcp_counts)  # never returns
        theirs.close()
        self.pid = pid
        self.sock = ours
        self.directory = directory
        self.tcp_counts = tcp_counts

    def fork(self, number: int) -> tuple[Forked, Connection, socket.socket]:
        """A new worker ``number``, and the main process's ends of its reports and changes."""

        def ask(fds: tuple[int, int]) -> Forked:
            socket.send_fds(self.sock, [str(number).encode()], list(fds))
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = self.sock.recv(64)
                if not chunk:
                    raise OSError("the worker zygote is gone")
                reply += chunk
            return Forked(int(reply), f"dnsd-worker-{number}")

        return worker_ends(ask)

    def close(self) -> None:
        self.sock.close()  # the zygote exits when it reads the end of its socket
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, config: Config, directory: str, tcp_counts: Any) -> None:
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel at once
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the main process re-reads the files (a HUP to the group too)
        # What the main process had freed but kept (free lists, glibc's free chunks) would stay in
        # the zygote and in every worker's image.
        gc.collect()
        gc.freeze()
        release_heap()
        while True:
            message, fds, _, _ = socket.recv_fds(sock, 64, 2)
            if not message:
                break  # the main process is gone
            pid = os.fork()
            if pid == 0:
                sock.close()
                run_worker(config, directory, fds, int(message), tcp_counts)
            for fd in fds:
                os.close(fd)
            sock.sendall(f"{pid}\n".encode())
    except BaseException:  # never unwind into the main process's code: this is another process
        code = 1
    os._exit(code)


def run_worker(config: Config, directory: str, fds: list[int], number: int, tcp_counts: Any) -> Any:
    """In the worker's own process (forked or fresh): serve until told to stop, then exit."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        worker.main(config, directory, Connection(fds[0]), socket.socket(fileno=fds[1]), number, tcp_counts)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)
