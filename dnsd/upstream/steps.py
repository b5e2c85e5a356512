"""Autopath's forwarded steps: ask them upstream in order, answer as a CNAME to the first that exists.

The resolver walked the steps in our zones (dnsd/zone/searchpath.py); the Responder hands the rest
over as a ``Pending`` with ``steps``. Each step is asked as any forwarded question (the forwarder's
``resolve_entry``), so it is coalesced, cached and served stale like one. The first step that is not
NXDOMAIN ends the walk: NOERROR with data or without (NODATA: the name exists, so the pod's own
search would stop there too, for every type alike; CoreDNS's autopath also stops at the first
non-NXDOMAIN). Its reply is rewritten for the asked name (``with_cname``). A failure (SERVFAIL,
a timeout, REFUSED for too many in flight) ends the walk with the plain NXDOMAIN, so the pod's
own resolver goes on as without autopath. If every step is NXDOMAIN, the answer is the one the
Responder prepared (``Pending.fallback``).

The outcome is cached in the forward cache under the asked question, so a repeat is a fast-path
hit: its TTLs count down from the moment the answering step's reply was cached, and it expires
when the first of the steps it relied on does (the answer, and every NXDOMAIN before it). It is
filed under the names of ours it was derived from and dropped when one of them changes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

from dnsd.dns.const import CNAME, IN, NOERROR, NXDOMAIN
from dnsd.dns.names import name_wire, read_name
from dnsd.dns.query import Pending
from dnsd.dns.reply import Entry, make_entry
from dnsd.observe.metrics import AUTOPATH_HIT
from dnsd.upstream.cache import ForwardCache, Item
from dnsd.upstream.inflight import shared
from dnsd.upstream.message import Reply, parse

# Types whose RDATA may hold compressed names (RFC 3597 4, and those RFC 3597 says receivers should
# decompress): type -> (bytes before the first name, names in a row). Anything else is copied as is.
NAMED_RDATA = {2: (0, 1), 3: (0, 1), 4: (0, 1), 5: (0, 1), 7: (0, 1), 8: (0, 1), 9: (0, 1), 12: (0, 1),
               39: (0, 1), 6: (0, 2), 14: (0, 2), 17: (0, 2), 15: (2, 1), 18: (2, 1), 21: (2, 1), 36: (2, 1),
               26: (2, 2), 33: (6, 1)}
_RR = struct.Struct("!HHIH")


def with_cname(step: Reply, qwire: bytes, qtype: int, cname_ttl: int, via: tuple[bytes, ...] = (),
               rcode: bool = False) -> bytes:
    """``step`` (a reply to another name) as the reply to ``qwire``: a CNAME from ``qwire`` to the step's
    name first (TTL ``cname_ttl``), then the step's records. ID 0, RD clear, AA and AD clear (the data is
    not ours, nor validated), RA as the upstream's. ``via``: names (wire form) the alias goes through
    before the step's name, one CNAME each (an ExternalName chain); ``rcode``: keep the step's rcode
    (an alias answers with its target's, RFC 6604), else NOERROR.

    Moving the records behind another question would break their compression pointers, so every name
    in them is written out in full, except owners equal to the step's name, which point at the CNAME's
    target (where that name now is). Record order, case and unknown RDATA are kept as they were.
    """
    wire = step.wire
    target, _ = read_name(wire, 12)  # the step's name, as its question
    target_lower = target.lower()
    head_len = 12 + len(qwire) + 4
    body, owner_at = bytearray(), 12  # each CNAME's owner points at the previous one's target
    for alias in (*via, target):
        body += bytes((0xC0 | owner_at >> 8, owner_at & 0xFF)) + _RR.pack(CNAME, 1, cname_ttl, len(alias))
        owner_at = head_len + len(body)
        body += alias
    pointer = bytes((0xC0 | owner_at >> 8, owner_at & 0xFF))
    for record in step.records:
        owner, i = read_name(wire, record.start)
        body += pointer if owner.lower() == target_lower else owner
        rtype, rclass, ttl, rdlength = _RR.unpack_from(wire, i)
        i += 10
        rdata = wire[i : i + rdlength]
        layout = NAMED_RDATA.get(rtype)
        if layout is not None:
            prefix, names = layout
            j = i + prefix
            parts = [wire[i:j]]
            for _ in range(names):
                name, j = read_name(wire, j)
                parts.append(name)
            parts.append(wire[j : i + rdlength])
            rdata = b"".join(parts)
        body += _RR.pack(rtype, rclass, ttl, len(rdata)) + rdata
    an, ns, ar = (sum(1 for r in step.records if r.section == s) for s in range(3))
    flags = wire[3] & (0x8F if rcode else 0x80)
    head = b"\x00\x00" + bytes((0x80, flags)) + struct.pack("!HHHH", 1, an + 1 + len(via), ns, ar)
    return head + qwire + struct.pack("!HH", qtype, IN) + bytes(body)


Ask = Callable[[bytes, int, str], Awaitable[Entry]]  # (name in wire form, type, name): the reply, coalesced and cached
Refetch = Callable[[bytes, bytes, int, str], Awaitable[bool]]  # (key, name in wire form, type, name): answered?


def _rcode(entry: Entry) -> int:
    return entry.plain_heads[0][1] & 0x0F


class Walker:
    """The autopath continuations of one forwarder. It sees the forwarder only through what it is
    handed: the forward cache, ``ask`` and ``refetch`` for one step, and ``routed`` (some upstream
    answers the name)."""

    def __init__(self, cache: ForwardCache, ask: Ask, refetch: Refetch, routed: Callable[[str], bool],
                 ttl: int, payload: int) -> None:
        self.cache = cache
        self.ask = ask
        self.refetch = refetch
        self.routed = routed
        self.ttl = ttl  # our own answers' TTL (--ttl)
        self.payload = payload
        self.walks: dict[bytes, asyncio.Future[Entry]] = {}  # continuations under way, by question

    async def walk(self, pending: Pending) -> Entry:
        """The reply entry for an autopath continuation (coalesced: one walk per question at a time)."""
        key = pending.qwire + struct.pack("!HH", pending.qtype, IN)
        entry = self.cache.entry(key)
        if entry is not None:
            return entry
        return await shared(self.walks, key, lambda: self._walk(pending, key))

    async def _walk(self, pending: Pending, key: bytes) -> Entry:
        cache, qtype = self.cache, pending.qtype
        # Filed under our names before the first await: a change of them while we wait cancels the store.
        token = cache.reserve(key, pending.depends)
        if pending.aliases:
            return await self._chase(pending, key, token)
        until = float("inf")  # when the first reply the outcome relies on expires
        cacheable = True  # False once one of them was not cacheable
        for name in pending.steps:
            if not self.routed(name):
                continue  # no upstream for it (only --stub-domain elsewhere): skipped, as without a forwarder
            swire = name_wire(name)
            skey = swire + struct.pack("!HH", qtype, IN)
            step = await self.ask(swire, qtype, name)
            rcode = _rcode(step)
            item = cache.fresh_item(skey, step)
            if item is None:
                cacheable = False  # stale, uncacheable (TTL 0) or an error: answered, never kept
            else:
                until = min(until, item.expires)
            if rcode == NXDOMAIN:
                continue
            if rcode != NOERROR:
                assert pending.nxdomain is not None  # the Responder sets it with the steps
                return pending.nxdomain  # a failure: the pod's own search goes on from the plain NXDOMAIN
            stat = (qtype, NOERROR | AUTOPATH_HIT)
            if item is not None and cacheable:
                # Built from the reply as cached (TTLs as received), aged from when it was cached, so every
                # TTL, the CNAME's included, counts down exactly as the step's own cached reply does.
                ttl = int(until - item.stored)
                reply = parse(with_cname(item.reply, pending.qwire, qtype, ttl))
                return cache.put_derived(key, reply, item.stored, ttl, stat, token, pending)
            reply_wire = b"\x00\x00" + step.plain_heads[0] + skey + step.plain_tail  # as sent (stale: TTL 30)
            served = parse(reply_wire)
            ttl = min((r.ttl for r in served.records), default=0)
            return make_entry(with_cname(served, pending.qwire, qtype, ttl), 12 + len(key), 0, stat, self.payload,
                              cache.loadbalance)
        fallback = pending.fallback
        assert fallback is not None
        if cacheable:
            # Our own answer (a later step of ours, or the NXDOMAIN): rendered with our TTL, kept no longer.
            now = cache.clock()
            ttl = int(min(until - now, self.ttl))
            reply = parse(b"\x00\x00" + fallback.plain_heads[0] + key + fallback.plain_tail)
            return cache.put_derived(key, reply, now, ttl, fallback.stat, token, pending)
        return fallback

    async def _chase(self, pending: Pending, key: bytes, token: object) -> Entry:
        """An ExternalName chain ending outside our zones: the chain, then its target's records with the
        target's rcode, cached as the target's reply is and for no longer than our own TTL. If the target
        cannot be had (a failure, or no route), the chain alone, as without a forwarder."""
        cache, qtype, target = self.cache, pending.qtype, pending.steps[0]
        assert pending.fallback is not None  # the Responder sets it with the aliases
        if not self.routed(target):
            return pending.fallback
        swire = name_wire(target)
        skey = swire + struct.pack("!HH", qtype, IN)
        step = await self.ask(swire, qtype, target)
        rcode = _rcode(step)
        if rcode not in (NOERROR, NXDOMAIN):
            return pending.fallback
        via = tuple(name_wire(alias) for alias in pending.aliases[:-1])
        stat = (qtype, rcode)
        item = cache.fresh_item(skey, step)
        if item is not None:
            ttl = int(min(item.expires - item.stored, self.ttl + cache.clock() - item.stored))  # the chain's minimum
            reply = parse(with_cname(item.reply, pending.qwire, qtype, ttl, via, rcode=True))
            return cache.put_derived(key, reply, item.stored, ttl, stat, token, pending)
        served = parse(b"\x00\x00" + step.plain_heads[0] + skey + step.plain_tail)  # stale or uncacheable: not kept
        ttl = min((r.ttl for r in served.records), default=self.ttl)
        return make_entry(with_cname(served, pending.qwire, qtype, min(ttl, self.ttl), via, rcode=True),
                          12 + len(key), 0, stat, self.payload, cache.loadbalance)

    async def refresh(self, key: bytes, derived: Item) -> None:
        """Prefetch for a hot autopath reply: ask again the steps whose replies end its life, then derive it
        anew from them, so it is replaced before it expires (its clients never wait for the walk)."""
        cache, pending = self.cache, derived.origin
        try:
            for name in pending.steps:
                swire = name_wire(name)
                skey = swire + struct.pack("!HH", pending.qtype, IN)
                item = cache.peek(skey)
                if item is None:
                    break  # gone from the cache: the next query walks again
                if item.expires <= derived.expires:
                    if not await self.refetch(skey, swire, pending.qtype, name):
                        return  # upstream failing: the reply lives out its TTL, then stale rules apply
                    item = cache.peek(skey)
                if item is None or item.reply.rcode != NXDOMAIN:
                    break  # the step that answered: the rest were never part of the reply
            await self._walk(pending, key)
        finally:
            cache.done_refreshing(key)


__all__ = ["NAMED_RDATA", "Walker", "with_cname"]
