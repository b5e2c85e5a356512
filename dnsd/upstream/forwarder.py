"""The forwarder: questions dnsd does not own -> cache -> upstreams -> cache -> reply.

``await forwarder.resolve(qwire, qtype)`` is the API for code inside dnsd (the reply in
wire form); the listeners use ``now`` (a cache hit, synchronous) and ``answer`` (async).
Identical questions in flight are sent upstream once. A query tries the route's upstreams
in policy order, each for at most ``upstream_timeout`` seconds, all within
``forward_timeout``: after that the client gets a stale answer (RFC 8767) or SERVFAIL,
never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from dnsd.dns.const import AXFR, HINFO, IXFR, REFUSED, SERVFAIL
from dnsd.dns.names import name_wire, wire_text
from dnsd.dns.query import Pending
from dnsd.dns.reply import Entry, make_entry
from dnsd.servers import StubDomain, Upstream
from dnsd.upstream import steps as autopath
from dnsd.upstream import transport
from dnsd.upstream.cache import ForwardCache
from dnsd.upstream.compose import compose
from dnsd.upstream.message import Reply, normalise
from dnsd.upstream.pool import HEALTH_QUESTION, Pool, State
from dnsd.upstream.sockets import Exchanges
from dnsd.upstream.stats import ForwardStats, snapshot

log = logging.getLogger("dnsd.upstream")
LOOP_SUFFIX = "dnsd-loop-probe.invalid"  # probes: <token>.<upstream number>.dnsd-loop-probe.invalid HINFO
# Questions in flight from which a listener whose queries wait (--shed-after) sheds new forwards:
# ~2.5 ms of reply handling queued at ~80 us each; fewer, and the wait is not the forwards' doing.
SATURATED = 32


class Forwarder:
    def __init__(self, config: Any, *, token: str | None = None) -> None:
        self.config = config
        self.payload = config.udp_max_payload  # the EDNS size our OPT advertises to clients
        self.cache = ForwardCache(config.forward_cache_size, config.forward_max_ttl, config.serve_stale,
                                  config.prefetch, self.payload)
        self.cache.on_prefetch = self._prefetch
        self.stats = ForwardStats()
        self.token = token or getattr(config, "loop_token", "") or secrets.token_hex(8)
        self._states: dict[Upstream, State] = {}
        own = {(a, config.port) for a in config.addresses}
        wildcard = any(a in ("0.0.0.0", "::") for a in config.addresses)

        def states(upstreams: Iterable[Upstream]) -> list[State]:
            out = []
            for upstream in upstreams:
                state = self._states.get(upstream)
                if state is None:
                    state = self._states[upstream] = State(upstream)
                    if (upstream.host, upstream.port) in own or (
                            wildcard and upstream.port == config.port and upstream.host.startswith(("127.", "::1"))):
                        self._loop(state, "it is one of dnsd's own listen addresses")
                out.append(state)
            return out

        def pool(upstreams: Iterable[Upstream]) -> Pool:
            return Pool(states(upstreams), config.policy, config.max_fails, config.health_check,
                        self._health_probe, self.stats.check_failed)

        self.default = pool(config.upstreams) if config.upstreams else None
        stubs: tuple[StubDomain, ...] = config.stub_domains
        # Longest zone first: the most specific stub domain wins.
        self.stubs = [("." + s.zone, s.zone, pool(s.servers)) for s in sorted(stubs, key=lambda s: -len(s.zone))]
        self.forwards_default = self.default is not None
        self._inflight: dict[bytes, list[Callable[[Entry], None]]] = {}  # question -> who waits for it
        self.walks: dict[bytes, asyncio.Future[Entry]] = {}  # autopath continuations under way (autopath.walk)
        self._udp: Exchanges | None = None
        self._refusals: dict[int, Entry] = {}
        tls_ca = getattr(config, "upstream_tls_ca", None)
        self.tls = transport.default_tls(tls_ca) if any(u.tls_name for u in self._states) else None
        self._tasks: set[asyncio.Task] = set()

    # -- what the Responder asks -----------------------------------------------------
    def is_stub(self, name: str) -> bool:
        return any(name == zone or name.endswith(suffix) for suffix, zone, _ in self.stubs)

    def entry(self, key: bytes) -> Entry | None:
        return self.cache.entry(key)

    def forget(self, names: Iterable[str]) -> None:
        self.cache.forget(names)

    def forget_derived(self) -> None:
        self.cache.forget_derived()

    def _pool(self, name: str) -> Pool | None:
        for suffix, zone, pool in self.stubs:
            if name == zone or name.endswith(suffix):
                return pool
        return self.default

    # -- what the listeners ask --------------------------------------------------------
    def now(self, pending: Pending, counts: dict[tuple[int, int], int]) -> bytes | None:
        """The reply when it needs no upstream (a cache hit, a loop probe); else None: use ``ask``."""
        if pending.name.endswith(LOOP_SUFFIX):
            labels = pending.name.split(".")
            if labels[0] == self.token and labels[1].isdigit():
                self._probe_came_back(int(labels[1]))
                return compose(pending, self._error(pending.qwire, pending.qtype, SERVFAIL), counts, self.payload)
        entry = self.cache.entry(pending.qwire + struct.pack("!HH", pending.qtype, 1))
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

    async def _continue(self, pending: Pending, deliver: Callable[[Entry], None]) -> None:
        try:
            entry = await autopath.walk(self, pending)
        except Exception:  # a bug: the plain NXDOMAIN, as for a failed step, and the traceback once
            log.exception("autopath continuation of %s failed", pending.name)
            entry = pending.nxdomain
        assert entry is not None
        deliver(entry)

    def saturated(self, waited: bool) -> bool:
        """Shed new forwards? Queries ``waited`` in the listener's socket, or upstream replies wait
        to be handled, and enough forwards are in flight that they are the cause."""
        return len(self._inflight) >= SATURATED and (waited or (self._udp is not None and self._udp.behind))

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
            entry = self._refusals[qtype] = self._error(b"\x00", qtype, REFUSED)
        return entry

    async def answer(self, pending: Pending, counts: dict[tuple[int, int], int]) -> bytes:
        if pending.steps:  # an autopath continuation of a name of ours
            entry = await autopath.walk(self, pending)
        else:
            entry = await self.resolve_entry(pending.qwire, pending.qtype, pending.name)
        return compose(pending, entry, counts, self.payload)

    # -- the API for code inside dnsd ----------------------------------------------------
    async def resolve(self, qwire: bytes, qtype: int) -> bytes:
        """The reply to (name in wire form, type): ID 0, the name lowercased, TTLs as of now, no OPT."""
        qwire = qwire.lower()
        entry = await self.resolve_entry(qwire, qtype)
        return b"\x00\x00" + entry.plain_heads[0] + qwire + struct.pack("!HH", qtype, 1) + entry.plain_tail

    async def resolve_entry(self, qwire: bytes, qtype: int, name: str | None = None) -> Entry:
        entry = self.cache.entry(qwire + struct.pack("!HH", qtype, 1))
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
        entry = await self._fetch(key, qwire, qtype, name, False)
        return self.cache.fresh_item(key, entry) is not None

    # -- going upstream ------------------------------------------------------------------
    def _begin(self, qwire: bytes, qtype: int, name: str, deliver: Callable[[Entry], None]) -> None:
        """Answer (qwire, qtype) by ``deliver``: joins an identical question in flight, else asks
        the route's first upstream by a callback exchange; a task takes over only for what is
        rare (a failed or truncated first try, TCP, TLS, a background refresh)."""
        key = qwire + struct.pack("!HH", qtype, 1)
        pool = self._pool(name)
        if pool is not None and pool.down:  # no need to wait for a timeout to answer stale
            stale = self.cache.stale(key)
            if stale is not None:
                if key not in self._inflight:  # one refresh in the background
                    self._inflight[key] = []
                    self._spawn(self._refresh(key, qwire, qtype, name))
                deliver(stale)
                return
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append(deliver)
            return
        if len(self._inflight) >= self.config.max_concurrent:
            self.stats.rejects += 1
            deliver(self._refused(qtype))
            return
        self._inflight[key] = [deliver]
        self.stats.misses += 1
        if pool is None or qtype in (AXFR, IXFR):
            self._finish(key, self._error(qwire, qtype, REFUSED))
            return
        deadline = time.monotonic() + self.config.forward_timeout
        order = pool.order()
        state = order[0] if order else None
        if state is None or self.config.force_tcp or state.upstream.tls_name:
            self._spawn(self._rest(key, qwire, qtype, pool, order, deadline))
            return
        upstream = state.upstream
        to = str(upstream)
        self.stats.sent(to)
        started = time.perf_counter()

        def done(reply: Reply | None, why: str) -> None:
            if reply is not None and not reply.wire[2] & 0x02:
                pool.succeeded(state)
                self.stats.answered(to, reply.rcode, time.perf_counter() - started)
                try:
                    if reply.rcode == SERVFAIL:
                        self._finish(key, self._conclude(key, qwire, qtype, reply, True))
                        return
                    item, entry = self.cache.prepare(normalise(reply), (qtype, reply.rcode))
                except Exception:  # a bug: the askers get SERVFAIL, and the question is not left in flight
                    log.exception("forwarding failed")
                    self._finish(key, self._error(qwire, qtype, SERVFAIL))
                    return
                self._finish(key, entry)  # the askers first: the cache insertion is off their path
                self.cache.store(key, item)
                return
            if reply is None:
                log.debug("upstream %s: %s", upstream, why)
                pool.failed(state)
                rest = order[1:]
            else:  # TC: the same upstream over TCP, for what is left of its time
                rest = order
            self._spawn(self._rest(key, qwire, qtype, pool, rest, deadline, tcp_first=reply is not None,
                                   started=started))

        self._exchanges().send(upstream, key, min(self.config.forward_timeout, self.config.upstream_timeout),
                               self.stats.drop, done)

    def _finish(self, key: bytes, entry: Entry) -> None:
        for deliver in self._inflight.pop(key, ()):
            try:
                deliver(entry)
            except Exception:  # one asker's failure (a closed socket) must not cost the others
                log.exception("delivering a forwarded reply failed")

    async def _rest(self, key: bytes, qwire: bytes, qtype: int, pool: Pool, states: list[State], deadline: float,
                    tcp_first: bool = False, started: float = 0.0) -> None:
        """The rest of a fetch in a task: the first upstream's TCP retry, then the others in order."""
        try:
            reply = None
            if tcp_first:
                state = states[0]
                left = self.config.upstream_timeout - (time.perf_counter() - started)
                reply = await self._exchange(state, key, max(left, 0.05), pool, tcp=True, count=False,
                                             started=started)
                states = states[1:]
            if reply is None:
                reply = await self._attempts(pool, states, key, deadline)
            entry = self._conclude(key, qwire, qtype, reply, True)
        except asyncio.CancelledError:  # shutting down: nobody is answered
            self._inflight.pop(key, None)
            raise
        except Exception:  # a bug: the askers get SERVFAIL, not silence
            log.exception("forwarding failed")
            entry = self._error(qwire, qtype, SERVFAIL)
        self._finish(key, entry)

    async def _refresh(self, key: bytes, qwire: bytes, qtype: int, name: str) -> None:
        """A stale answer went out: fetch a fresh one for the cache (and whoever asked meanwhile)."""
        entry: Entry | None = None
        try:
            entry = await self._fetch(key, qwire, qtype, name, False)
        except asyncio.CancelledError:
            self._inflight.pop(key, None)
            raise
        except Exception:
            log.exception("refreshing a stale answer failed")
        self._finish(key, entry if entry is not None else self._error(qwire, qtype, SERVFAIL))

    async def _fetch(self, key: bytes, qwire: bytes, qtype: int, name: str, stale_ok: bool = True) -> Entry:
        """Ask the route's upstreams; ``stale_ok`` False when a stale answer already went out (refresh only)."""
        self.stats.misses += 1
        pool = self._pool(name)
        if pool is None or qtype in (AXFR, IXFR):
            return self._error(qwire, qtype, REFUSED)
        deadline = time.monotonic() + self.config.forward_timeout
        reply = await self._attempts(pool, pool.order(), key, deadline)
        return self._conclude(key, qwire, qtype, reply, stale_ok)

    async def _attempts(self, pool: Pool, states: list[State], question: bytes, deadline: float) -> Reply | None:
        """Each upstream in turn, within the deadline; the first reply (any rcode) ends the search."""
        for state in states:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reply = await self._exchange(state, question, min(left, self.config.upstream_timeout), pool)
            if reply is not None:
                return reply
        return None

    def _conclude(self, key: bytes, qwire: bytes, qtype: int, reply: Reply | None, stale_ok: bool) -> Entry:
        """The entry for what the upstreams said: cached if it may be, else stale, else SERVFAIL."""
        if reply is not None and reply.rcode != SERVFAIL:
            return self.cache.put(key, normalise(reply), (qtype, reply.rcode))
        stale = self.cache.stale(key) if stale_ok else None  # RFC 8767: every upstream failed (or said SERVFAIL)
        if stale is not None:
            return stale
        if reply is not None:
            return make_entry(normalise(reply).wire, reply.qend, 0, (qtype, SERVFAIL), self.payload)
        return self._error(qwire, qtype, SERVFAIL)

    async def _exchange(self, state: State, question: bytes, timeout: float, pool: Pool, tcp: bool = False,
                        count: bool = True, started: float | None = None) -> Reply | None:
        """One upstream asked; ``tcp`` straight over TCP (a TC retry: ``count`` False, it was counted)."""
        upstream = state.upstream
        to = str(upstream)
        if count:
            self.stats.sent(to)
        started = time.perf_counter() if started is None else started
        try:
            if tcp or self.config.force_tcp or upstream.tls_name:
                reply = await transport.tcp(upstream, question, timeout, self.stats.drop, self.tls)
            else:
                reply = await self._exchanges().exchange(upstream, question, timeout, self.stats.drop)
                if reply.wire[2] & 0x02:  # TC: the answer is bigger than UDP could carry
                    left = timeout - (time.perf_counter() - started)
                    reply = await transport.tcp(upstream, question, max(left, 0.05), self.stats.drop)
        except transport.UpstreamError as exc:
            log.debug("upstream %s: %s", upstream, exc)
            pool.failed(state)
            return None
        pool.succeeded(state)
        self.stats.answered(to, reply.rcode, time.perf_counter() - started)
        return reply

    def between(self, hook: Callable[[], None]) -> None:
        """``hook`` runs between two upstream replies handled in one turn (a listener's hits)."""
        self._exchanges().between.append(hook)

    def _exchanges(self) -> Exchanges:
        if self._udp is None:
            self._udp = Exchanges(asyncio.get_running_loop())
        return self._udp

    async def _health_probe(self, upstream: Upstream) -> None:
        if self.config.force_tcp or upstream.tls_name:
            await transport.tcp(upstream, HEALTH_QUESTION, self.config.upstream_timeout, self.stats.drop, self.tls)
        else:
            await self._exchanges().exchange(upstream, HEALTH_QUESTION, self.config.upstream_timeout, self.stats.drop)

    def _prefetch(self, key: bytes) -> None:
        item = self.cache.peek(key)
        if item is not None and item.origin is not None:  # an autopath reply: its steps are what to refresh
            self._spawn(autopath.refresh(self, key, item))
            return

        async def refresh() -> None:
            try:
                qwire, qtype = key[:-4], struct.unpack("!H", key[-4:-2])[0]
                await self._fetch(key, qwire, qtype, wire_text(qwire), False)
            finally:
                self.cache.done_refreshing(key)

        self._spawn(refresh())

    def _error(self, qwire: bytes, qtype: int, rcode: int) -> Entry:
        plain = b"\x00\x00\x80" + bytes((0x80 | rcode,)) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + qwire + struct.pack(
            "!HH", qtype, 1)
        return make_entry(plain, len(plain), 0, (qtype, rcode), self.payload)

    # -- loops ---------------------------------------------------------------------------
    def _loop(self, state: State, why: str) -> None:
        if state.looped:
            return
        state.looped = True
        self.stats.loops += 1
        log.error("forwarding loop: upstream %s is dnsd itself (%s); not forwarding to it, "
                  "cluster zones are still served", state.upstream, why)

    def _probe_came_back(self, number: int) -> None:
        upstreams = list(self._states.values())
        if number < len(upstreams):
            self._loop(upstreams[number], "a loop-detection query sent to it came back to dnsd")

    async def _send_probes(self) -> None:
        """As CoreDNS's ``loop`` plugin: ask each upstream a name only this dnsd would ask; if the
        question comes back to us, that upstream forwards to us (``now`` notices)."""
        for _ in range(3):  # a few, so one of them reaches every worker that shares the port
            for number, state in enumerate(list(self._states.values())):
                if state.looped or state.upstream.tls_name:  # a DoT server is never dnsd (no TLS listener)
                    continue
                question = name_wire(f"{self.token}.{number}.{LOOP_SUFFIX}") + struct.pack("!HH", HINFO, 1)
                self._spawn(self._quiet_probe(state.upstream, question))
            await asyncio.sleep(0.2)

    async def _quiet_probe(self, upstream: Upstream, question: bytes) -> None:
        with contextlib.suppress(transport.UpstreamError):
            await self._exchanges().exchange(upstream, question, self.config.upstream_timeout, lambda _r: None)

    # -- lifecycle -----------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        usable = [s for s in self._states.values() if not s.looped]
        if self._states and not usable:
            log.error("no usable upstream: names outside the served zones get SERVFAIL")
        self._spawn(self._send_probes())

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for pool in [self.default, *(p for _, _, p in self.stubs)]:
            if pool is not None:
                pool.stop()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.stats, self.cache)


__all__ = ["Forwarder", "compose"]
