"""TCP: the connection limit of the whole server, and the connections of one process (RFC 7766)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from dnsd.answer.responder import Responder, refused
from dnsd.answer.transfer import ZoneTransfer
from dnsd.dns.const import TCP_LIMIT
from dnsd.dns.query import Pending
from dnsd.net.acl import Allowed
from dnsd.observe.metrics import Listener
from dnsd.runtime import release_heap

if TYPE_CHECKING:
    from dnsd.observe.tap import Tap
    from dnsd.upstream.forwarder import Forwarder



class ConnectionCounts(Protocol):
    """One count per serving process, with the lock that guards them (process/ipc.py)."""

    def get_lock(self) -> contextlib.AbstractContextManager[Any]: ...
    def __getitem__(self, number: int) -> int: ...
    def __setitem__(self, number: int, value: int) -> None: ...
    def __iter__(self) -> Iterator[int]: ...
log = logging.getLogger(__name__)
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


READ_LIMIT = 4096  # bytes of queries a connection may have buffered unanswered while its replies wait
FLIGHTS = 64  # a connection's queries with the forwarder at once; then its next queries wait for one to land
WRITE_HIGH = 64 << 10  # reply bytes a connection may have unsent before its queries wait (a peer that does not read)
TRIM_AFTER = 64  # connections closed since the heap was last given back


class TcpConnections:
    """The TCP connections of one process's listeners (RFC 7766): several queries per connection,
    answered as they come, those the forwarder takes when their answer does (out of order)."""

    def __init__(self, responder: Responder, slots: Slots, idle_timeout: float, forwarder: Forwarder | None = None,
                 allowed: Allowed | None = None, transfer: ZoneTransfer | None = None, tap: Tap | None = None) -> None:
        self.responder = responder
        self.slots = slots
        self.idle_timeout = idle_timeout
        self.forwarder = forwarder
        self.allowed = allowed
        self.transfer = transfer
        self.tap = tap
        self._closed_since_trim = 0
        self._connections: set[_Connection] = set()

    def connection(self, lst: Listener) -> asyncio.Protocol:
        """A protocol for one accepted connection (loop.create_server's factory, with the listener's counters)."""
        return _Connection(self, lst)

    def _gone(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        self._closed_since_trim += 1
        closed = self._closed_since_trim
        if closed >= TRIM_AFTER and (not self._connections or closed >= 16 * TRIM_AFTER):
            self._closed_since_trim = 0
            # Closed connections leave cycles (a transport, its protocol, buffers): collect them,
            # then give the freed heap back to the OS.
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
        """Stop reading; let connections finish what they are answering (forwards, transfers); close them."""
        for conn in list(self._connections):
            conn.stop_reading()
        deadline = time.monotonic() + grace
        while any(c.busy for c in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn.close()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class _Connection(asyncio.Protocol):
    """One TCP connection: queries parsed from what arrives, answered in place when the reply is at
    hand (every reply of one read written at once), or when the forwarder's comes.

    Flow control: past WRITE_HIGH of unsent replies, no more queries are answered and the socket is
    not read until the peer reads. Idle: a peer that neither sends nor reads for the idle timeout is
    cut (aborted when replies are left unsent: closing would wait for them)."""

    def __init__(self, owner: TcpConnections, lst: Listener) -> None:
        self.owner = owner
        self.lst = lst
        self.transport: asyncio.Transport | None = None
        self.peer: Any = ("", 0)
        self.buffer = b""
        self.forwards = 0  # queries with the forwarder
        self.transferring = False  # a zone transfer is being written: later queries wait
        self.blocked = False  # the peer does not read: writes are paused
        self.eof = False  # the peer will send nothing more
        self.reading = True
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        """Replies are owed: forwards or a transfer under way, or queries waiting (for the peer to read, or
        for room among the forwards)."""
        buf = self.buffer
        return bool(self.forwards or self.transferring or (len(buf) >= 2 and len(buf) >= 2 + ((buf[0] << 8) | buf[1])))

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        owner = self.owner
        if not owner.slots.acquire():
            self.transport = None
            transport.abort()  # over the cap: refuse at once rather than queue without bound
            return
        owner._connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.peer = transport.get_extra_info("peername") or ("", 0)
        self.timer = asyncio.get_running_loop().call_later(owner.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.buffer = self.buffer + data if self.buffer else data
        self._answer()
        if len(self.buffer) > READ_LIMIT and self.reading and (self.blocked or self.transferring or self.forwards >= FLIGHTS):
            self.stop_reading()  # queries wait in the socket, not here

    def pause_writing(self) -> None:
        self.blocked = True
        if self.drained is None:
            self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.blocked = False
        self.last = time.monotonic()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None
        if not self.transferring:
            self._answer()
            if self.eof and not self.busy:
                self.close()
            self._read()

    def eof_received(self) -> bool:
        """The peer sent all it will: close now, or once the replies still owed are written."""
        self.eof = True
        return self.busy

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused at connection_made: it never held a slot
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.cancel()
        for task in self.tasks:
            task.cancel()
        self.owner.slots.release()
        self.owner._gone(self)

    # -- answering ------------------------------------------------------------------------
    def _answer(self) -> None:
        """Answer every whole query buffered, while the peer reads and no transfer is being written."""
        buf, transport = self.buffer, self.transport
        if transport is None or len(buf) < 2:
            return
        owner, lst = self.owner, self.lst
        counts, answer, allowed, tap = lst.counts, owner.responder.answer, owner.allowed, owner.tap
        peer = self.peer[0]
        out: list[bytes] = []
        i, n = 0, len(buf)
        while n - i >= 2 and not self.blocked and not self.transferring and self.forwards < FLIGHTS:
            end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            if end > n:
                break
            query = buf[i + 2 : end]
            i = end
            start = perf_counter()
            reply: bytes | Pending | None
            if allowed is not None and not (peer and allowed(peer)):
                reply = refused(query)
            else:
                messages = owner.transfer(query, peer) if owner.transfer else None
                if messages is not None:
                    self._write(out)
                    self._spawn(self._transfer(messages))
                    break
                reply = answer(query, TCP_LIMIT, counts)
            if isinstance(reply, Pending):
                reply = self._forward(reply, query, start)
                if reply is None:
                    continue  # the forwarder answers it later
            if reply is None:
                self.buffer = b""
                self._write(out)
                self.close()  # nothing to say to it (e.g. garbage): the connection ends
                return
            out.append(len(reply).to_bytes(2, "big") + reply)
            seconds = perf_counter() - start
            lst.duration.observe(seconds)
            if tap is not None:
                tap.one(query, self.peer, reply, seconds, True)
        self.buffer = buf[i:]
        self._write(out)

    def _write(self, out: list[bytes]) -> None:
        if out and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def _forward(self, pending: Pending, query: bytes, start: float) -> bytes | None:
        forwarder = self.owner.forwarder
        assert forwarder is not None  # the Responder returns Pending only when upstreams are configured
        reply = forwarder.now(pending, self.lst.counts)
        if reply is None:
            self.forwards += 1
            self._spawn(self._forwarded(pending, query, start))
        return reply

    async def _forwarded(self, pending: Pending, query: bytes, start: float) -> None:
        forwarder = self.owner.forwarder
        assert forwarder is not None
        try:
            reply = await forwarder.answer(pending, self.lst.counts)
        finally:
            self.forwards -= 1
        if self.transport is None or self.transport.is_closing():
            return
        if self.forwards == FLIGHTS - 1 and not self.transferring:
            self._answer()  # room again for the queries that waited
            self._read()
        self.transport.write(len(reply).to_bytes(2, "big") + reply)
        seconds = perf_counter() - start
        self.lst.duration.observe(seconds)
        if self.owner.tap is not None:
            self.owner.tap.one(query, self.peer, reply, seconds, True)
        if self.eof and not self.busy:
            self.close()

    async def _transfer(self, messages: Iterable[bytes]) -> None:
        """A zone transfer's messages, one at a time (queries of other connections get their turn between);
        this connection's later queries wait for its end."""
        self.transferring = True
        try:
            for message in messages:
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                transport.write(len(message).to_bytes(2, "big") + message)
                if self.drained is not None:
                    await self.drained
                await asyncio.sleep(0)
        finally:
            self.transferring = False
        self._answer()
        if self.eof and not self.busy:
            self.close()
        self._read()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("TCP query from %s failed", self.peer[0], exc_info=task.exception())
            self.close()

    # -- the connection's life ---------------------------------------------------------------
    def _idle(self) -> None:
        """The idle timer: cut a peer that neither sent nor read for the timeout, else look again later."""
        transport = self.transport
        if transport is None:
            return
        left = self.last + self.owner.idle_timeout - time.monotonic()
        if left > 0 or (self.busy and not self.blocked):
            self.timer = asyncio.get_running_loop().call_later(max(left, 0.05), self._idle)
            return
        self.close()

    def _read(self) -> None:
        if not self.reading and self.transport is not None and not self.blocked:
            self.reading = True
            self.transport.resume_reading()

    def stop_reading(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def close(self) -> None:
        """End the connection: closed when nothing is left to write, aborted when the peer does not read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


__all__ = ["READ_LIMIT", "Slots", "TcpConnections"]
