"""The main process: startup -> main loop -> shutdown, and its signals.

It runs the sources, the pipeline and its index, the HTTP endpoint, and answers queries itself.
With ``--workers N`` its index is a memory-mapped file (zone/lmdb_index.py) and N-1 lean worker
processes (worker.py) answer from that same file on the shared port (SO_REUSEPORT): N workers
cost one copy of the cluster, plus each worker's own hot replies (supervisor.py starts and feeds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dnsd.cluster.store import Op
from dnsd.config import Config
from dnsd.net.tcp import Slots
from dnsd.observe.metrics import PROGRAMMING_BUCKETS, Histogram, Snapshot, Totals, totals
from dnsd.observe.sketch import Windows
from dnsd.observe.talkers import CAPACITY, KINDS
from dnsd.process.dataplane import Dataplane, from_config
from dnsd.process.handover import Steering, drain_unless, inodes
from dnsd.process.ipc import SharedCounts
from dnsd.process.serving import Serving
from dnsd.process.serving import run as run_process
from dnsd.process.sources import Sources
from dnsd.process.supervisor import WorkerPool, shared_directory
from dnsd.process.zygote import Zygote
from dnsd.runtime import HeapTrim, tune_gc, use_uvloop

if TYPE_CHECKING:
    from dnsd.observe.http import HttpServer

log = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the handler is in place: a HUP must never kill us
    zygote = None
    if config.workers > 1:
        # Now, while dnsd is one thread and holds no data: workers forked from it share these pages,
        # the event loop and collector settings included.
        use_uvloop()
        tune_gc()
        directory = shared_directory(config.shared_dir)
        # One TCP connection count per worker in shared memory (the limit holds for the whole server).
        tcp_counts = SharedCounts(os.path.join(directory, "tcp-connections"), config.workers)
        zygote = Zygote(config, directory, tcp_counts)
    try:
        return run_process(Server(config, zygote).serve())
    finally:
        if zygote:
            zygote.close()
            shutil.rmtree(zygote.directory, ignore_errors=True)


class Server:
    """One main process. ``serve()`` = ``startup()``, ``main_loop()`` until a stop signal, ``shutdown()``:
    the one clean-up path, also taken when startup fails half way."""

    def __init__(self, config: Config, zygote: Zygote | None = None) -> None:
        self.config = config
        self.zygote = zygote
        self.pool: WorkerPool | None = None
        self.sources: Sources | None = None
        self.serving: Serving | None = None
        self.http: HttpServer | None = None
        self.steering: Steering | None = None
        self.stop = asyncio.Event()  # SIGTERM: lame duck, then drain
        self.now = asyncio.Event()  # a second SIGTERM, or SIGINT: stop at once
        self.lame = False  # /ready says 503 from the first signal on
        self.programming = Histogram(PROGRAMMING_BUCKETS)
        # Every serving process's top talkers, over the last minute and quarter hour (/debug/top).
        self.top = Windows(KINDS, CAPACITY) if config.top_talkers else None

    # Set by startup() before anything can read them (the HTTP endpoint starts after both).
    dataplane: Dataplane
    loop: asyncio.AbstractEventLoop

    async def serve(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        # From the start: a SIGTERM while workers start still stops cleanly.
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        try:
            error = await self.startup()
            if error:
                log.error("%s", error)
                return 1
            await self.main_loop()
            return 0
        finally:
            await self.shutdown()

    async def startup(self) -> str | None:
        """Everything up and answering; the reason when something cannot start."""
        config, loop = self.config, self.loop
        pool = self.pool = WorkerPool(config, self.zygote, loop) if self.zygote else None
        if pool and self.top is not None:
            pool.on_top = self._add_top
        dataplane = self.dataplane = from_config(config, pool.index if pool else None)
        if pool:
            dataplane.on_publish = pool.publish
        loop_thread = threading.get_ident()

        def emit(ops: list[Op]) -> None:
            if threading.get_ident() == loop_thread:
                dataplane.apply(ops)
            else:
                loop.call_soon_threadsafe(dataplane.apply, ops)

        self.sources = Sources(config, emit)
        self.sources.start()  # manifests load before the first query; the API syncs in the background
        slots = Slots(config.tcp_max_connections, self.zygote.tcp_counts, 0) if self.zygote else None
        serving = self.serving = Serving(config, dataplane.responder, slots=slots)
        error = await serving.listen()
        if error:
            return error
        if pool:
            # Before any worker joins the port's group: the group keeps the program (handover.py).
            self.steering = Steering(serving.dns.udp_sockets, config.workers, self._inodes)
            self.steering.start()
            pool.index.publish(dataplane.serial, dataplane.store.synced)  # what a starting worker reads
            error = await loop.run_in_executor(None, pool.start)
            if error:
                return error
        serving.forward()
        try:
            self.http = _start_http(config, self.ready, self.read, self.reload, self.top_report if self.top else None)
        except OSError as exc:
            return f"cannot serve HTTP on {config.http_address}: {exc}"
        loop.add_signal_handler(signal.SIGHUP, lambda: threading.Thread(target=self.sources_reload, daemon=True).start())
        if pool:
            log.info("dnsd serving %s with %d workers", ", ".join(config.domains), config.workers)
        else:
            log.info("dnsd serving %s", ", ".join(config.domains))
        return None

    async def main_loop(self) -> None:
        """Until a stop signal: the heap trimmed as a worker's is (the main process answers too), the
        steering attached once another dnsd has left the port. Then the lame duck: answering as before
        while /ready says 503, so that load balancers and kube-proxy stop sending queries here first."""
        trim = HeapTrim()
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), 1)
            except TimeoutError:
                trim.tick()
                if self.serving is not None and (top := self.serving.top()) is not None:
                    self._add_top(top)
                if self.steering:
                    self.steering.tick()
        lameduck = self.config.lameduck
        if lameduck and not self.now.is_set():
            log.info("lame duck: /ready says 503; answering for %g s before draining", lameduck)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.now.wait(), lameduck)
        log.info("shutting down")

    async def shutdown(self) -> None:
        """Stop what started, in reverse order of need: workers, listeners and forwarding, sources, HTTP.
        After a SIGTERM the listeners drain first (no query lost); a second signal cuts that short."""
        drained = False
        if self.serving and self.stop.is_set() and not self.now.is_set():
            drained = await self._drain()
        if self.pool:
            self.pool.close(now=not drained)
        if self.serving:
            await self.serving.close()
        if self.sources:
            self.sources.stop()
        if self.http:
            self.http.stop()

    async def _drain(self) -> bool:
        """Leave the port to whoever else serves it (handover.py): every process seals its sockets and
        answers what reached them. False when a second signal cut it short."""
        assert self.serving is not None
        log.info("draining: answering what reached us, and the open TCP connections until they close")
        if self.steering:
            self.steering.release()
        if self.pool:
            self.pool.drain()  # SIGTERM: each worker drains as we do
        if not await drain_unless(self.serving.drain(), self.now):
            return False
        limit = time.monotonic() + self.config.tcp_idle_timeout + self.config.forward_timeout + 5
        while self.pool and self.pool.alive() and not self.now.is_set() and time.monotonic() < limit:
            await asyncio.sleep(0.05)
        return not self.now.is_set()

    def _terminate(self) -> None:
        if self.stop.is_set():
            self.now.set()  # a second SIGTERM
        self.lame = True
        self.stop.set()

    def _interrupt(self) -> None:
        self.lame = True
        self.now.set()
        self.stop.set()

    def _inodes(self) -> set[int]:
        """Every UDP socket of this dnsd: the main process's and those its workers reported."""
        assert self.serving is not None
        ours = set(inodes(self.serving.dns.udp_sockets))
        if self.pool:
            ours |= self.pool.inodes()
        return ours

    def sources_reload(self) -> None:
        if self.sources:
            self.sources.reload()

    def ready(self) -> bool:
        return not self.lame and self.dataplane.store.synced and (self.pool is None or self.pool.synced())

    def reload(self, timeout: float = 10.0) -> list[str] | None:
        """POST /reload, from the HTTP thread: the manifest files rescanned now, returning once every
        serving process answers from the result; the files' problems (None: no manifest files)."""
        manifests = self.sources.manifests if self.sources else None
        if manifests is None:
            return None
        problems = manifests.rescan()  # its changes are queued on the loop before what follows
        future = asyncio.run_coroutine_threadsafe(self._settled(timeout), self.loop)
        try:
            future.result(timeout + 1)
        except TimeoutError:
            raise TimeoutError(f"the workers did not confirm the reload within {timeout:g} s") from None
        return problems

    async def _settled(self, timeout: float) -> None:
        """On the loop, after every change queued before: the main process answers from them; then
        each worker, once it confirms it has read every change sent before."""
        if self.pool:
            await asyncio.wait_for(self.pool.settled(), timeout)

    def read(self) -> tuple[Totals, dict[str, Any]]:
        """For a scrape, from the HTTP thread: every process's counters, and the sources' state."""
        assert self.sources is not None
        future = asyncio.run_coroutine_threadsafe(_call(self._snapshot), self.loop)
        snaps = [future.result(timeout=5), *(list(self.pool.stats.values()) if self.pool else ())]
        return totals(snaps, self.programming), self.sources.status()

    def _add_top(self, delta: dict[str, Any]) -> None:
        """One serving process's top talkers since its last report (from the loop, or the workers' monitor)."""
        if self.top is not None:
            self.top.add(delta["summaries"], delta["queries"], time.time())

    def top_report(self, limit: int) -> dict[str, Any]:
        """/debug/top, from the HTTP thread."""
        assert self.top is not None
        report = self.top.report(time.time(), limit)
        report["workers"] = self.config.workers
        return report

    def _snapshot(self) -> Snapshot:
        """On the loop: the main process's counters; the changes' timings go into the histogram."""
        assert self.serving is not None
        dataplane = self.dataplane
        snap = self.serving.snapshot(dataplane.store.synced, dataplane.index.record_count,
                                     len(dataplane.store.services), dataplane.drain_programming())
        for seconds in snap["programming"]:
            self.programming.observe(seconds)
        return snap


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _start_http(
    config: Config, ready: Callable[[], bool], read: Callable[[], tuple[Totals, dict[str, Any]]],
    reload: Callable[[], list[str] | None],
    top: Callable[[int], dict[str, Any]] | None = None,
) -> HttpServer | None:
    endpoint = config.http_endpoint
    if endpoint is None:
        return None
    # Imported here, after the zygote is forked: the workers never run them (observe/exporter.py).
    from prometheus_client.registry import CollectorRegistry

    from dnsd.observe.exporter import DnsdCollector
    from dnsd.observe.http import HttpServer

    registry = CollectorRegistry()
    registry.register(DnsdCollector(read))
    http = HttpServer(endpoint, ready, registry, reload, top)
    http.start()
    return http
