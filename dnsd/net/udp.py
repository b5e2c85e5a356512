"""The UDP listener: one socket drained from the event loop's readiness callback.

It moves bytes between the socket and the Responder (and the forwarder for what goes upstream);
it decides nothing about DNS. Overload handling (late drops, shedding, table hits first) is here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from dnsd.answer.responder import Responder, refused
from dnsd.dns.const import MAX_QUERY, MIN_PAYLOAD
from dnsd.dns.query import Pending
from dnsd.net import mmsg
from dnsd.observe.metrics import Listener

if TYPE_CHECKING:
    from dnsd.net.acl import Allowed
    from dnsd.observe.tap import Answered, Tap
    from dnsd.upstream.forwarder import Forwarder

log = logging.getLogger(__name__)
perf_counter = time.perf_counter


SO_TIMESTAMP = 29  # Linux's (SO_TIMESTAMP_OLD: a struct timeval); Python's socket module lacks the name
SO_MEMINFO = 55  # Linux: the socket's memory; first the receive queue's bytes, then the receive buffer's size
MAX_WAIT = 0.005  # seconds a query not in the reply table may have waited in a deep queue and still be answered


class UdpListener:
    """One UDP socket read straight from the event loop's readiness callback.

    A plain non-blocking socket drained with recvfrom in a loop, not an asyncio
    DatagramProtocol: on uvloop that skips the transport's per-datagram dispatch, about a
    quarter of the time per query on the fast path (docs/performance.md).

    Overload: once a whole batch was read and over a quarter of the buffer still waits (the
    socket is backlogged), datagrams are read with their kernel arrival time, and a query that
    misses the reply table after waiting more than MAX_WAIT is dropped unanswered. Table hits
    cost ~1 us and are always answered; misses (a random-name flood) cost ~10x that. So the
    queue stays near a quarter of the buffer, the rest absorbs stalls, and the names clients
    really use are answered within milliseconds instead of being dropped alike with the flood
    from a full buffer. A longer MAX_WAIT lets the equilibrium queue fill the buffer again
    (docs/operations.md, hostile traffic).
    """

    BATCH = 64  # datagrams per wake-up, so TCP and source updates get their turn
    READ = MAX_QUERY + 1  # one byte more than a query may have: a longer datagram is seen, and gets FORMERR

    def __init__(self, sock: socket.socket, responder: Responder, listener: Listener,
                 forwarder: Forwarder | None = None, allowed: Allowed | None = None, shed_after: float = 0.0,
                 tap: Tap | None = None) -> None:
        """``tap``: what watches the answers (top talkers, query log, dnstap); None: nothing does."""
        self.sock = sock
        self.responder = responder
        self.listener = listener
        self.backlogged = False
        self.tap = tap
        # recvmmsg/sendmmsg (mmsg.py): one system call per batch each way, while not backlogged (a
        # backlogged socket is read one datagram at a time, with its arrival time: see above).
        self.batch = mmsg.Batch(sock, self.BATCH, self.READ) if mmsg.available() else None
        # Arrival times (SO_TIMESTAMP) only while they are read: the kernel stamps every datagram while it is
        # on. Without batches the first datagram's is read for shedding (see readable()).
        self._timestamps(self.batch is None)
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
        if self.batch is not None and not self.backlogged:
            self._read_batch(self.batch)
            return
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
        tap = self.tap
        weight = tap.take(self.BATCH) if tap is not None else 0
        answered: list[Answered] | None = [] if weight or (tap is not None and tap.always) else None
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
                self._backlogged(False)
                full = False
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
                if answered is not None:
                    answered.append((data, addr, reply, perf_counter() - last))
            now = perf_counter()
            observe(now - last)  # one clock read per query: receive, answer and send
            last = now
        if answered and tap is not None:
            tap.batch(answered, weight=weight)
        if misses:
            if self.forwarder is None:
                self._misses(misses, False)  # no forwards: a miss costs ~10 hits, answered in place
            else:
                self._enqueue(misses, arrived or started)
        if full:
            self._backlogged(self._deep())  # a full batch: is much more waiting?

    def _read_batch(self, batch: mmsg.Batch) -> None:
        """readable() with one recvmmsg and one sendmmsg: table hits answered in the batch's own buffers,
        misses (and a full batch's backlog check) as readable() does them."""
        try:
            datagrams = batch.receive()
        except OSError as exc:
            log.debug("UDP receive error: %s", exc)
            return
        if not datagrams:
            return
        address, allowed, tap, counts = batch.address, self.allowed, self.tap, self.listener.counts
        started = perf_counter()
        try:
            if allowed is None:
                replies = self.responder.fast_many(datagrams, counts)
            else:
                fast = self.responder.fast
                replies = [fast(data, MIN_PAYLOAD, counts) if allowed(address(i)[0]) else refused(data) or b""
                           for i, data in enumerate(datagrams)]  # b"": a query not even REFUSED (dropped)
            left = batch.reply_all(replies)
        finally:
            batch.flush()  # whatever went wrong, no queued reply may wait for the next batch's slots
        answered = len(datagrams) - len(left)
        if answered:
            # One clock read per batch: table hits take alike, so each is counted at the batch's mean.
            mean = (perf_counter() - started) / answered
            self.listener.duration.observe_many(mean, answered)
            weight = tap.take(answered) if tap is not None else 0
            if tap is not None and (weight or tap.always):
                tap.batch([(datagrams[i], address(i), reply, mean) for i, reply in enumerate(replies) if reply],
                          weight=weight)
        if left:
            misses = [(datagrams[i], address(i)) for i in left]
            if self.forwarder is None:
                self._misses(misses, False)
            else:
                self._enqueue(misses, started)
        if len(datagrams) == self.BATCH:
            self._backlogged(self._deep())

    QUEUE = 8 * BATCH  # misses waiting in the queue at most; beyond, a batch's misses are answered in place

    def _enqueue(self, misses: list[tuple[bytes, Any]], arrived: float) -> None:
        queue = self._queue
        if len(queue) >= self.QUEUE:
            self._misses(misses, True)  # already deep: bounded memory (and shed, if saturated)
            return
        queue.extend([(data, addr, arrived) for data, addr in misses])
        self._schedule()

    def _schedule(self) -> None:
        """_work in this turn of the loop, once however many batches were queued."""
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
        if queue:
            self._schedule()

    def _misses(self, misses: list[tuple[bytes, Any]], waited: bool) -> None:
        miss, send, counts, observe = self.responder.miss, self._send, self.listener.counts, self.listener.duration.observe
        hits_only = self.hits_only if self.forwarder is not None else None
        tap = self.tap
        weight = tap.take(len(misses)) if tap is not None else 0
        answered: list[Answered] | None = [] if weight or (tap is not None and tap.always) else None
        last = perf_counter()
        for data, addr in misses:
            reply = miss(data, MIN_PAYLOAD, counts)
            if isinstance(reply, Pending):
                reply = self._forward(reply, addr, waited)
            if reply is not None:
                send(reply, addr)
                if answered is not None:
                    answered.append((data, addr, reply, perf_counter() - last))
            now = perf_counter()
            observe(now - last)
            last = now
            if hits_only is not None:
                hits_only()
        if answered and tap is not None:
            tap.batch(answered, weight=weight)

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
        tap = self.tap
        weight = tap.take(self.HITS_ONLY) if tap is not None else 0
        answered: list[Answered] | None = [] if weight or (tap is not None and tap.always) else None
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
            if answered is not None:
                answered.append((data, addr, reply, perf_counter() - last))
            now = perf_counter()
            observe(now - last)
            last = now
        if answered and tap is not None:
            tap.batch(answered, weight=weight)
        if queue:
            self._schedule()

    def _send(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            pass  # send buffer full: the reply is lost, as the kernel would lose it
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)

    def _backlogged(self, deep: bool) -> None:
        if deep != self.backlogged and self.batch is not None:
            self._timestamps(deep)  # read one datagram at a time, with its arrival time, while deep
        self.backlogged = deep

    def _timestamps(self, on: bool) -> None:
        """Stamp arriving datagrams or not. Those already queued when it turns on are stamped as they are
        read (so they count as not late): the drops begin with the next arrivals."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, int(on))

    def waiting(self) -> bool:
        """Queries wait: in the socket's receive queue, or among the misses queued here."""
        if self._queue:
            return True
        try:
            alloc, _ = _MEMINFO.unpack_from(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8))
        except (OSError, struct.error):
            return False  # no SO_MEMINFO (or closed): the drain's quiet period is the only guard
        return bool(alloc > 0)

    def _deep(self) -> bool:
        """Over a quarter of the receive buffer waits (~300 queries): then stale misses are dropped.

        A closed-loop client with a few hundred queries in flight keeps the socket busy without
        ever being late; only a queue this deep is overload."""
        try:
            alloc, size = _MEMINFO.unpack_from(self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 8))
        except (OSError, struct.error):
            return True  # no SO_MEMINFO: a full batch is the sign
        return bool(alloc * 4 > size)


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

            tap = self.tap

            def send(reply: bytes) -> None:
                try:
                    sendto(reply, addr)
                except OSError as exc:
                    log.debug("UDP send to %s failed: %s", addr, exc)
                seconds = perf_counter() - start
                observe(seconds)
                if tap is not None:
                    tap.one(pending.query, addr, reply, seconds, False)

            forwarder.ask(pending, self.listener.counts, send)
        return reply


_TIMEVAL = struct.Struct("@ll")
_MEMINFO = struct.Struct("@II")
