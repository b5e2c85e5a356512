"""Asking a route's upstreams, and what their answer becomes.

Each try goes to one upstream (UDP, TCP after a truncated reply, or TCP/TLS throughout), within
the time left; its outcome is booked on the upstream's health (pool.py) and in the metrics. The
first reply of any rcode ends the search. What the upstreams said becomes one entry: the reply
(cached), else a stale answer (RFC 8767), else SERVFAIL; everyone waiting for the question
(inflight.py) gets it before it goes into the cache.

The forwarder makes a route's first try itself by callback (no task) and hands over here, in a
task, only when that try is not the end of it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from dnsd.config import Config
from dnsd.dns.const import AXFR, IXFR, REFUSED, SERVFAIL
from dnsd.dns.reply import Entry, make_entry
from dnsd.servers import Upstream
from dnsd.upstream import transport
from dnsd.upstream.cache import ForwardCache, Item
from dnsd.upstream.compose import error_entry
from dnsd.upstream.inflight import Inflight
from dnsd.upstream.message import Reply, normalise
from dnsd.upstream.pipe import Pipe, Pipes
from dnsd.upstream.pool import HEALTH_QUESTION, Pool, State
from dnsd.upstream.sockets import Exchanges
from dnsd.upstream.stats import ForwardStats

log = logging.getLogger(__name__)
MIN_TCP_TIME = 0.05  # seconds a TCP retry after a truncated reply gets even when the try's time is up


def uses_tls(config: Config) -> bool:
    """Some upstream, default or of a stub domain, is DNS over TLS."""
    return any(u.tls_name for u in (*config.upstreams, *(u for s in config.stub_domains for u in s.servers)))


class Fetcher:
    """The upstream side of one forwarder: its UDP exchanges, and the tries after the first."""

    def __init__(self, config: Config, cache: ForwardCache, stats: ForwardStats, inflight: Inflight) -> None:
        self.config = config
        self.cache = cache
        self.stats = stats
        self.inflight = inflight
        self.payload = config.udp_max_payload
        self.tls: ssl.SSLContext | None = transport.default_tls(config.upstream_tls_ca) if uses_tls(config) else None
        self.udp: Exchanges | None = None  # made in the running loop, at the first use
        # Told of each upstream's reply: (upstream, the query it answers, the reply, perf_counter when sent).
        self.tapped: Callable[[Upstream, bytes, bytes, float], None] | None = None
        self._pipes: Pipes | None = None  # tcp:// upstreams' kept-open connections, likewise

    def exchanges(self) -> Exchanges:
        if self.udp is None:
            self.udp = Exchanges(asyncio.get_running_loop())
        return self.udp

    def pipe(self, upstream: Upstream) -> Pipe:
        if self._pipes is None:
            self._pipes = Pipes(asyncio.get_running_loop(), self.stats.drop)
        return self._pipes[upstream]

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self._pipes is not None:
            self._pipes.close()
            self._pipes = None

    def error(self, qwire: bytes, qtype: int, rcode: int) -> Entry:
        return error_entry(qwire, qtype, rcode, self.payload)

    # -- what the askers get ---------------------------------------------------------------
    def heard(self, pool: Pool, state: State, reply: Reply | None, why: str, started: float) -> None:
        """The outcome of one try of ``state`` (sent at ``started``): its health, and the metrics."""
        if reply is None:
            log.debug("upstream %s: %s", state.upstream, why)
            pool.failed(state)
        else:
            pool.succeeded(state)
            self.stats.answered(state.label, reply.rcode, time.perf_counter() - started)
            if self.tapped is not None:
                self.tapped(state.upstream, transport.query_of(reply.wire, reply.qend), reply.wire, started)

    def settle(self, key: bytes, qwire: bytes, qtype: int, reply: Reply | None) -> None:
        """Everyone waiting for ``key`` gets what the upstreams said; the cache insertion comes after,
        off their path."""
        try:
            entry, item = self.conclude(key, qwire, qtype, reply, stale_ok=True)
        except Exception:  # a bug: the askers get SERVFAIL, and the question is not left in flight
            log.exception("forwarding failed")
            self.inflight.finish(key, self.error(qwire, qtype, SERVFAIL))
            return
        self.inflight.finish(key, entry)
        if item is not None:
            self.cache.store(key, item)

    def conclude(self, key: bytes, qwire: bytes, qtype: int, reply: Reply | None,
                 stale_ok: bool) -> tuple[Entry, Item | None]:
        """The entry for what the upstreams said, and the item for the cache to store (None: nothing to
        keep): the reply unless it is SERVFAIL or missing, else a stale answer, else SERVFAIL."""
        if reply is not None and reply.rcode != SERVFAIL:
            item, entry = self.cache.prepare(normalise(reply), (qtype, reply.rcode))
            return entry, item
        stale = self.cache.stale(key) if stale_ok else None  # RFC 8767: every upstream failed (or said SERVFAIL)
        if stale is not None:
            return stale, None
        if reply is not None:
            return make_entry(normalise(reply).wire, reply.qend, 0, (qtype, SERVFAIL), self.payload), None
        return self.error(qwire, qtype, SERVFAIL), None

    # -- the tries after the first, in a task -------------------------------------------------
    async def rest(self, key: bytes, qwire: bytes, qtype: int, pool: Pool, states: list[State], deadline: float,
                   truncated: float | None = None) -> None:
        """``states`` in turn, then ``settle``. ``truncated``: when the try of the first of them that came
        back truncated was sent; it is asked again over TCP first."""
        try:
            reply = None
            if truncated is not None:
                left = self.config.upstream_timeout - (time.perf_counter() - truncated)
                reply = await self.exchange(pool, states[0], key, max(left, MIN_TCP_TIME), tcp=True, started=truncated)
                states = states[1:]
            if reply is None:
                reply = await self.attempts(pool, states, key, deadline)
        except asyncio.CancelledError:  # shutting down: nobody is answered
            self.inflight.pop(key, None)
            raise
        except Exception:  # a bug: the askers get SERVFAIL, not silence
            log.exception("forwarding failed")
            self.inflight.finish(key, self.error(qwire, qtype, SERVFAIL))
            return
        self.settle(key, qwire, qtype, reply)

    async def refresh(self, key: bytes, qwire: bytes, qtype: int, pool: Pool | None) -> None:
        """A stale answer went out: fetch a fresh one for the cache (and whoever asked meanwhile)."""
        entry: Entry | None = None
        try:
            entry = await self.fetch(key, qwire, qtype, pool)
        except asyncio.CancelledError:
            self.inflight.pop(key, None)
            raise
        except Exception:
            log.exception("refreshing a stale answer failed")
        self.inflight.finish(key, entry if entry is not None else self.error(qwire, qtype, SERVFAIL))

    async def fetch(self, key: bytes, qwire: bytes, qtype: int, pool: Pool | None) -> Entry:
        """Ask ``pool`` for a refresh: a stale answer already went out, or the cached one is still
        fresh, so a failure is SERVFAIL, never a stale answer."""
        self.stats.misses += 1
        if pool is None or qtype in (AXFR, IXFR):
            return self.error(qwire, qtype, REFUSED)
        deadline = time.monotonic() + self.config.forward_timeout
        reply = await self.attempts(pool, pool.order(), key, deadline)
        entry, item = self.conclude(key, qwire, qtype, reply, stale_ok=False)
        if item is not None:
            self.cache.store(key, item)
        return entry

    async def attempts(self, pool: Pool, states: list[State], question: bytes, deadline: float) -> Reply | None:
        """Each upstream in turn, within the deadline; the first reply (any rcode) ends the search."""
        for state in states:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reply = await self.exchange(pool, state, question, min(left, self.config.upstream_timeout))
            if reply is not None:
                return reply
        return None

    async def exchange(self, pool: Pool, state: State, question: bytes, timeout: float, tcp: bool = False,
                       started: float | None = None) -> Reply | None:
        """One upstream asked; ``tcp`` straight over TCP. ``started``: a retry of a try sent then (and
        counted then)."""
        upstream = state.upstream
        if started is None:
            self.stats.sent(state.label)
            started = time.perf_counter()
        reply: Reply | None = None
        why = ""
        try:
            if upstream.tcp:
                reply = await self.pipe(upstream).exchange(question, timeout)
            elif tcp or self.config.force_tcp or upstream.tls_name:
                reply = await transport.tcp(upstream, question, timeout, self.stats.drop, self.tls)
            else:
                reply = await self.exchanges().exchange(upstream, question, timeout, self.stats.drop)
                if reply.wire[2] & 0x02:  # TC: the answer is bigger than UDP could carry
                    left = timeout - (time.perf_counter() - started)
                    reply = await transport.tcp(upstream, question, max(left, MIN_TCP_TIME), self.stats.drop)
        except transport.UpstreamError as exc:
            reply, why = None, str(exc)
        self.heard(pool, state, reply, why, started)
        return reply

    # -- questions that are not a client's ------------------------------------------------------
    async def health_probe(self, upstream: Upstream) -> None:
        """A pool's health check of a down upstream: any reply counts; UpstreamError if none."""
        if upstream.tcp:
            await self.pipe(upstream).exchange(HEALTH_QUESTION, self.config.upstream_timeout)
        elif self.config.force_tcp or upstream.tls_name:
            await transport.tcp(upstream, HEALTH_QUESTION, self.config.upstream_timeout, self.stats.drop, self.tls)
        else:
            await self.exchanges().exchange(upstream, HEALTH_QUESTION, self.config.upstream_timeout, self.stats.drop)

    def send_probe(self, upstream: Upstream, question: bytes) -> None:
        """A loop probe (loops.py): its reply, if any, says nothing; only the question coming back to us does."""
        if upstream.tcp:
            self.pipe(upstream).send(question, self.config.upstream_timeout, _ignore)
        else:
            self.exchanges().send(upstream, question, self.config.upstream_timeout, _ignore, _ignore)


def _ignore(*_args: object) -> None:
    pass


__all__ = ["MIN_TCP_TIME", "Fetcher", "uses_tls"]
