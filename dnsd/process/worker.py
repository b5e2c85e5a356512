"""A lean worker process: answers from the shared index file, keeps only its own hot replies.

It imports neither the Kubernetes client nor the store, and holds no copy of the index:
resolving reads the file the main process writes (zone/lmdb_index.py). The main process
sends it only what changed (names, the serial, whether the sources have synced) so it
can drop stale rendered replies; a worker started later reads the rest from the file.

Workers are forked by the zygote (zygote.py), itself forked from dnsd before any data
existed: their interpreter and module pages are shared with it and with the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import encodings.idna  # noqa: F401 - binding a listener by address needs it: imported before the fork, shared
import logging
import os
import signal
import socket
from multiprocessing.connection import Connection
from typing import Any

from dnsd.answer.responder import Responder
from dnsd.config import Config
from dnsd.net.tcp import Slots
from dnsd.process.handover import drain_unless, inodes
from dnsd.process.ipc import CLEAR, Barrier, Frames
from dnsd.process.serving import Serving, run
from dnsd.runtime import HeapTrim
from dnsd.zone.lmdb_index import SharedIndex
from dnsd.zone.searchpath import resolver_for


class Changes:
    """What a worker knows besides the file: whether to answer negatives yet, and the serial."""

    def __init__(self, responder: Responder, serial: int, synced: bool) -> None:
        self.responder = responder
        self.serial = serial
        self.synced = synced

    def apply(self, message: tuple[Any, int, bool]) -> None:
        names, serial, synced = message
        if names is CLEAR:
            self.responder.clear()
        else:
            self.responder.invalidate(names)
        self.serial = serial
        self.synced = synced


def main(config: Config, path: str, conn: Connection, changes_sock: socket.socket, number: int,
         tcp_counts: Any) -> None:
    logging.basicConfig(level=config.log_level.upper(), force=True,  # forked: replace the main process's set-up
                        format=f"%(asctime)s %(levelname)s %(name)s[w{number}]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when workers stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the main process re-reads the files (a HUP to the group too)
    slots = Slots(config.tcp_max_connections, tcp_counts, number)
    run(Worker(config, path, conn, changes_sock, slots).serve())


class Worker:
    """One worker process. ``serve()`` = ``startup()``, ``main_loop()`` until SIGTERM or the main
    process is gone, ``shutdown()``."""

    def __init__(self, config: Config, path: str, conn: Connection, changes_sock: socket.socket,
                 slots: Slots) -> None:
        self.config = config
        self.path = path
        self.conn = conn  # to the main process: "ready" or "error" once, then stats once a second
        self.changes_sock = changes_sock  # from the main process: what changed (ipc.frame)
        self.slots = slots
        self.index: SharedIndex | None = None
        self.serving: Serving | None = None
        self.stop = asyncio.Event()  # SIGTERM: drain, then exit
        self.now = asyncio.Event()  # SIGUSR1, or the main process gone: close at once
        self.frames = Frames()

    changes: Changes  # set by startup(), before anything reads it

    async def serve(self) -> None:
        try:
            if await self.startup():
                await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> bool:
        """Listening on the shared port and reading changes; False (the main process told why) if not."""
        config, loop = self.config, asyncio.get_running_loop()
        self.index = SharedIndex(self.path, config.index_zones)
        serial, synced = self.index.read_meta()
        responder = Responder(self.index, config.ttl, lambda: self.changes.synced, *config.table_share,
                              config.udp_max_payload, resolver_for(config), loadbalance=config.loadbalance)
        self.changes = Changes(responder, serial, synced)
        serving = self.serving = Serving(config, responder, slots=self.slots)
        error = await serving.listen()
        if error:
            self.conn.send(("error", error))
            return False
        serving.forward()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self._now)
        self.changes_sock.setblocking(False)
        # In the loop itself, not a thread: a thread would wait up to the GIL's switch interval
        # (5 ms) behind a busy loop before it could hand a change over.
        loop.add_reader(self.changes_sock.fileno(), self._receive)
        self.conn.send(("ready", (os.getpid(), inodes(serving.dns.udp_sockets))))
        return True

    async def main_loop(self) -> None:
        """Report once a second, or at once when the first sync lands (the main process's /ready waits for it)."""
        assert self.serving is not None
        trim = HeapTrim()
        while not self.stop.is_set():
            trim.tick()
            with contextlib.suppress(OSError):
                self.conn.send(("stats", self.serving.snapshot(self.changes.synced)))
                top = self.serving.top()
                if top is not None:
                    self.conn.send(("top", top))
            reported = self.changes.synced
            for _ in range(20):
                if self.stop.is_set() or reported != self.changes.synced:
                    break
                await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        if self.serving is not None:
            if self.stop.is_set() and not self.now.is_set():
                await drain_unless(self.serving.drain(), self.now)
            await self.serving.close()
        if self.index is not None:
            self.index.close()

    def _now(self) -> None:
        self.now.set()
        self.stop.set()

    def _receive(self) -> None:
        try:
            data = self.changes_sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.changes_sock.fileno())
            self._now()  # the main process is gone: so are we
            return
        for message in self.frames.feed(data):
            if isinstance(message, Barrier):
                with contextlib.suppress(OSError):
                    self.conn.send(("read", message.token))  # every change before it is applied
            else:
                self.changes.apply(message)


__all__ = ["Changes", "Worker", "main"]
