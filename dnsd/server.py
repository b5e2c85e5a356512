"""Serving: the process model, lifecycle and signals (the listeners are in listeners.py).

One worker (the default on one CPU) runs everything in one process. With
``--workers N`` a supervisor runs the sources, the HTTP endpoint and one watch per
resource, and streams the source ops to N worker processes, each with its own
index and its own UDP/TCP sockets on the shared port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

from prometheus_client.registry import CollectorRegistry

from .config import Config
from .dataplane import Dataplane, big_batch, from_config
from .http import HttpServer
from .listeners import DnsServer, Slots
from .metrics import PROGRAMMING_BUCKETS, DnsdCollector, Histogram, Totals, snapshot, totals
from .store import Op, Store

log = logging.getLogger("dnsd.server")
perf_counter = time.perf_counter


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
    _tune_gc()
    if config.workers > 1:
        return Supervisor(config).run()
    _use_uvloop()
    return asyncio.run(_serve_single(config))


def _stop_event(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve_single(config: Config) -> int:
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    dataplane = from_config(config)

    def emit(ops: list[Op]) -> None:
        if threading.get_ident() == loop_thread:
            dataplane.apply(ops)
        else:
            loop.call_soon_threadsafe(dataplane.apply, ops)

    sources = Sources(config, emit)
    sources.start()  # manifests load before the first query; the API syncs in the background
    forwarder = _forwarder(config, dataplane)
    dns = DnsServer(config, dataplane.responder, forwarder=forwarder)
    try:
        await dns.start()
    except OSError as exc:
        log.error("cannot listen on port %d: %s", config.port, exc)
        sources.stop()
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
        return totals([future.result(timeout=5)], programming), sources.status()

    try:
        http = _start_http(config, lambda: dataplane.store.synced, read)
    except OSError as exc:
        log.error("cannot serve HTTP on %s: %s", config.http_address, exc)
        await dns.close()
        sources.stop()
        return 1
    stop = _stop_event(loop)
    loop.add_signal_handler(signal.SIGHUP, lambda: threading.Thread(target=sources.reload, daemon=True).start())
    log.info("dnsd serving %s", ", ".join(config.domains))
    await stop.wait()
    log.info("shutting down")
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
    registry = CollectorRegistry()
    registry.register(DnsdCollector(read))
    http = HttpServer(endpoint, ready, registry)
    http.start()
    return http


# -- several worker processes ---------------------------------------------------------
def worker_main(config: Config, conn: Connection, number: int, tcp_counts: Any) -> None:
    logging.basicConfig(level=config.log_level.upper(), format=f"%(asctime)s %(levelname)s %(name)s[w{number}]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor re-reads the files (a HUP to the group too)
    _tune_gc()
    _use_uvloop()
    asyncio.run(_serve_worker(config, conn, Slots(config.tcp_max_connections, tcp_counts, number)))


async def _serve_worker(config: Config, conn: Connection, slots: Slots) -> None:
    loop = asyncio.get_running_loop()
    dataplane = from_config(config)
    dataplane.apply(conn.recv())  # the supervisor's snapshot, before the first query can arrive
    forwarder = _forwarder(config, dataplane)
    dns = DnsServer(config, dataplane.responder, reuse_port=True, slots=slots, forwarder=forwarder)
    try:
        await dns.start()
    except OSError as exc:
        conn.send(("error", f"cannot listen on port {config.port}: {exc}"))
        return
    if forwarder:
        forwarder.start()
    stop = _stop_event(loop)

    def receive() -> None:
        # A thread with a blocking recv, not loop.add_reader: uvloop makes a watched fd
        # non-blocking, and Connection.recv cannot resume a message cut by EAGAIN.
        try:
            while True:
                loop.call_soon_threadsafe(dataplane.apply, conn.recv())
        except (EOFError, OSError):
            loop.call_soon_threadsafe(stop.set)  # the supervisor is gone: so are we

    threading.Thread(target=receive, name="dnsd-ops", daemon=True).start()
    conn.send(("ready", os.getpid()))
    synced = False
    while not stop.is_set():
        with contextlib.suppress(OSError):
            conn.send(("stats", snapshot(dns.listeners, dataplane, forwarder)))
        # Once a second, or at once when the first sync lands (the supervisor's /ready waits for it).
        for _ in range(20):
            if stop.is_set() or synced != dataplane.store.synced:
                break
            await asyncio.sleep(0.05)
        synced = dataplane.store.synced
    await dns.close()
    if forwarder:
        forwarder.stop()


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.store = Store()
        self.lock = threading.Lock()  # one op stream: snapshot + subscribe must not interleave with sends
        self.workers: dict[int, tuple[Any, Connection]] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.programming = Histogram(PROGRAMMING_BUCKETS)
        self.stopping = threading.Event()
        self.reloading = threading.Event()
        # One TCP connection count per worker, shared: the limit holds for the whole server.
        self.tcp_counts = self.ctx.Array("i", config.workers)

    def emit(self, ops: list[Op]) -> None:
        with self.lock, big_batch(ops):
            self.store.apply(ops)
            for number, (_, conn) in list(self.workers.items()):
                try:
                    conn.send(ops)
                except OSError:
                    log.warning("worker %d is gone; it will be restarted", number)

    def _spawn(self, number: int) -> tuple[Any, Connection]:
        ours, theirs = self.ctx.Pipe(duplex=True)
        with self.tcp_counts.get_lock():
            self.tcp_counts[number] = 0  # a restarted worker's connections died with it
        process = self.ctx.Process(target=worker_main, args=(self.config, theirs, number, self.tcp_counts),
                                   name=f"dnsd-worker-{number}")
        process.start()
        theirs.close()
        with self.lock:
            ours.send(self.store.snapshot())
            self.workers[number] = (process, ours)
        return process, ours

    def _await_ready(self, conn: Connection, timeout: float = 60.0) -> str | None:
        if not conn.poll(timeout):
            return "did not start in time"
        kind, detail = conn.recv()
        return detail if kind == "error" else None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reloading.set())
        # Sources first: workers start from a snapshot that already holds the manifests,
        # so the port never answers SERVFAIL for data we have on disk.
        sources = Sources(self.config, self.emit)
        sources.start()
        for number in range(self.config.workers):
            _, conn = self._spawn(number)
            error = self._await_ready(conn)
            if error:
                log.error("worker %d: %s", number, error)
                sources.stop()
                self._stop_workers()
                return 1

        def read() -> tuple[Totals, dict[str, Any]]:
            return totals(list(self.stats.values()), self.programming), sources.status()

        try:
            http = _start_http(self.config, self._ready, read)
        except OSError as exc:
            log.error("cannot serve HTTP on %s: %s", self.config.http_address, exc)
            sources.stop()
            self._stop_workers()
            return 1
        log.info("dnsd serving %s with %d workers", ", ".join(self.config.domains), self.config.workers)
        while not self.stopping.is_set():
            self._monitor(timeout=0.5)
            if self.reloading.is_set():
                self.reloading.clear()
                sources.reload()  # its ops reach every worker through emit
        log.info("shutting down")
        sources.stop()
        if http:
            http.stop()
        self._stop_workers()
        return 0

    def _ready(self) -> bool:
        """Synced here and in every worker (each reports once a second): the port answers from it."""
        return self.store.synced and all(self.stats.get(n, {}).get("synced") for n in self.workers)

    def _monitor(self, timeout: float) -> None:
        conns = {conn: number for number, (_, conn) in self.workers.items()}
        for conn in wait_connections(list(conns), timeout=timeout):
            number = conns[conn]
            try:
                kind, detail = conn.recv()
            except (EOFError, OSError):
                if not self.stopping.is_set():
                    self._respawn(number)
                continue
            if kind == "stats":
                for seconds in detail.pop("programming"):
                    self.programming.observe(seconds)
                self.stats[number] = detail

    def _respawn(self, number: int) -> None:
        process, conn = self.workers.pop(number)
        process.join(timeout=1)
        conn.close()
        log.error("worker %d exited (code %s); starting a new one", number, process.exitcode)
        time.sleep(0.5)  # a worker that dies at once must not spin the supervisor
        _, conn = self._spawn(number)
        error = self._await_ready(conn)
        if error:
            log.error("worker %d: %s", number, error)

    def _stop_workers(self) -> None:
        for process, _ in self.workers.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: each worker drains its TCP connections and exits
        for process, conn in self.workers.values():
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
            conn.close()
