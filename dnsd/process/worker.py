"""A lean worker process: answers from the shared index file, keeps only its own hot replies.

It imports neither the Kubernetes client nor the store, and holds no copy of the index:
resolving reads the file the main process writes (shared_index.py). The main process
sends it only what changed (names, the serial, whether the sources have synced) so it
can drop stale rendered replies; a worker started later reads the rest from the file.

Workers are forked by the zygote (zygote.py), itself forked from dnsd before any data
existed: their interpreter and module pages are shared with it and with the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import encodings.idna  # noqa: F401 - binding a listener by address needs it: imported before the fork, shared
import gc
import logging
import os
import pickle
import signal
import socket
import struct
from multiprocessing.connection import Connection
from typing import Any

from dnsd.answer.responder import Responder
from dnsd.config import Config
from dnsd.net.listeners import DnsServer, Slots
from dnsd.process.dataplane import resolver_for
from dnsd.runtime import HeapTrim
from dnsd.zone.lmdb_index import SharedIndex
from dnsd.zone.records import REVERSE_ZONES

log = logging.getLogger("dnsd.process.worker")
CLEAR = None  # in place of the names: every rendered reply may be stale (a relist touched too many to list)


class Changes:
    """What a worker knows besides the file: whether to answer negatives yet, and the serial."""

    def __init__(self, responder: Responder, synced: bool) -> None:
        self.responder = responder
        self.synced = synced

    def apply(self, message: tuple[Any, int, bool]) -> None:
        names, serial, synced = message
        if names is CLEAR:
            self.responder.clear()
        else:
            self.responder.invalidate(names)
        self.responder.serial = serial
        self.synced = synced


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


def main(config: Config, path: str, conn: Connection, changes_sock: socket.socket, number: int,
         tcp_counts: Any) -> None:
    logging.basicConfig(level=config.log_level.upper(), force=True,  # forked: replace the main process's set-up
                        format=f"%(asctime)s %(levelname)s %(name)s[w{number}]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when workers stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the main process re-reads the files (a HUP to the group too)
    gc.freeze()  # what came from the zygote stays out of the collector's sight (and its pages shared)
    gc.set_threshold(10_000, 20, 100)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    asyncio.run(_serve(config, path, conn, changes_sock, Slots(config.tcp_max_connections, tcp_counts, number)))


async def _serve(config: Config, path: str, conn: Connection, changes_sock: socket.socket, slots: Slots) -> None:
    loop = asyncio.get_running_loop()
    index = SharedIndex(path, tuple(config.domains) + REVERSE_ZONES)
    serial, synced = index.read_meta()
    responder = Responder(index, config.ttl, lambda: changes.synced, *config.table_share, config.udp_max_payload,
                          resolver_for(config))
    responder.serial = serial
    changes = Changes(responder, synced)
    forwarder = None
    if config.upstreams or config.stub_domains:  # each worker forwards and caches for itself
        from dnsd.upstream.forwarder import Forwarder

        forwarder = Forwarder(config)
        responder.forward = forwarder
    dns = DnsServer(config, responder, reuse_port=True, slots=slots, forwarder=forwarder)
    try:
        await dns.start()
    except OSError as exc:
        conn.send(("error", f"cannot listen on port {config.port}: {exc}"))
        return
    if forwarder:
        forwarder.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    frames = Frames()
    changes_sock.setblocking(False)

    def receive() -> None:
        # In the loop itself, not a thread: a thread would wait up to the GIL's switch interval
        # (5 ms) behind a busy loop before it could hand a change over.
        try:
            data = changes_sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(changes_sock.fileno())
            stop.set()  # the main process is gone: so are we
            return
        for message in frames.feed(data):
            changes.apply(message)

    loop.add_reader(changes_sock.fileno(), receive)
    conn.send(("ready", os.getpid()))
    reported = None
    trim = HeapTrim()
    while not stop.is_set():
        trim.tick()
        with contextlib.suppress(OSError):
            conn.send(("stats", stats(dns, changes.synced, forwarder)))
        reported = changes.synced
        # Once a second, or at once when the first sync lands (the main process's /ready waits for it).
        for _ in range(20):
            if stop.is_set() or reported != changes.synced:
                break
            await asyncio.sleep(0.05)
    await dns.close()
    if forwarder:
        forwarder.stop()
    index.close()


def stats(dns: DnsServer, synced: bool, forwarder: Any = None) -> dict[str, Any]:
    """A worker's part of metrics.snapshot: its listeners' counters (the data is the main process's)."""
    return {
        "listeners": [(lst.proto, lst.family, lst.server, dict(lst.counts), lst.duration.counts[:], lst.duration.total)
                      for lst in dns.listeners],
        "records": 0, "services": 0, "programming": [], "synced": synced,
        "forward": forwarder.snapshot() if forwarder is not None else None,
    }

