"""A small process that forks the workers, itself forked from dnsd before any data or thread exists.

Forked, not spawned: the zygote and every worker it forks share the interpreter and the
modules dnsd had imported at that moment with the main process, page for page, until
one of them writes to a page (the GC is frozen first, so a collection does not). That
makes a worker cost its own few MB instead of a fresh interpreter's ~20 MB, and unlike
multiprocessing's fork server no resource tracker process comes along (~7 MB). The main
process itself never forks once its threads run (a child of a threaded process can
inherit a held lock): a worker that dies is forked again by the zygote.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from .config import Config
from .dataplane import release_heap


class Forked:
    """A worker forked by the zygote (not our child: we learn of its end from its pipe)."""

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.exitcode: int | None = None  # the zygote reaps it: not known here

    def is_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

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
        """A new worker ``number``, and the main process's ends: its reports (a Connection, read by
        a thread) and its changes (a socket written from the event loop, see worker.frame)."""
        reports, reports_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        changes, changes_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.sock, [str(number).encode()], [reports_theirs.fileno(), changes_theirs.fileno()])
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = self.sock.recv(64)
                if not chunk:
                    raise OSError("the worker zygote is gone")
                reply += chunk
        except OSError:
            reports.close()
            changes.close()
            raise
        finally:
            reports_theirs.close()
            changes_theirs.close()
        return Forked(int(reply), f"dnsd-worker-{number}"), Connection(reports.detach()), changes

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
        # the zygote and in every worker's image: ~0.7 MB of PSS in all with 4 workers.
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
                _run_worker(config, directory, fds, int(message), tcp_counts)
            for fd in fds:
                os.close(fd)
            sock.sendall(f"{pid}\n".encode())
    except BaseException:  # never unwind into the main process's code: this is another process
        code = 1
    os._exit(code)


def _run_worker(config: Config, directory: str, fds: list[int], number: int, tcp_counts: Any) -> Any:
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        from .worker import main

        main(config, directory, Connection(fds[0]), socket.socket(fileno=fds[1]), number, tcp_counts)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)
