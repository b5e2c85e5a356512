"""UDP exchanges with upstreams driven by callbacks, on sockets opened ahead of need.

Every upstream query still gets its own socket, bound by the kernel to a random ephemeral port
(``bind`` to port 0, the same randomisation as an implicit bind), and a fresh random ID; a socket
serves one query and is closed. What moves off the query's critical path is the set-up: spare
sockets are opened (and bound) after replies went out (one opened for each one closed), and the
sockets in use are watched through one private epoll registered once with the event loop, so a
query costs one ``epoll_ctl`` instead of an event-loop reader added and removed (measured: the
uvloop reader pair plus socket creation ~16 us of a ~100 us CPU budget per forwarded query).

A reply is accepted only from the address the query went to, with the same ID and the same
question byte for byte (case included); anything else is dropped, counted, and the wait goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable

from dnsd.servers import Upstream
from dnsd.upstream.message import Reply
from dnsd.upstream.transport import awaited, build_query, reply_to

SPARE = 64  # sockets kept open and bound per address family; refilled off the critical path
READY = 8  # upstream replies handled per turn of the event loop (each ~100 us with its send)
# ... when the listeners answer their table hits between two replies (``between``): a turn may then
# be longer without a cluster name waiting, and the forwards in flight fall as fast as the listener
# queues new ones (with READY, a saturated flood forwards less: turns as long, with fewer replies).
READY_BETWEEN = 32
Done = Callable[[Reply | None, str], None]  # (the reply, or None and why not)


class _Exchange:
    __slots__ = ("done", "dropped", "fd", "qid", "question", "sock", "target", "timer")

    def __init__(self, sock: socket.socket, target: tuple[str, int], qid: bytes, question: bytes,
                 dropped: Callable[[str], None], done: Done) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.target = target
        self.qid = qid
        self.question = question
        self.dropped = dropped
        self.done = done
        self.timer: asyncio.TimerHandle | None = None


class Exchanges:
    """The UDP exchanges of one process (one event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spare: int = SPARE) -> None:
        self.loop = loop
        self.spare_size = spare
        self._epoll = select.epoll()
        self._waiting: dict[int, _Exchange] = {}
        self._spare: dict[int, list[socket.socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self.behind = False
        self._used: set[int] = set()  # the families asked for: only those are refilled
        # Called between two replies: the listeners answer the table hits that arrived meanwhile,
        # so a cluster name never waits behind a run of upstream replies.
        self.between: list[Callable[[], None]] = []
        loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._waiting)

    def send(self, upstream: Upstream, question: bytes, timeout: float, dropped: Callable[[str], None],
             done: Done) -> None:
        """Send ``question`` (name, type, class in wire form) to ``upstream``; ``done`` is called once,
        from the loop, with the checked and parsed reply or with None and the reason."""
        family = socket.AF_INET6 if upstream.family == 6 else socket.AF_INET
        spare = self._spare[family]
        try:
            sock = spare.pop() if spare else _open(family)
        except OSError as exc:
            self.loop.call_soon(done, None, str(exc))
            return
        if family not in self._used:
            self._used.add(family)
            self.loop.call_soon(self._refill)  # the first use of a family fills its spares
        query, qid = build_query(question)
        target = (upstream.host, upstream.port)
        ex = _Exchange(sock, target, qid, question, dropped, done)
        try:
            sock.sendto(query, target)
            self._epoll.register(ex.fd, select.EPOLLIN)
        except OSError as exc:
            sock.close()
            self.loop.call_soon(done, None, str(exc))
            return
        self._waiting[ex.fd] = ex
        ex.timer = self.loop.call_later(timeout, self._expire, ex)

    async def exchange(self, upstream: Upstream, question: bytes, timeout: float,
                       dropped: Callable[[str], None]) -> Reply:
        """``send`` as a coroutine: the reply, or UpstreamError."""
        return await awaited(self.loop, lambda done: self.send(upstream, question, timeout, dropped, done))

    def _ready(self) -> None:
        waiting = self._waiting
        # At most READY replies per turn of the loop (the epoll stays readable for the rest): the
        # listeners get their turn between, so a table hit never waits behind a burst of replies.
        ready = READY_BETWEEN if self.between else READY
        events = self._epoll.poll(0, ready)
        self.behind = len(events) == ready  # more replies wait than one turn handles
        between = self.between
        for fd, _ in events:
            ex = waiting.get(fd)
            if ex is not None:
                self._read(ex)
                for hook in between:
                    hook()

    def _read(self, ex: _Exchange) -> None:
        sock = ex.sock
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self._finish(ex, None, str(exc))
                return
            if addr[:2] != ex.target:
                ex.dropped("address")
                continue
            reply, reason = reply_to(data, ex.qid, ex.question)
            if reply is not None:
                self._finish(ex, reply, "")
                return
            ex.dropped(reason)

    def _expire(self, ex: _Exchange) -> None:
        if self._waiting.get(ex.fd) is ex:
            self._finish(ex, None, "timeout")

    def _finish(self, ex: _Exchange, reply: Reply | None, why: str) -> None:
        del self._waiting[ex.fd]
        if ex.timer is not None:
            ex.timer.cancel()
        family = ex.sock.family
        try:
            ex.done(reply, why)  # the client's reply goes out first; the clean-up can wait for it
        finally:
            ex.sock.close()  # closing also takes it out of the epoll set
            spare = self._spare[family]
            if len(spare) < self.spare_size:  # one used, one opened: never a batch of opens in a query's way
                with contextlib.suppress(OSError):  # out of descriptors or ports: the next query opens its own
                    spare.append(_open(family))

    def _refill(self) -> None:
        for family in self._used:
            spare = self._spare[family]
            while len(spare) < self.spare_size:
                try:
                    spare.append(_open(family))
                except OSError:  # out of descriptors or ports: the next query opens its own, or fails
                    break

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        for ex in list(self._waiting.values()):
            if ex.timer is not None:
                ex.timer.cancel()
            ex.sock.close()
        self._waiting.clear()
        for spare in self._spare.values():
            for sock in spare:
                sock.close()
            spare.clear()
        self._epoll.close()


def _open(family: int) -> socket.socket:
    """A UDP socket bound now to a port the kernel picks at random from the ephemeral range."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["Exchanges"]
