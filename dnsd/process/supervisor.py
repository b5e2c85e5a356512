"""The workers of ``--workers N``: the index file they share, their processes (the first forked
by the zygote), the changes sent to them, and a new one for each that dies (spawn.py).

The main process owns one WorkerPool (main.py); it writes the index file and answers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any, cast

from dnsd.config import Config
from dnsd.observe.metrics import Snapshot
from dnsd.process.ipc import CLEAR, Barrier, frame
from dnsd.process.spawn import Spawned, spawn
from dnsd.process.zygote import Forked, Zygote
from dnsd.zone.lmdb_index import SharedIndexWriter

log = logging.getLogger(__name__)

def shared_directory(parent: str | None) -> str:
    """A new directory for the index file, named after this process; first, those of dead ones.

    A killed dnsd cannot remove its own, and in a pod the volume outlives a restarted container
    (where dnsd is often PID 1 again): left alone, every crash would keep a file of tens of MB.
    """
    parent = parent or tempfile.gettempdir()
    for path in glob.glob(os.path.join(parent, "dnsd-*-*")):
        try:
            pid = int(os.path.basename(path).split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not _alive(pid):
            log.info("removing %s, left by a dnsd that is gone", path)
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"dnsd-{os.getpid()}-", dir=parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class _Worker:
    """One lean worker: its process, its reports (read by the monitor thread) and its changes.

    Changes are written from the event loop to a non-blocking socket: no thread hop (a thread
    would wait up to the GIL's 5 ms switch interval behind a busy loop), and a worker that reads
    slowly only makes its own buffer grow, never blocks the loop.
    """

    def __init__(self, process: Forked | Spawned, conn: Connection, changes: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.process = process
        self.conn = conn
        self.changes = changes
        self.loop = loop
        self.pending = bytearray()
        changes.setblocking(False)

    def send(self, message: Any) -> None:
        """On the loop thread."""
        if self.changes.fileno() < 0:
            return  # closed: the worker is gone
        waiting = bool(self.pending)
        self.pending += frame(message)
        if not waiting:
            self._flush()

    def _flush(self) -> None:
        try:
            sent = self.changes.send(self.pending)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.pending.clear()  # the worker is gone: the monitor replaces it
            sent = 0
        del self.pending[:sent]
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            if self.pending:
                self.loop.add_writer(self.changes.fileno(), self._flush)
            else:
                self.loop.remove_writer(self.changes.fileno())

    def close(self) -> None:
        """On the loop thread."""
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(self.changes.fileno())
        self.changes.close()
        self.conn.close()


class WorkerPool:
    """The extra workers (``--workers`` minus the main process), and the shared index they read.

    The main process writes the index file (zone/lmdb_index.py) and answers queries itself;
    each worker reads the file and keeps its own hot replies (steering.py sends each name
    to one worker). After each change the workers get the names it touched and the
    serial: never the data itself. The first workers are forked by the zygote (zygote.py),
    which then exits. A worker that dies is started fresh and reads the current data from the file.
    """

    CLEAR_OVER = 2000  # more touched names than this: workers drop every reply instead of a long list

    def __init__(self, config: Config, zygote: Zygote, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.zygote: Zygote | None = zygote
        self.directory = zygote.directory
        self.tcp_counts = zygote.tcp_counts
        self.index = SharedIndexWriter(self.directory, config.index_zones)
        self.workers: dict[int, _Worker] = {}
        self.stats: dict[int, Snapshot] = {}  # each worker's latest, written by the monitor thread
        self.on_top: Callable[[dict[str, Any]], None] | None = None  # a worker's top talkers since its last report
        self._inodes: dict[int, set[int]] = {}  # each worker's UDP sockets, as it reported them ready
        self.lock = threading.Lock()  # publish (loop thread) against respawn (monitor thread)
        self.last: tuple[Any, int, bool] = (CLEAR, 0, False)
        self.closing = threading.Event()
        self.monitor = threading.Thread(target=self._monitor, name="dnsd-workers", daemon=True)
        # settled(): per barrier token, the workers yet to confirm it (read and written on the loop).
        self._barriers: dict[int, tuple[set[int], asyncio.Future[None]]] = {}
        self._token = 0

    def publish(self, touched: set[str], serial: int, synced: bool) -> None:
        """On the loop thread, after a change (and the serial) is committed to the file: tell every
        worker what to drop."""
        names = CLEAR if len(touched) > self.CLEAR_OVER else touched
        with self.lock:
            self.last = (CLEAR, serial, synced)
            workers = list(self.workers.values())
        for w in workers:
            w.send((names, serial, synced))

    async def settled(self) -> None:
        """On the loop thread: returns once every worker has read every change published before the call
        (each answers a Barrier sent after them; one that dies meanwhile is not waited for)."""
        with self.lock:
            numbers = set(self.workers)
            workers = list(self.workers.values())
        if not numbers:
            return
        self._token += 1
        token = self._token
        future: asyncio.Future[None] = self.loop.create_future()
        self._barriers[token] = (numbers, future)
        for w in workers:
            w.send(Barrier(token))
        try:
            await future
        finally:
            del self._barriers[token]

    def _confirmed(self, number: int, token: int | None) -> None:
        """On the loop thread: worker ``number`` read every change before barrier ``token`` (None: it is gone)."""
        for key, (waiting, future) in self._barriers.items():
            if token in (None, key):
                waiting.discard(number)
                if not waiting and not future.done():
                    future.set_result(None)

    def synced(self) -> bool:
        """Every worker reports (once a second) that it answers from synced data."""
        return all(n in self.stats and self.stats[n]["synced"] for n in self.workers)

    def start(self) -> str | None:
        for number in range(1, self.config.workers):
            try:
                error = self._await_ready(number, self._spawn(number))
            except OSError as exc:
                error = f"cannot be forked: {exc}"
            if error:
                return f"worker {number}: {error}"
        self._close_zygote()  # its workers run: from now on it would only hold pages they all copied
        self.monitor.start()
        return None

    def _close_zygote(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote:
            zygote.close()

    def _spawn(self, number: int) -> _Worker:
        counts = self.tcp_counts
        with counts.get_lock():
            counts[number] = 0  # a restarted worker's connections died with it
        with self.lock:
            # Anything committed from now on reaches it as a message; what came before, it reads from the file.
            process, conn, changes = (self.zygote.fork(number) if self.zygote
                                      else spawn(self.config, self.directory, counts, number))
            w = self.workers[number] = _Worker(process, conn, changes, self.loop)
        return w

    def _await_ready(self, number: int, w: _Worker, timeout: float = 60.0) -> str | None:
        if not w.conn.poll(timeout):
            return "did not start in time"
        try:
            kind, detail = w.conn.recv()
        except (EOFError, OSError):
            return f"exited at start (code {w.process.exitcode})"
        if kind == "error":
            return str(detail)
        self._inodes[number] = set(detail[1])
        # A change committed between its start and its first query may be in its table already:
        # "drop everything", queued on the loop after any change published meanwhile.
        self.loop.call_soon_threadsafe(lambda: w.send(self.last))
        return None

    def _monitor(self) -> None:
        while not self.closing.is_set():
            conns = {w.conn: number for number, w in self.workers.items()}
            for ready in wait_connections(list(conns), timeout=0.5):
                conn = cast(Connection, ready)
                number = conns[conn]
                try:
                    kind, detail = conn.recv()
                except (EOFError, OSError):
                    if not self.closing.is_set():
                        self._respawn(number)
                    continue
                if kind == "stats":
                    self.stats[number] = detail
                elif kind == "top" and self.on_top is not None:
                    self.on_top(detail)
                elif kind == "read":
                    self.loop.call_soon_threadsafe(self._confirmed, number, detail)

    def _respawn(self, number: int) -> None:
        with self.lock:
            old = self.workers.pop(number)
        self.stats.pop(number, None)
        old.process.join(timeout=1)
        self.loop.call_soon_threadsafe(old.close)
        self.loop.call_soon_threadsafe(self._confirmed, number, None)  # a fresh one reads the file
        log.error("worker %d exited; starting a new one", number)
        time.sleep(0.5)  # a worker that dies at once must not spin the main process
        try:
            error = self._await_ready(number, self._spawn(number))
        except OSError as exc:  # the others and the main process go on answering
            error = f"cannot be started again ({exc}); serving with one worker less"
        if error:
            log.error("worker %d: %s", number, error)

    def inodes(self) -> set[int]:
        """The UDP sockets of the workers running (handover.py tells ours from another dnsd's)."""
        return set().union(*(self._inodes.get(n, set()) for n in list(self.workers)))

    def drain(self) -> None:
        """SIGTERM every worker: each leaves the port without losing a query (Serving.drain), and exits."""
        self.closing.set()  # no respawn from now on
        for w in list(self.workers.values()):
            if w.process.is_alive():
                w.process.terminate()

    def alive(self) -> bool:
        return any(w.process.is_alive() for w in list(self.workers.values()))

    def close(self, now: bool = True) -> None:
        """Stop the workers (``now``: SIGUSR1, each closes at once; else SIGTERM, each drains) and wait."""
        self.closing.set()
        workers = list(self.workers.values())
        for w in workers:
            if w.process.is_alive():
                w.process.stop(now)
        for w in workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
            w.close()
        self._close_zygote()
        self.index.close()
        shutil.rmtree(self.directory, ignore_errors=True)
