"""Serving: the process model, lifecycle and signals (the listeners are in listeners.py).

The main process runs the sources, the store, the index and the HTTP endpoint, and
answers queries itself. With ``--workers N`` its index is a memory-mapped file
(shared_index.py) and N-1 lean worker processes (worker.py) answer from that same
file on the shared port (SO_REUSEPORT): N workers cost one copy of the cluster, plus
each worker's own hot replies (worker_pool.py starts and feeds them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dnsd.cluster.store import Op
from dnsd.config import Config
from dnsd.net.listeners import DnsServer, SharedCounts, Slots
from dnsd.observe.metrics import PROGRAMMING_BUCKETS, Histogram, Totals, snapshot, totals
from dnsd.process.dataplane import Dataplane, from_config
from dnsd.process.steering import steer
from dnsd.process.supervisor import WorkerPool, shared_directory
from dnsd.process.zygote import Zygote
from dnsd.runtime import HeapTrim

if TYPE_CHECKING:
    from dnsd.observe.http import HttpServer

log = logging.getLogger("dnsd.process.main")


class Sources:
    """Starts the configured sources, feeding ``emit``; stops them."""

    def __init__(self, config: Config, emit: Callable[[list[Op]], None]) -> None:
        from dnsd.cluster.sources.manifests import ManifestSource

        paths, use_api = config.sources()
        self.manifests = ManifestSource(paths, emit, config.reload_debounce_ms, config.endpoint_pod_names) if paths else None
        self.kubernetes = None
        if use_api:
            from dnsd.cluster.sources.kubernetes.source import KubernetesSource

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
    from dnsd.upstream.forwarder import Forwarder

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
        directory = shared_directory(config.shared_dir)
        # One TCP connection count per worker in shared memory (the limit holds for the whole server).
        tcp_counts = SharedCounts(os.path.join(directory, "tcp-connections"), config.workers)
        # Now, while dnsd is one thread and holds no data: workers forked from it share these pages.
        zygote = Zygote(config, directory, tcp_counts)
    try:
        return asyncio.run(_serve(config, zygote))
    finally:
        if zygote:
            zygote.close()
            shutil.rmtree(zygote.directory, ignore_errors=True)


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
    trim = asyncio.create_task(_trim_heap())
    await stop.wait()
    log.info("shutting down")
    trim.cancel()
    if pool:
        pool.close()
    await dns.close()
    if forwarder:
        forwarder.stop()
    sources.stop()
    if http:
        http.stop()
    return 0


async def _trim_heap() -> None:
    """The main process answers too: it empties its free lists and trims its heap as a worker does."""
    trim = HeapTrim()
    while True:
        await asyncio.sleep(1)
        trim.tick()


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

    from dnsd.observe.exporter import DnsdCollector
    from dnsd.observe.http import HttpServer

    registry = CollectorRegistry()
    registry.register(DnsdCollector(read))
    http = HttpServer(endpoint, ready, registry)
    http.start()
    return http
