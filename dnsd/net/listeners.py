"""The DNS listeners of one process: UDP sockets (udp.py) and TCP connections, and the server that opens them.

They move bytes between sockets and the Responder; they decide nothing about DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import logging
import mmap
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from dnsd.answer.responder import Responder, refused
from dnsd.answer.transfer import ZoneTransfer
from dnsd.config import Config
from dnsd.dns.const import TCP_LIMIT
from dnsd.dns.query import Pending
from dnsd.net.udp import SO_TIMESTAMP, UdpListener
from dnsd.observe.metrics import Listener
from dnsd.runtime import release_heap

if TYPE_CHECKING:
    from dnsd.upstream.forwarder import Forwarder

log = logging.getLogger("dnsd.net.listeners")
perf_counter = time.perf_counter


class Allowed:
    """``--allow-from``: which client addresses may ask (a small cache of decisions per address)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self._seen: dict[str, bool] = {}

    def __call__(self, host: str) -> bool:
        ok = self._seen.get(host)
        if ok is None:
            address = ipaddress.ip_address(host.split("%", 1)[0])
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            ok = any(address in n for n in self.networks)
            if len(self._seen) > 65536:
                self._seen.clear()
            self._seen[host] = ok
        return ok


# The receive buffer is a queue: it should hold a burst (a node's pods restarting together), not
# seconds of work. The kernel charges each small datagram ~830 bytes (its skb; measured on loopback,
# Linux 6.x) against twice the size asked for, so 512 KiB holds ~1,260 queries: ~20 ms of work on the
# fast path, ~80 ms on the strict path (~15k/s per worker). Past that the kernel drops at once, so
# under overload the queries that are answered are answered fast (4 MiB held ~10,000: 0.7 s).
UDP_RCVBUF = 512 << 10
UDP_SNDBUF = 4 << 20  # replies leave at once on a healthy host; a big buffer only avoids drops in bursts


