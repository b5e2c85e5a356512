"""The DNS listeners of one process: UDP sockets drained from the event loop, TCP connections.

They move bytes between sockets and the Responder; they decide nothing about DNS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import ipaddress
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from .config import Config
from .dataplane import release_heap
from .metrics import Listener
from .transfer import ZoneTransfer
from .wire import MAX_QUERY, MIN_PAYLOAD, TCP_LIMIT, Pending, Responder, refused

if TYPE_CHECKING:
    from .upstream.forwarder import Forwarder

log = logging.getLogger("dnsd.listeners")
perf_counter = time.perf_counter


SO_TIMESTAMP = 29  # Linux's (SO_TIMESTAMP_OLD: a struct timeval); Python's socket module lacks the name
SO_MEMINFO = 55  # Linux: the socket's memory; first the receive queue's bytes, then the receive buffer's size
MAX_WAIT = 0.005  # seconds a query not in the reply table may have waited in a deep queue and still be answered


class UdpListener:
    """One UDP socket read straight from the event loop's readiness callback.

    A plain non-blocking socket drained with recvfrom in a loop, not an asyncio
    DatagramProtocol: on uvloop that skips the transport's per-datagram dispatch and
    measured ~85k instead of ~66k queries/s on one core (dnsperf, bench cluster).

    Overload: once a whole batch was read and over a quarter of the buffer still waits (the
    socket is backlogged), datagrams are read with their kernel arrival time, and a query that
    misses the reply table after waiting more than MAX_WAIT is dropped unanswered. Table hits
    cost ~1 us and are always answered; misses (a random-name flood) cost ~10x that. So the
    queue stays near a quarter of the buffer, the rest absorbs stalls, and the names clients
    really use are answered within milliseconds instead of being dropped alike with the flood
    from a full buffer (measured: 100% within 50 ms at 50,000 random names/s, was 42%; with
    MAX_WAIT 20 ms the equilibrium queue nearly filled the buffer: 98%).
    """

    BATCH = 64  # datagrams per wake-up, so TCP and source updates get their turn
    READ = MAX_QUERY + 1  # one byte more than a query may have: a longer datagram is seen, and gets FORMERR

    def __init__(self, sock: socket.socket, responder: Responder, listener: Listener,
                 forwarder: Forwarder | None = None, allowed: Allowed | None = None, shed_after: float = 0.0) -> None:
        self.sock = sock
        self.responder = responder
        self.listener = listener
        self.backlogged = False
        self.late = 0  # queries dropped for waiting too long
        self.forwarder = forwarder
        self.allowed = allowed
        self.shed_after = shed_after if forwarder is not None else 0.0
        # With a forwarder, misses wait in this queue (oldest first) and are answered by _work, at
        # most BATCH per turn of the loop; hits_only() reads the socket between two pieces of
        # forwarding work, answers the table hits at once and queues the misses.
        self._queue: collections.deque[tuple[bytes, Any, float]] = collections.deque()  # (query, client, arrival)
        self._scheduled = False  # _work is due in this turn of the loop

    def readable(self) -> None:
        backlogged = self.backlogged
        recvfrom, recvmsg = self.sock.recvfrom, self.sock.recvmsg
        fast, send = self.responder.fast, self._send
        counts, observe, size = self.listener.counts, self.listener.duration.observe, self.READ
        unpack, wall = _TIMEVAL.unpack_from, time.time
        ancillary: list = []
        allowed = self.allowed
        misses: list[tuple[bytes, Any]] = []
        last = started = perf_counter()
        # Shedding (see _work): the batch's misses are judged by the wait of its first query, in the
        # socket (kernel timestamp) and then in the queue.
        shed_after, arrived = self.shed_after, 0.0
        full = True
        for n in range(self.BATCH):
            try:
                if backlogged:
                    data, ancillary, _, addr = recvmsg(size, 32)
                elif n == 0 and shed_after:
                    data, ancillary, _, addr = recvmsg(size, 32)
                    if ancillary and len(ancillary[0][2]) >= 16:
                        seconds, micros = unpack(ancillary[0][2])
                        arrived = last - (wall() - seconds - micros * 1e-6)
                else:
                    data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                self.backlogged = full = False
                break
            except OSError as exc:
                log.debug("UDP receive error: %s", exc)
                full = False
                break
            if allowed is not None and not allowed(addr[0]):
                reply = refused(data)
            else:
                reply = fast(data, MIN_PAYLOAD, counts)
                if reply is None:
                    if backlogged and ancillary and len(ancillary[0][2]) >= 16:
                        seconds, micros = unpack(ancillary[0][2])
                        if wall() - seconds - micros * 1e-6 > MAX_WAIT:
                            self.late += 1
                            continue  # the client has likely given up or retried; others are waiting
                    # Table hits first: the batch's misses (~10-100x the work) are answered after
                    # every hit in it, so a cluster name never waits behind a flood's misses.
                    misses.append((data, addr))
                    continue
            if reply is not None:
                send(reply, addr)
            now = perf_counter()
            observe(now - last)  # one clock read per query: receive, answer and send
            last = now
        if misses:
            if self.forwarder is None:
                self._misses(misses, False)  # no forwards: a miss costs ~10 hits, answered in place
            else:
                self._enqueue(misses, arrived or started)
        if full:
            self.backlogged = self._deep()  # a full batch: is much more waiting?

    QUEUE = 8 * BATCH  # misses waiting in the queue at most; beyond, a batch's misses are answered in place

    def _enqueue(self, misses: list[tuple[bytes, Any]], arrived: float) -> None:
        queue = self._queue
        if len(queue) >= self.QUEUE:
            self._misses(misses, True)  # already deep: bounded memory (and shed, if saturated)
            return
        queue.extend([(data, addr, arrived) for data, addr in misses])
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._work)

    def _work(self) -> None:
        """The oldest BATCH queued misses, once per turn of the loop (as readable() answered a batch
        before the queue): upstream replies and TCP get their turn between, at the same pace.

        Shedding: when the first of them waited over shed_after since it arrived (or upstream replies
        wait to be handled), the server may be saturated; then a miss that would go upstream while
        many forwards are in flight gets REFUSED at once (an uncached forward costs ~100x a table
        hit: forwarded work is what delays everyone). A wait alone may be a CPU stolen by a
        neighbour, and few forwards in flight are not the cause."""
        self._scheduled = False
        queue = self._queue
        if not queue:
            return
        waited = perf_counter() - queue[0][2] > self.shed_after
        # A batch that waited is mostly shed (~30 us each; only while under 32 forwards are in flight does
        # one go upstream): then the whole queue, else a true open-loop flood outgrows a batch per turn,
        # fills the queue, and table hits wait in the socket again.
        pop = queue.popleft
        batch = []
        for _ in range(len(queue) if waited and self.shed_after else min(len(queue), self.BATCH)):
            data, addr, _arrived = pop()
            batch.append((data, addr))
        self._misses(batch, waited)
        if queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._work)

    def _misses(self, misses: list[tuple[bytes, Any]], waited: bool) -> None:
        miss, send, counts, observe = self.responder.miss, self._send, self.listener.counts, self.listener.duration.observe
        hits_only = self.hits_only if self.forwarder is not None else None
        last = perf_counter()
        for data, addr in misses:
            reply = miss(data, MIN_PAYLOAD, counts)
            if reply.__class__ is Pending:
                reply = self._forward(reply, addr, waited)  # type: ignore[arg-type]
            if reply is not None:
                send(reply, addr)
            now = perf_counter()
            observe(now - last)
            last = now
            if hits_only is not None:
                hits_only()

    HITS_ONLY = 16  # datagrams read per hits_only() call

    def hits_only(self) -> None:
        """Between two pieces of forwarding work (misses, upstream replies): answer the table hits
        waiting in the socket now and queue its misses for _work (a miss costs ~100 hits: a cluster
        name must not wait for them). At most QUEUE wait; the rest stays in the socket."""
        queue = self._queue
        if len(queue) >= self.QUEUE:
            return
        fast, send, counts, recvfrom = self.responder.fast, self._send, self.listener.counts, self.sock.recvfrom
        allowed, observe = self.allowed, self.listener.duration.observe
        last = perf_counter()
        for _ in range(self.HITS_ONLY):
            try:
                data, addr = recvfrom(self.READ)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("UDP receive error: %s", exc)
                break
            if allowed is not None and not allowed(addr[0]):
                reply = refused(data)
                if reply is not None:
                    send(reply, addr)
                continue
            reply = fast(data, MIN_PAYLOAD, counts)
            if reply is None:
                queue.append((data, addr, last))  # its wait in the socket is short: this runs often
                if len(queue) >= self.QUEUE:
                    break
                continue
            send(reply, addr)
            now = perf_counter()
            observe(now - last)
            last = now
        if queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._work)

    def _send(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            pass  # send buffer full: the reply is lost, as the kernel would lose it
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)

    def _deep(self) -> bool:
        """Over a quarter of the receive buffer waits (~300 queries): then stale misses are dropped.

        A closed-loop client with a few hundred queries in flight keeps the socket busy without
        ever being late; only a queue this deep is overload."""
        try:
            alloc, size = _MEMINFO.unpack_from(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8))
        except (OSError, struct.error):
            return True  # no SO_MEMINFO: a full batch is the sign
        return alloc * 4 > size


    def _forward(self, pending: Pending, addr: tuple, waited: bool = False) -> bytes | None:
        """A cached reply at once; REFUSED at once when shedding; else the forwarder's reply is sent
        when it comes (by callback: no task per query)."""
        forwarder = self.forwarder
        assert forwarder is not None  # the Responder returns Pending only when upstreams are configured
        reply = forwarder.now(pending, self.listener.counts)
        if reply is None and self.shed_after and forwarder.saturated(waited):
            return forwarder.shed(pending, self.listener.counts)
        if reply is None:
            start = perf_counter()
            sendto, observe = self.sock.sendto, self.listener.duration.observe

            def send(reply: bytes) -> None:
                try:
                    sendto(reply, addr)
                except OSError as exc:
                    log.debug("UDP send to %s failed: %s", addr, exc)
                observe(perf_counter() - start)

            forwarder.ask(pending, self.listener.counts, send)
        return reply


_TIMEVAL = struct.Struct("@ll")
_MEMINFO = struct.Struct("@II")


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


class Slots:
    """The TCP connection limit of the whole server: one count per worker in shared memory.

    ``counts`` is a ``multiprocessing.Array`` (one int per worker, with its lock) when several
    processes serve, else a plain list. Each worker changes only its own count, under the lock,
    so a restarted worker's count can be reset by the supervisor without guessing.
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
