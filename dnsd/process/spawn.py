"""A worker started fresh for one that died: the zygote that forked the first ones is gone by then.

The zygote exits once the first workers run (zygote.py): left alive, it would keep its own copy
of every page that all the workers had copied on write. A fresh worker imports what it runs
itself, so it costs more memory than a forked one (docs/operations.md); only a replacement pays
that, while it lives. The main process never forks once its threads run: subprocess starts
this one with fork+exec, which is safe there.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from dnsd.config import Config
from dnsd.process.zygote import run_worker, worker_ends

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where dnsd itself is imported from


class Spawned:
    """A worker started fresh (our own child), with the interface of zygote.Forked."""

    def __init__(self, process: subprocess.Popen[bytes], name: str) -> None:
        self.process = process
        self.pid = process.pid
        self.name = name

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def stop(self, now: bool) -> None:
        """SIGUSR1: close at once; SIGTERM: drain first (worker.py)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGUSR1 if now else signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)


def spawn(config: Config, directory: str, tcp_counts: Any, number: int) -> tuple[Spawned, Connection, socket.socket]:
    """A new worker ``number``, and the main process's ends of its reports and changes (as Zygote.fork)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, path] if path else [_ROOT])}

    def start(fds: tuple[int, int]) -> Spawned:
        process = subprocess.Popen([sys.executable, "-c", "from dnsd.process.spawn import main; main()"],
                                   stdin=subprocess.PIPE, pass_fds=fds, env=env)
        assert process.stdin is not None
        with process.stdin:
            process.stdin.write(pickle.dumps((config, directory, tcp_counts, number, fds)))
        return Spawned(process, f"dnsd-worker-{number}")

    return worker_ends(start)


def main() -> None:
    """The fresh process: what to serve comes on stdin (from spawn, the same program: trusted)."""
    config, directory, tcp_counts, number, fds = pickle.load(sys.stdin.buffer)
    run_worker(config, directory, list(fds), number, tcp_counts)
