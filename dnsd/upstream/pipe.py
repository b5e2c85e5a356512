"""``tcp://`` upstreams: one kept-open TCP connection each, queries pipelined on it, answers matched by
ID in whatever order they come (RFC 7766 6.2.1.1).

What a node cache needs towards the cluster DNS: no UDP through the node's conntrack table (whose
races lose queries), no handshake per query, and one connection however many queries are in
flight. IDs are unique among the connection's queries in flight; a reply counts only with the ID
and the question of one of them (transport.check), so a late reply to a query that timed out
cannot answer another. When the connection closes (the server restarting, or closing it as idle)
the queries it had not answered are sent again once on a new one, as RFC 7766 asks of clients;
a connection that cannot be made fails the queries waiting for it at once (the forwarder then
tries the next upstream, or answers stale). A new connection is made when the next query comes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import cast

from dnsd.servers import Upstream
from dnsd.upstream.message import Reply
from dnsd.upstream.transport import awaited, query_with_id, reply_to

log = logging.getLogger(__name__)
Done = Callable[[Reply | None, str], None]  # as sockets.Exchanges: the reply, or None and why


class _Ask:
    __slots__ = ("done", "qid", "question", "resent", "timer")

    def __init__(self, question: bytes, done: Done) -> None:
        self.question = question
        self.done = done
        self.qid = b""
        self.resent = False
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            size = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + size:
                break
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self.pipe.received(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.lost(self)


class Pipe:
    """The kept-open connection to one upstream, and the queries in flight on it."""

    CONNECT_TIMEOUT = 2.0

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop, dropped: Callable[[str], None]) -> None:
        self.upstream = upstream
        self.loop = loop
        self.dropped = dropped
        self.connection: _Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.queued: list[_Ask] = []  # waiting for the connection
        self.waiting: dict[int, _Ask] = {}  # sent on it, by ID
        self.connections = 0  # made so far (for the metrics and the tests)

    def send(self, question: bytes, timeout: float, done: Done) -> None:
        """Ask ``question`` (name, type, class in wire form); ``done`` is called once, from the loop."""
        ask = _Ask(question, done)
        ask.timer = self.loop.call_later(timeout, self._expire, ask)
        self._submit(ask)

    async def exchange(self, question: bytes, timeout: float) -> Reply:
        """``send`` as a coroutine: the reply, or UpstreamError."""
        return await awaited(self.loop, lambda done: self.send(question, timeout, done))

    def _submit(self, ask: _Ask) -> None:
        connection = self.connection
        if connection is not None and connection.transport is not None and not connection.transport.is_closing():
            self._write(connection, ask)
            return
        self.queued.append(ask)
        if self.connecting is None:
            self.connecting = self.loop.create_task(self._connect())

    def _write(self, connection: _Connection, ask: _Ask) -> None:
        number = random.getrandbits(16)
        while number in self.waiting:
            number = random.getrandbits(16)
        ask.qid = number.to_bytes(2, "big")
        self.waiting[number] = ask
        query = query_with_id(ask.question, ask.qid)
        assert connection.transport is not None
        connection.transport.write(len(query).to_bytes(2, "big") + query)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.CONNECT_TIMEOUT):
                _, connection = await self.loop.create_connection(
                    lambda: _Connection(self), self.upstream.host, self.upstream.port)
        except (OSError, TimeoutError) as exc:
            why = f"TCP connect: {exc or 'timeout'}"
            queued, self.queued = self.queued, []
            for ask in queued:
                self._finish(ask, None, why)
            return
        finally:
            self.connecting = None
        self.connections += 1
        self.connection = connection
        queued, self.queued = self.queued, []
        for ask in queued:
            self._write(connection, ask)

    def received(self, connection: _Connection, message: bytes) -> None:
        if connection is not self.connection or len(message) < 2:
            return
        ask = self.waiting.get(int.from_bytes(message[:2], "big"))
        if ask is None:
            self.dropped("id")  # a late reply to a query that timed out, or a stray one
            return
        reply, reason = reply_to(message, ask.qid, ask.question)
        if reply is None:
            self.dropped(reason)
            return  # the query waits on: a forged or broken reply cannot end it
        del self.waiting[int.from_bytes(ask.qid, "big")]
        self._finish(ask, reply, "")

    def lost(self, connection: _Connection) -> None:
        """The connection closed: its unanswered queries go again once, on a new one."""
        if connection is not self.connection:
            return
        self.connection = None
        asks, self.waiting = list(self.waiting.values()), {}
        for ask in asks:
            if ask.resent:
                self._finish(ask, None, "TCP connection closed")
            else:
                ask.resent = True
                self._submit(ask)

    def _expire(self, ask: _Ask) -> None:
        ask.timer = None
        if self.waiting.get(int.from_bytes(ask.qid or b"\0\0", "big")) is ask:
            del self.waiting[int.from_bytes(ask.qid, "big")]
        elif ask in self.queued:
            self.queued.remove(ask)
        self._finish(ask, None, "timeout")

    def _finish(self, ask: _Ask, reply: Reply | None, why: str) -> None:
        if ask.timer is not None:
            ask.timer.cancel()
            ask.timer = None
        try:
            ask.done(reply, why)
        except Exception:  # one asker's failure must not break the connection's reading
            log.exception("handling an upstream reply failed")

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        for ask in [*self.queued, *self.waiting.values()]:
            if ask.timer is not None:
                ask.timer.cancel()
        self.queued, self.waiting = [], {}


class Pipes:
    """The pipes of one forwarder, one per ``tcp://`` upstream, made at first use."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dropped: Callable[[str], None]) -> None:
        self.loop = loop
        self.dropped = dropped
        self.pipes: dict[Upstream, Pipe] = {}

    def __getitem__(self, upstream: Upstream) -> Pipe:
        pipe = self.pipes.get(upstream)
        if pipe is None:
            pipe = self.pipes[upstream] = Pipe(upstream, self.loop, self.dropped)
        return pipe

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.close()


__all__ = ["Pipe", "Pipes"]