def _size_buffers(sock: socket.socket) -> None:
    """Set the UDP buffers; the kernel caps them at net.core.[rw]mem_max, which is fine."""
    for option, size in ((socket.SO_RCVBUF, UDP_RCVBUF), (socket.SO_SNDBUF, UDP_SNDBUF)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


class SharedCounts:
    """One TCP connection count per worker, in a small file every serving process maps (a worker
    started fresh for a dead one opens it by its path, one forked shares the mapping), changed
    under an flock of that file."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 4 * size:
                os.ftruncate(fd, 4 * size)
            self._map = mmap.mmap(fd, 4 * size)
        finally:
            os.close(fd)
        self._counts = memoryview(self._map).cast("i")
        self._lock = _FileLock(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedCounts, (self.path, self.size)  # for a fresh worker: the path, not the mapping

    def get_lock(self) -> _FileLock:
        return self._lock

    def __getitem__(self, number: int) -> int:
        return self._counts[number]

    def __setitem__(self, number: int, value: int) -> None:
        self._counts[number] = value

    def __iter__(self) -> Any:
        return iter(self._counts)


class _FileLock:
    """An exclusive flock of ``path`` through a descriptor this process opened itself: flock is held
    per open file, so a forked child sharing its parent's would not exclude it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.pid = 0

    def __enter__(self) -> None:
        if self.pid != os.getpid():
            if self.fd >= 0:
                os.close(self.fd)  # the parent's, inherited
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self.pid = os.getpid()
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class Slots:
    """The TCP connection limit of the whole server: one count per worker in shared memory.

    ``counts`` is a SharedCounts when several processes serve, else a plain list. Each worker
    changes only its own count, under the lock, so a restarted worker's count can be reset by
    the supervisor without guessing.
    """

    def __init__(self, limit: int, counts: Any = None, number: int = 0) -> None:
        self.limit = limit
        self.counts = counts if counts is not None else [0]
        self.number = number
        self.lock = counts.get_lock() if hasattr(counts, "get_lock") else contextlib.nullcontext()

    def acquire(self) -> bool:
        with self.lock:
            if sum(self.counts) >= self.limit:
                return False
            self.counts[self.number] += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.counts[self.number] -= 1


READ_LIMIT = 4096  # bytes a TCP connection may have buffered unread (asyncio pauses it at twice this)
TRIM_AFTER = 64  # connections closed since the heap was last given back


class DnsServer:
    """The UDP and TCP listeners of one process."""

    def __init__(self, config: Config, responder: Responder, reuse_port: bool = False, slots: Slots | None = None,
                 forwarder: Forwarder | None = None) -> None:
        self.config = config
        self.responder = responder
        self.reuse_port = reuse_port
        self.slots = slots or Slots(config.tcp_max_connections)
        self._closed_since_trim = 0
        self.forwarder = forwarder
        self.allowed = Allowed(config.allow_from) if config.allow_from else None
        self.transfer = ZoneTransfer(config.transfer_to, responder) if config.transfer_to else None
        self.listeners: list[Listener] = []
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._connections: set[asyncio.Task] = set()
        self._busy: set[asyncio.Task] = set()  # connections in the middle of a query

    @property
    def udp_sockets(self) -> list[socket.socket]:
        return list(self._udp)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.config.addresses:
            family = "2" if ipaddress.ip_address(address).version == 6 else "1"
            server = f"dns://{address}:{self.config.port}"
            udp = Listener("udp", family, server)
            sock = socket.socket(socket.AF_INET6 if family == "2" else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((address, self.config.port))
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            _size_buffers(sock)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)  # arrival times, read only when backlogged
            self._udp.append(sock)
            tcp = Listener("tcp", family, server)
            self._tcp.append(await asyncio.start_server(
                lambda r, w, tcp=tcp: self._tcp_connection(r, w, tcp), host=address, port=self.config.port,
                reuse_port=self.reuse_port or None, backlog=1024, limit=READ_LIMIT,
            ))
            # UDP is read only once TCP listens too: a client that got a UDP answer (or TC) can use TCP.
            reader = UdpListener(sock, self.responder, udp, self.forwarder, self.allowed, self.config.shed_after)
            loop.add_reader(sock.fileno(), reader.readable)
            if self.forwarder is not None:
                self.forwarder.between(reader.hits_only)
            self.listeners += [udp, tcp]
            log.info("DNS on %s:%d (UDP and TCP)", address, self.config.port)

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lst: Listener) -> None:
        """RFC 7766: several queries per connection, answered in order.

        A reply is written only once the previous one left for the kernel (write buffer limit 0),
        so a connection parks at most one reply and READ_LIMIT of queries. A peer that neither
        sends nor reads for the idle timeout is cut: reads and writes both have the timeout, and
        a connection with unsent data is aborted, not closed (close would wait for the flush).
        """
        task = asyncio.current_task()
        transport = writer.transport
        if task is None or not self.slots.acquire():
            transport.abort()  # over the cap: refuse at once rather than queue without bound
            return
        self._connections.add(task)
        transport.set_write_buffer_limits(high=0)
        idle = self.config.tcp_idle_timeout
        peer = (writer.get_extra_info("peername") or ("",))[0]
        try:
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), idle), "big")
                query = await asyncio.wait_for(reader.readexactly(size), idle)
                self._busy.add(task)
                start = perf_counter()
                if self.allowed is not None and not (peer and self.allowed(peer)):
                    reply = refused(query)
                else:
                    transfer = self.transfer(query, peer) if self.transfer else None
                    if transfer is not None:
                        for message in transfer:  # packed one at a time: queries get their turn between
                            writer.write(len(message).to_bytes(2, "big") + message)
                            await asyncio.wait_for(writer.drain(), idle)
                            await asyncio.sleep(0)
                        self._busy.discard(task)
                        continue
                    reply = self.responder.answer(query, TCP_LIMIT, lst.counts)
                if reply.__class__ is Pending and self.forwarder is not None:
                    pending: Pending = reply  # type: ignore[assignment]
                    reply = self.forwarder.now(pending, lst.counts) or await self.forwarder.answer(pending, lst.counts)
                if reply is None or transport.is_closing():
                    break  # a reset peer: queries still buffered are not answered (writing would raise)
                writer.write(len(reply).to_bytes(2, "big") + reply)
                if transport.get_write_buffer_size():
                    await asyncio.wait_for(writer.drain(), idle)
                lst.duration.observe(perf_counter() - start)
                self._busy.discard(task)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._busy.discard(task)
            self._connections.discard(task)
            self.slots.release()
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                writer.close()
            with contextlib.suppress(Exception):  # a reset's exception, taken here: else it is logged when collected
                await writer.wait_closed()
            self._closed_since_trim += 1
            closed = self._closed_since_trim
            if closed >= TRIM_AFTER and (not self._connections or closed >= 16 * TRIM_AFTER):
                self._closed_since_trim = 0
                # Closed connections leave cycles (a task, its exception, its frames and buffers):
                # collect them, then give the freed heap back to the OS.
                gc.collect()
                release_heap()

    async def close(self, grace: float = 3.0) -> None:
        """Stop accepting; let connections finish the query they are answering; close the rest."""
        loop = asyncio.get_running_loop()
        for sock in self._udp:
            loop.remove_reader(sock.fileno())
            sock.close()
        for server in self._tcp:
            server.close()
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=grace)
