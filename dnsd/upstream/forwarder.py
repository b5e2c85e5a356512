"""The forwarder: questions dnsd does not own -> cache -> upstreams -> cache -> reply.

The listeners use ``now`` (a cache hit or a loop probe, synchronous), then ``ask`` (the reply by
callback) or ``answer`` (async). Identical questions in flight are sent upstream once
(inflight.py). A query tries its route's upstreams (route.py) in policy order, each for at most
``upstream_timeout`` seconds, all within ``forward_timeout``: after that the client gets a stale
answer (RFC 8767) or SERVFAIL, never silence.

The first upstream is asked by a callback exchange (sockets.py), so a forwarded query costs no
task; a task takes over only for what is rare: a failed or truncated first try, TCP or TLS, a
background refresh, an autopath continuation (steps.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from dnsd.config import Config
from dnsd.dns.const import AXFR, IN, IXFR, REFUSED, SERVFAIL
from dnsd.dns.names import wire_text
from dnsd.dns.query import Pending
from dnsd.dns.reply import Entry
from dnsd.upstream.cache import ForwardCache
from dnsd.upstream.compose import compose
from dnsd.upstream.fetch import Fetcher
from dnsd.upstream.inflight import Deliver, Inflight
from dnsd.upstream.loops import LOOP_SUFFIX, Loops
from dnsd.upstream.message import Reply
from dnsd.upstream.route import Routes
from dnsd.upstream.stats import ForwardStats, snapshot
from dnsd.upstream.steps import Walker

log = logging.getLogger(__name__)
# Questions in flight from which a listener whose queries wait (--shed-after) sheds new forwards:
# ~2.5 ms of reply handling queued at ~80 us each; fewer, and the wait is not the forwards' doing.
SATURATED = 32


class Forwarder:
    def __init__(self, config: Config, *, token: str | None = None) -> None:
        self.config = config
        self.payload = config.udp_max_payload  # the EDNS size our OPT advertises to clients
        self.cache = ForwardCache(config.forward_cache_size, config.forward_max_ttl, config.serve_stale,
                                  config.prefetch, self.payload, loadbalance=config.loadbalance)
        self.cache.on_prefetch = self._prefetch
        self.stats = ForwardStats()
        self._inflight = Inflight()
        self.fetcher = Fetcher(config, self.cache, self.stats, self._inflight)
        self.loops = Loops(token or config.loop_token or secrets.token_hex(8), self.stats)
        self.routes = Routes(config, self.fetcher.health_probe, self.stats.check_failed, self.loops.mark)
        self._route = self.routes.pool
        self.forwards_default = self.routes.default is not None
        self.walker = Walker(self.cache, self.resolve_entry, self.refetch, self.routes.routed, config.ttl, self.payload)
        self._refusals: dict[int, Entry] = {}
        self._tasks: set[asyncio.Task] = set()
        self.asked: Callable[[str], None] | None = None  # told each name asked upstream (top talkers)

    # -- what the Responder asks -----------------------------------------------------
    def is_stub(self, name: str) -> bool:
        return self.routes.is_stub(name)

    def entry(self, key: bytes) -> Entry | None:
        return self.cache.entry(key)

    def forget(self, names: Iterable[str]) -> None:
        self.cache.forget(names)

    def forget_derived(self) -> None:
        self.cache.forget_derived()

    # -- what the listeners ask --------------------------------------------------------
    def now(self, pending: Pending, counts: dict[tuple[int, int], int]) -> bytes | None:
        """The reply when it needs no upstream (a cache hit, a loop probe); else None: use ``ask``."""
        if pending.name.endswith(LOOP_SUFFIX) and self.loops.came_back(pending.name, self.routes.states):
            return compose(pending, self.fetcher.error(pending.qwire, pending.qtype, SERVFAIL), counts, self.payload)
        entry = self.cache.entry(pending.qwire + struct.pack("!HH", pending.qtype, IN))
        return None if entry is None else compose(pending, entry, counts, self.payload)

    def ask(self, pending: Pending, counts: dict[tuple[int, int], int], send: Callable[[bytes], None]) -> None:
        """Forward ``pending`` (``now`` said None); ``send`` gets the client's reply once, from a loop
        callback (perhaps before this returns). No task is made unless the first upstream fails."""
        payload = self.payload

        def deliver(entry: Entry) -> None:
            send(compose(pending, entry, counts, payload))

        if pending.steps:  # an autopath continuation: several questions in turn, so a task
            self._spawn(self._continue(pending, deliver))
            return
        self._begin(pending.qwire, pending.qtype, pending.name, deliver)

    async def _continue(self, pending: Pending, deliver: Deliver) -> None:
        try:
            entry = await self.walker.walk(pending)
        except Exception:  # a bug: the plain NXDOMAIN, as for a failed step, and the traceback once
            log.exception("autopath continuation of %s failed", pending.name)
            assert pending.nxdomain is not None  # the Responder sets it with the steps
            entry = pending.nxdomain
        deliver(entry)

    def saturated(self, waited: bool) -> bool:
        """Shed new forwards? Queries ``waited`` in the listener's socket, or upstream replies wait
        to be handled, and enough forwards are in flight that they are the cause."""
        udp = self.fetcher.udp
        return len(self._inflight) >= SATURATED and (waited or (udp is not None and udp.behind))

    def shed(self, pending: Pending, counts: dict[tuple[int, int], int]) -> bytes:
        """REFUSED at once for a query that would go upstream while the server is saturated (the
        listener decides when): what CoreDNS's forward answers over max_concurrent, and what makes
        a stub resolver try its next server. One dict lookup and a splice."""
        self.stats.shed += 1
        if pending.steps and pending.nxdomain is not None:
            # An autopath continuation is a name of ours: its plain NXDOMAIN lets the pod's own
            # search go on, as when a step fails.
            return compose(pending, pending.nxdomain, counts, self.payload)
        return compose(pending, self._refused(pending.qtype), counts, self.payload)

    def _refused(self, qtype: int) -> Entry:
        # An error reply has nothing after the question, so one entry per type serves every name.
        entry = self._refusals.get(qtype)
        if entry is None:
            entry = self._refusals[qtype] = self.fetcher.error(b"\x00", qtype, REFUSED)
        return entry

    @property
    def busy(self) -> bool:
        """Questions are in flight upstream: a draining listener keeps its socket open for their replies."""
        return bool(self._inflight)

    def between(self, hook: Callable[[], None]) -> None:
        """``hook`` runs between two upstream replies handled in one turn (a listener's hits)."""
        self.fetcher.exchanges().between.append(hook)

    async def answer(self, pending: Pending, counts: dict[tuple[int, int], int]) -> bytes:
        if pending.steps:  # an autopath continuation of a name of ours
            entry = await self.walker.walk(pending)
        else:
            entry = await self.resolve_entry(pending.qwire, pending.qtype, pending.name)
        return compose(pending, entry, counts, self.payload)

    # -- what the autopath walker asks ------------------------------------------------------
    async def resolve_entry(self, qwire: bytes, qtype: int, name: str | None = None) -> Entry:
        """The reply entry for (name in wire form, lowercased; type), from the cache or upstream."""
        entry = self.cache.entry(qwire + struct.pack("!HH", qtype, IN))
        if entry is not None:
            return entry
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()

        def deliver(entry: Entry) -> None:
            if not future.done():  # an asker that gave up (cancelled) is simply not answered
                future.set_result(entry)

        self._begin(qwire, qtype, name if name is not None else wire_text(qwire), deliver)
        return await future

    async def refetch(self, key: bytes, qwire: bytes, qtype: int, name: str) -> bool:
        """Ask upstream again although the cached reply is still fresh (a prefetch); True if it answered."""
        entry = await self.fetcher.fetch(key, qwire, qtype, self._route(name))
        return self.cache.fresh_item(key, entry) is not None

    # -- going upstream ------------------------------------------------------------------
    def _begin(self, qwire: bytes, qtype: int, name: str, deliver: Deliver) -> None:
        """Answer (qwire, qtype) by ``deliver``: joins an identical question in flight, else asks
        the route's first upstream by a callback exchange; the fetcher's ``rest``, a task, takes over
        when that try is not the end of it."""
        key = qwire + struct.pack("!HH", qtype, IN)
        pool = self._route(name)
        inflight, fetcher = self._inflight, self.fetcher
        if pool is not None and pool.down:  # no need to wait for a timeout to answer stale
            stale = self.cache.stale(key)
            if stale is not None:
                if key not in inflight:  # one refresh in the background
                    inflight[key] = []
                    self._spawn(fetcher.refresh(key, qwire, qtype, pool))
                deliver(stale)
                return
        waiters = inflight.get(key)
        if waiters is not None:
            waiters.append(deliver)
            return
        if len(inflight) >= self.config.max_concurrent:
            self.stats.rejects += 1
            deliver(self._refused(qtype))
            return
        inflight[key] = [deliver]
        self.stats.misses += 1
        if self.asked is not None:
            self.asked(name)
        if pool is None or qtype in (AXFR, IXFR):
            inflight.finish(key, fetcher.error(qwire, qtype, REFUSED))
            return
        deadline = time.monotonic() + self.config.forward_timeout
        order = pool.order()
        if not order or self.config.force_tcp or order[0].upstream.tls_name:
            self._spawn(fetcher.rest(key, qwire, qtype, pool, order, deadline))
            return
        state = order[0]
        self.stats.sent(state.label)
        started = time.perf_counter()

        def done(reply: Reply | None, why: str) -> None:
            if reply is not None and reply.wire[2] & 0x02:  # TC: the same upstream over TCP, for what is left of its time
                self._spawn(fetcher.rest(key, qwire, qtype, pool, order, deadline, started))
                return
            fetcher.heard(pool, state, reply, why, started)
            if reply is None:
                self._spawn(fetcher.rest(key, qwire, qtype, pool, order[1:], deadline))
            else:
                fetcher.settle(key, qwire, qtype, reply)

        timeout = min(self.config.forward_timeout, self.config.upstream_timeout)
        if state.upstream.tcp:
            fetcher.pipe(state.upstream).send(key, timeout, done)
        else:
            fetcher.exchanges().send(state.upstream, key, timeout, self.stats.drop, done)

    # -- prefetch: a hot entry refreshed before it expires ----------------------------------
    def _prefetch(self, key: bytes) -> None:
        item = self.cache.peek(key)
        if item is not None and item.origin is not None:  # an autopath reply: its steps are what to refresh
            self._spawn(self.walker.refresh(key, item))
        else:
            self._spawn(self._prefetch_one(key))

    async def _prefetch_one(self, key: bytes) -> None:
        try:
            qwire, qtype = key[:-4], struct.unpack("!H", key[-4:-2])[0]
            await self.fetcher.fetch(key, qwire, qtype, self._route(wire_text(qwire)))
        finally:
            self.cache.done_refreshing(key)

    # -- lifecycle -----------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        states = self.routes.states
        if states and all(s.looped for s in states):
            log.error("no usable upstream: names outside the served zones get SERVFAIL")
        self._spawn(self.loops.probe(states, self.fetcher.send_probe))

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pool in self.routes.pools():
            pool.stop()
        self.fetcher.close()

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.stats, self.cache)


__all__ = ["Forwarder"]
