"""TCP: the connection limit of the whole server, and the connections of one process (RFC 7766)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from dnsd.answer.responder import Responder, refused
from dnsd.answer.transfer import ZoneTransfer
from dnsd.dns.const import TCP_LIMIT
from dnsd.dns.query import Pending
from dnsd.net.acl import Allowed
from dnsd.observe.metrics import Listener
from dnsd.runtime import release_heap

if TYPE_CHECKING:
    from dnsd.upstream.forwarder import Forwarder



class ConnectionCounts(Protocol):
    """One count per serving process, with the lock that guards them (process/ipc.py)."""

    def get_lock(self) -> contextlib.AbstractContextManager[Any]: ...
    def __getitem__(self, number: int) -> int: ...
    def __setitem__(self, number: int, value: int) -> None: ...
    def __iter__(self) -> Iterator[int]: ...
perf_counter = time.perf_counter


class Slots:
    """The TCP connection limit of the whole server: one count per worker in shared memory.

    ``counts`` is a SharedCounts when several processes serve, else a plain list. Each worker
    changes only its own count, under the lock, so a restarted worker's count can be reset by
    the supervisor without guessing.
    """

    def __init__(self, limit: int, counts: ConnectionCounts | None = None, number: int = 0) -> None:
        self.limit = limit
        self.counts: ConnectionCounts | list[int] = counts if counts is not None else [0]
        self.number = number
        self.lock: contextlib.AbstractContextManager[Any] = (
            counts.get_lock() if counts is not None else contextlib.nullcontext())

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


class TcpConnections:
    """The TCP connections of one process's listeners."""

    def __init__(self, responder: Responder, slots: Slots, idle_timeout: float, forwarder: Forwarder | None = None,
                 allowed: Allowed | None = None, transfer: ZoneTransfer | None = None) -> None:
        self.responder = responder
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.forwarder = forwarder
        self.allowed = allowed
        self.transfer = transfer
        self._closed_since_trim = 0
        self._connections: set[asyncio.Task[Any]] = set()
        self._busy: set[asyncio.Task[Any]] = set()  # connections in the middle of a query

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lst: Listener) -> None:
        """RFC 7766: several queries per connection, answered in order, except those asked upstream.

        A reply is written only once the previous one left for the kernel (write buffer limit 0),
        so a connection parks at most one reply and READ_LIMIT of queries. A query that goes
        upstream is answered when the upstream replies, perhaps after later ones (RFC 7766
        6.2.1.1: clients match replies by ID), so a slow name does not hold up the cluster names
        behind it (a node cache sends all of them down one connection); at most FLIGHTS of them
        per connection, each parking its reply. A peer that neither sends nor reads for the idle
        timeout is cut: reads and writes both have the timeout, and a connection with unsent data
        is aborted, not closed (close would wait for the flush).
        """
        task = asyncio.current_task()
        transport = writer.transport
        if task is None or not self.slots.acquire():
            transport.abort()  # over the cap: refuse at once rather than queue without bound
            return
        self._connections.add(task)
        transport.set_write_buffer_limits(high=0)
        idle = self.idle_timeout
        peer = (writer.get_extra_info("peername") or ("",))[0]
        flights = _Flights()
        ended = False  # by the peer (EOF) or as idle: replies still upstream are awaited before closing
        try:
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), idle), "big")
                query = await asyncio.wait_for(reader.readexactly(size), idle)
                self._busy.add(task)
                start = perf_counter()
                reply: bytes | Pending | None
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
                if isinstance(reply, Pending):
                    assert self.forwarder is not None  # the Responder returns one only when upstreams are configured
                    cached = self.forwarder.now(reply, lst.counts)
                    if cached is None:
                        await flights.ask(self.forwarder, reply, writer, lst, start)
                        self._busy.discard(task)
                        continue
                    reply = cached
                if reply is None or transport.is_closing():
                    break  # a reset peer: queries still buffered are not answered (writing would raise)
                writer.write(len(reply).to_bytes(2, "big") + reply)
                if transport.get_write_buffer_size():
                    await asyncio.wait_for(writer.drain(), idle)
                lst.duration.observe(perf_counter() - start)
                self._busy.discard(task)
        except (asyncio.IncompleteReadError, TimeoutError):
            ended = True
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if ended and flights.count and not transport.is_closing():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(flights.landed.wait(), idle)
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

    async def drain(self, limit: float, grace: float = 3.0) -> None:
        """Serve the open connections until each closes or idles out (reads and writes keep their idle
        timeout); after ``limit`` seconds, close the rest as ``close`` does."""
        deadline = time.monotonic() + limit
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.close(grace)

    async def close(self, grace: float = 3.0) -> None:
        """Let connections finish the query they are answering; close the rest."""
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=grace)


class _Flights:
    """One connection's queries asked upstream and not answered yet."""

    LIMIT = 64  # then the connection reads no more queries until one lands

    def __init__(self) -> None:
        self.count = 0
        self.room = asyncio.Event()  # set when one lands
        self.landed = asyncio.Event()  # set while none is in flight

    async def ask(self, forwarder: Forwarder, pending: Pending, writer: asyncio.StreamWriter, lst: Listener,
                  start: float) -> None:
        while self.count >= self.LIMIT:
            self.room.clear()
            await self.room.wait()
        self.count += 1
        self.landed.clear()

        def send(reply: bytes) -> None:  # from a loop callback, perhaps before ask() returns
            self.count -= 1
            self.room.set()
            if not self.count:
                self.landed.set()
            if not writer.transport.is_closing():
                writer.write(len(reply).to_bytes(2, "big") + reply)
                lst.duration.observe(perf_counter() - start)

        forwarder.ask(pending, lst.counts, send)


__all__ = ["READ_LIMIT", "Slots", "TcpConnections"]
