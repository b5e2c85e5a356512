"""Serving: the process model, lifecycle and signals (the listeners are in listeners.py).

The main process runs the sources, the store, the index and the HTTP endpoint, and
answers queries itself. With ``--workers N`` its index is a memory-mapped file
(shared_index.py) and N-1 lean worker processes (worker.py) answer from that same
file on the shared port (SO_REUSEPORT): N workers cost one copy of the cluster, plus
each worker's own hot replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import glob
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import TYPE_CHECKING, Any

from .config import Config
from .dataplane import Dataplane, from_config
from .listeners import DnsServer, Slots
from .metrics import PROGRAMMING_BUCKETS, Histogram, Totals, snapshot, totals
from .records import REVERSE_ZONES
from .shared_index import SharedIndexWriter
from .steering import steer
from .store import Op
from .worker import CLEAR, frame
from .zygote import Forked, Zygote

if TYPE_CHECKING:
    from .http import HttpServer

log = logging.getLogger("dnsd.server")


class Sources:
    """Starts the configured sources, feeding ``emit``; stops them."""

    def __init__(self, config: Config, emit: Callable[[list[Op]], None]) -> None:
        from .sources.manifests import ManifestSource

        paths, use_api = config.sources()
        self.manifests = ManifestSource(paths, emit, config.reload_debounce_ms, config.endpoint_pod_names) if paths else None
        self.kubernetes = None
        if use_api:
            from .sources.kubernetes import KubernetesSource

            self.kubernetes = KubernetesSource(
                emit, kubeconfig=config.kubeconfig, namespaces=config.namespaces,
                label_selector=config.label_selector, endpoints_api=config.endpoints_api,
                watch_timeout=config.kube_watch_timeout, read_timeout=config.kube_read_timeout,
                warn_every=config.kube_warn_interval, backoff=(0.8, config.kube_max_backoff),
                pod_names=config.endpoint_pod_names,
            )

    def start(self) -> None:
        if self.manifests:
            self.manifests.load()
            self.manifests.start()
        if self.kubernetes:
            self.kubernetes.start()

    def reload(self) -> None:
        """SIGHUP: re-read every manifest file now (the API sources are watches: nothing to re-read)."""
        if self.manifests:
            log.info("SIGHUP: re-reading the manifest files")
            self.manifests.reload()
        else:
            log.info("SIGHUP: no manifest files to re-read; nothing to do")

    def stop(self) -> None:
        if self.manifests:
            self.manifests.stop()
        if self.kubernetes:
            self.kubernetes.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        if not self.kubernetes:
            return {}
        return {o: {"synced": s.synced, "healthy": s.healthy, "last_event": s.last_event,
                    "errors": dict(s.errors_by_reason)}
                for o, s in self.kubernetes.status().items()}


def _forwarder(config: Config, dataplane: Dataplane) -> Any:
    """The process's forwarder and cache (each worker has its own), or None without upstreams."""
    if not config.upstreams and not config.stub_domains:
        return None
    from .upstream.forwarder import Forwarder

    forwarder = Forwarder(config)
    dataplane.responder.forward = forwarder
    return forwarder


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _tune_gc() -> None:
    """Collect the young generation less often than every 700 allocations (list parsing allocates
    millions), but not so rarely that one collection pauses queries: 10k objects take ~1-3 ms.
    The data itself is frozen after each sync (Dataplane.apply), so full collections stay small."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


def run(config: Config) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the handler is in place: a HUP must never kill us
    _use_uvloop()  # imported before the zygote: the workers share its pages
    _tune_gc()
    zygote = None
    if config.workers > 1:
        # One TCP connection count per worker in shared memory (the limit holds for the whole server);
        # created before the zygote, so every forked worker inherits it.
        tcp_counts = multiprocessing.get_context("fork").Array("i", config.workers)
        # Now, while dnsd is one thread and holds no data: workers forked from it share these pages.
        zygote = Zygote(config, _shared_directory(config.shared_dir), tcp_counts)
    try:
        return asyncio.run(_serve(config, zygote))
    finally:
        if zygote:
            zygote.close()
            shutil.rmtree(zygote.directory, ignore_errors=True)


def _shared_directory(parent: str | None) -> str:
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


def _stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(config: Config, zygote: Zygote | None = None) -> int:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    stop = _stop_event(loop)  # from the start: a SIGTERM while workers start still stops cleanly
    pool = WorkerPool(config, zygote, loop) if zygote else None
    dataplane = from_config(config, pool.index if pool else None)
    if pool:
        dataplane.on_publish = pool.publish

    def emit(ops: list[Op]) -> None:
        if threading.get_ident() == loop_thread:
            dataplane.apply(ops)
        else:
            loop.call_soon_threadsafe(dataplane.apply, ops)

    sources = Sources(config, emit)
    sources.start()  # manifests load before the first query; the API syncs in the background
    slots = Slots(config.tcp_max_connections, zygote.tcp_counts, 0) if zygote else None
    forwarder = _forwarder(config, dataplane)
    dns = DnsServer(config, dataplane.responder, reuse_port=pool is not None, slots=slots, forwarder=forwarder)
    try:
        await dns.start()
    except OSError as exc:
        log.error("cannot listen on port %d: %s", config.port, exc)
        sources.stop()
        if pool:
            pool.close()
        return 1
    if pool:
        for sock in dns.udp_sockets:  # before any worker joins the port's group: the group keeps it
            steer(sock, config.workers)
        pool.index.publish(dataplane.responder.serial, dataplane.store.synced)  # what a starting worker reads
        error = await loop.run_in_executor(None, pool.start)
        if error:
            log.error("%s", error)
            await dns.close()
            sources.stop()
            pool.close()
            return 1
    if forwarder:
        forwarder.start()
    programming = Histogram(PROGRAMMING_BUCKETS)

    def read_on_loop() -> dict[str, Any]:
        snap = snapshot(dns.listeners, dataplane, forwarder)
        for seconds in snap["programming"]:
            programming.observe(seconds)
        return snap

    def read() -> tuple[Totals, dict[str, Any]]:
        future = asyncio.run_coroutine_threadsafe(_call(read_on_loop), loop)
        snaps = [future.result(timeout=5), *(list(pool.stats.values()) if pool else ())]  # the monitor thread writes it
        return totals(snaps, programming), sources.status()

    def ready() -> bool:
        return dataplane.store.synced and (pool is None or pool.synced())

    try:
        http = _start_http(config, ready, read)
    except OSError as exc:
        log.error("cannot serve HTTP on %s: %s", config.http_address, exc)
        await dns.close()
        sources.stop()
        if pool:
            pool.close()
        return 1
    loop.add_signal_handler(signal.SIGHUP, lambda: threading.Thread(target=sources.reload, daemon=True).start())
    if pool:
        log.info("dnsd serving %s with %d workers", ", ".join(config.domains), config.workers)
    else:
        log.info("dnsd serving %s", ", ".join(config.domains))
    await stop.wait()
    log.info("shutting down")
    if pool:
        pool.close()
    await dns.close()
    if forwarder:
        forwarder.stop()
    sources.stop()
    if http:
        http.stop()
    return 0


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _start_http(
    config: Config, ready: Callable[[], bool], read: Callable[[], tuple[Totals, dict[str, Any]]]
) -> HttpServer | None:
    endpoint = config.http_endpoint
    if endpoint is None:
        return None
    # Imported here, after the zygote is forked: the workers never run them (exporter.py).
    from prometheus_client.registry import CollectorRegistry

    from .exporter import DnsdCollector
    from .http import HttpServer

    registry = CollectorRegistry()
    registry.register(DnsdCollector(read))
    http = HttpServer(endpoint, ready, registry)
    http.start()
    return http


# -- several worker processes ---------------------------------------------------------
class _Worker:
    """One lean worker: its process, its reports (read by the monitor thread) and its changes.

    Changes are written from the event loop to a non-blocking socket: no thread hop (a thread
    would wait up to the GIL's 5 ms switch interval behind a busy loop), and a worker that reads
    slowly only makes its own buffer grow, never blocks the loop.
    """

    def __init__(self, process: Forked, conn: Connection, changes: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
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

    The main process writes the index file (shared_index.py) and answers queries itself;
    each worker reads the file and keeps its own hot replies (steering.py sends each name
    to one worker). After each change the workers get the names it touched and the
    serial: never the data itself. Workers are forked by the zygote (zygote.py). A worker
    that dies is forked again and reads the current data from the file.
    """

    CLEAR_OVER = 2000  # more touched names than this: workers drop every reply instead of a long list

    def __init__(self, config: Config, zygote: Zygote, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.zygote = zygote
        self.directory = zygote.directory
        self.index = SharedIndexWriter(self.directory, tuple(config.domains) + REVERSE_ZONES)
        self.workers: dict[int, _Worker] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()  # publish (loop thread) against respawn (monitor thread)
        self.last: tuple[Any, int, bool] = (CLEAR, 0, False)
        self.closing = threading.Event()
        self.monitor = threading.Thread(target=self._monitor, name="dnsd-workers", daemon=True)

    def publish(self, touched: set[str], serial: int, synced: bool) -> None:
        """On the loop thread, after a change (and the serial) is committed to the file: tell every
        worker what to drop."""
        names = CLEAR if len(touched) > self.CLEAR_OVER else touched
        with self.lock:
            self.last = (CLEAR, serial, synced)
            workers = list(self.workers.values())
        for w in workers:
            w.send((names, serial, synced))

    def synced(self) -> bool:
        """Every worker reports (once a second) that it answers from synced data."""
        return all(self.stats.get(n, {}).get("synced") for n in self.workers)

    def start(self) -> str | None:
        for number in range(1, self.config.workers):
            try:
                error = self._await_ready(number, self._spawn(number))
            except OSError as exc:
                error = f"cannot be forked: {exc}"
            if error:
                return f"worker {number}: {error}"
        self.monitor.start()
        return None

    def _spawn(self, number: int) -> _Worker:
        counts = self.zygote.tcp_counts
        with counts.get_lock():
            counts[number] = 0  # a restarted worker's connections died with it
        with self.lock:
            # Anything committed from now on reaches it as a message; what came before, it reads from the file.
            w = self.workers[number] = _Worker(*self.zygote.fork(number), self.loop)
        return w

    def _await_ready(self, number: int, w: _Worker, timeout: float = 60.0) -> str | None:
        if not w.conn.poll(timeout):
            return "did not start in time"
        try:
            kind, detail = w.conn.recv()
        except (EOFError, OSError):
            return f"exited at start (code {w.process.exitcode})"
        if kind == "error":
            return detail
        # A change committed between its start and its first query may be in its table already:
        # "drop everything", queued on the loop after any change published meanwhile.
        self.loop.call_soon_threadsafe(lambda: w.send(self.last))
        return None

    def _monitor(self) -> None:
        while not self.closing.is_set():
            conns = {w.conn: number for number, w in self.workers.items()}
            for conn in wait_connections(list(conns), timeout=0.5):
                number = conns[conn]
                try:
                    kind, detail = conn.recv()
                except (EOFError, OSError):
                    if not self.closing.is_set():
                        self._respawn(number)
                    continue
                if kind == "stats":
                    self.stats[number] = detail

    def _respawn(self, number: int) -> None:
        with self.lock:
            old = self.workers.pop(number)
        self.stats.pop(number, None)
        old.process.join(timeout=1)
        self.loop.call_soon_threadsafe(old.close)
        log.error("worker %d exited; starting a new one", number)
        time.sleep(0.5)  # a worker that dies at once must not spin the main process
        try:
            error = self._await_ready(number, self._spawn(number))
        except OSError as exc:  # the zygote is gone: the others and the main process go on answering
            error = f"cannot be forked again ({exc}); serving with one worker less"
        if error:
            log.error("worker %d: %s", number, error)

    def close(self) -> None:
        self.closing.set()
        workers = list(self.workers.values())
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()  # SIGTERM: each worker drains its TCP connections and exits
        for w in workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.kill()
            w.close()
        self.zygote.close()
        self.index.close()
        shutil.rmtree(self.directory, ignore_errors=True)
