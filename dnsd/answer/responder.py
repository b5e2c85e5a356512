"""The Responder: query bytes -> reply bytes, through the precomputed-reply table or the strict path.

Every positive answer is rendered once per (lowercased name, type) with ID 0 and the
lowercased question, and kept as bytes. Its compression pointers aim into the
question, whose length does not depend on letter case, so one rendering serves
every spelling: a reply is the query's ID and question spliced into those bytes.
The fast path (fastpath.py) decides that from the header alone; anything else takes the strict
path (dns/query.py), which classifies the query, answers errors from the query's own
bytes, answers negatives from one template per zone (render.py), and renders and
stores positive answers. Positive answers enter the table; a negative asked a second time
is kept beside it until the next change (_remember_negative). Both are bounded in bytes:
a flood of unique names costs next to no memory and no rendering.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import cast

from dnsd.answer.fastpath import EDNS_COUNTS, PLAIN_COUNTS, FastPath, Forwarding
from dnsd.answer.render import render, template
from dnsd.answer.replies import Replies
from dnsd.dns.const import ANY, AXFR, CNAME, DEFAULT_PAYLOAD, FORMERR, IXFR, MAX_QUERY, MIN_PAYLOAD, TCP_LIMIT
from dnsd.dns.names import labels_to_text, wire_labels
from dnsd.dns.query import Pending, Query, error_reply, header_reply, options_ok, parse
from dnsd.dns.reply import OPT_LEN, Entry, cut_reply, heads, make_entry, splice, with_opt
from dnsd.observe.metrics import AUTOPATH_HIT
from dnsd.zone.index import IndexReader
from dnsd.zone.records import REVERSE_ZONES, Record, SoaData
from dnsd.zone.resolver import Answer, resolve

log = logging.getLogger(__name__)

# Negative questions asked once are noted in a bitmap (two bits per question, from its hash), so a second ask
# keeps the reply; it starts over after NEGATIVES_SEEN notes. A name's next ask may come after thousands of
# others (a pod's search list walks every expansion), so the bitmap covers many; it stays sparse (at most
# 2 * NEGATIVES_SEEN of SEEN_BITS bits set), so few of a flood's unique names pass as asked before.
SEEN_BITS = 1 << 20
NEGATIVES_SEEN = 1 << 15
_SPECIAL_TYPES = frozenset((0, 41, 251, 252, 255))  # internal marker, OPT, IXFR, AXFR, ANY: the strict path's


class Responder(FastPath):
    """Turns query bytes into reply bytes for one index; owns the rendered-answer table."""

    def __init__(
        self, index: IndexReader, ttl: int, synced: Callable[[], bool], cache_size: int = 200_000,
        cache_bytes: int = 4 << 20, max_payload: int = DEFAULT_PAYLOAD,
        resolve: Callable[..., Answer] = resolve, *, loadbalance: bool = False,
    ) -> None:
        """``loadbalance``: each reply rotates its A/AAAA records (CoreDNS's loadbalance)."""
        self.index = index
        self.resolve = resolve  # the resolver, or the autopath around it (same signature)
        self.ttl = ttl
        self.synced = synced
        self.loadbalance = loadbalance
        self.max_payload = max_payload
        self.replies = Replies(cache_size, cache_bytes)
        # The table's dict itself, read directly: the fast path's one lookup (see replies.py).
        self._table = self.replies.entries
        self._negatives = self.replies.negatives
        # (id of a template, (qtype, rcode)) -> the template's Entry with that stat: what kept negatives share.
        self._stat_entries: dict[tuple[int, tuple[int, int]], Entry] = {}
        # (rcode, AA, authority) -> the name-independent reply; a handful (one per zone and rcode).
        self._templates: dict[tuple[int, bool, tuple[Record, ...]], Entry] = {}
        self._negatives_seen = bytearray(SEEN_BITS >> 3)  # negative questions asked once (_remember_negative)
        self._seen_notes = 0
        self.counts: dict[tuple[int, int], int] = {}  # (qtype, rcode) -> replies
        self.failures = 0  # queries answered SERVFAIL by the catch-all (a bug if ever above 0)
        self.forward: Forwarding | None = None  # set when upstreams are configured
        self._failure_logged = 0.0

    def invalidate(self, names: Iterable[str]) -> None:
        if self.forward is not None:
            names = tuple(names)
            self.forward.forget(names)
        self.replies.invalidate(names)

    def clear(self) -> None:
        if self.forward is not None:
            self.forward.forget_derived()
        self.replies.clear()
        self._templates.clear()
        self._stat_entries.clear()
        self._forget_asks()

    @property
    def table_bytes(self) -> int:
        return self.replies.bytes

    # -- the strict path -------------------------------------------------------------
    def entry(self, qwire: bytes, qtype: int, minimal_any: bool = True) -> Entry | Answer:
        """The reply for (lowercased wire name, type): from the table, a template, or rendered now.

        ``minimal_any`` (UDP): ANY gets one RRset (RFC 8482); over TCP every RRset, never kept.
        An Answer instead when it stands only after autopath steps asked upstream (``forward``).
        """
        key = (qwire + struct.pack("!HH", qtype, 1)).lower()  # as the fast path builds it (see fast())
        full_any = qtype == ANY and not minimal_any
        if not full_any:
            entry = self._table.get(key)
            if entry is not None:
                return entry
        labels = wire_labels(qwire)
        name = labels_to_text(labels)
        answer = self.resolve(self.index, name, qtype, self.synced(), minimal_any=not full_any)
        if (answer.forward or answer.chase) and self.forward is not None:
            return answer  # not this answer yet: the forwarder asks its steps (or the alias's target) first
        if not answer.answer:  # negative, refused, not yet synced: the same bytes for every name
            return self._template(answer)
        plain = render(answer, labels, qtype, self.ttl)
        rcode = answer.rcode | AUTOPATH_HIT if answer.autopath else answer.rcode  # counted on every reply
        entry = make_entry(plain, 12 + len(qwire) + 4, 0, (qtype, rcode), self.max_payload, self.loadbalance)
        if not full_any:
            self.replies.store(key, name, entry, answer.depends)
        return entry

    def _template(self, answer: Answer) -> Entry:
        key = (answer.rcode, answer.authoritative, answer.authority)
        entry = self._templates.get(key)
        if entry is None:
            if len(self._templates) > 64:  # old serials' templates
                self._templates.clear()
                self._stat_entries.clear()
            soa = None
            if answer.authority:
                zone, _, data = answer.authority[0]
                soa = (zone, cast(SoaData, data), self.ttl)
            entry = self._templates[key] = template(answer.rcode, answer.authoritative, soa, self.max_payload)
        return entry

    def _not_mine(self, name: str, qtype: int) -> bool:
        """Forwarded: under a stub domain; outside the served zones; a reverse name we hold nothing for."""
        forward = self.forward
        if forward is None or qtype in (AXFR, IXFR):
            return False
        if forward.is_stub(name):
            return True
        if not forward.forwards_default:
            return False
        zone = self.index.zone_of(name)
        if zone is None:
            return True
        return zone in REVERSE_ZONES and name != zone and self.synced() and not self.index.exists(name)

    def full(self, query: bytes, limit: int, counts: dict[tuple[int, int], int]) -> bytes | Pending | None:
        """Parse strictly and answer by every rule; None means drop the packet."""
        if limit != TCP_LIMIT and len(query) > MAX_QUERY:
            reply = header_reply(query, FORMERR)  # the README's promise; Knot answers the same
            if reply is not None:
                counts[(0, FORMERR)] = counts.get((0, FORMERR), 0) + 1
            return reply
        q = parse(query)
        if q is None:
            return None  # no header, or a reply sent to us: answering could loop
        if q.rcode:
            counts[(q.qtype, q.rcode)] = counts.get((q.qtype, q.rcode), 0) + 1
            return error_reply(query, q, self.max_payload)
        return self._answer_question(query, q, limit, counts)

    def _answer_question(self, query: bytes, q: Query, limit: int, counts: dict[tuple[int, int], int]) -> bytes | Pending:
        edns, qend, qtype = q.edns, q.qend, q.qtype
        if edns and limit == MIN_PAYLOAD:
            limit = max(MIN_PAYLOAD, min(self.max_payload, q.payload))
        question = query[12:qend]
        if self.forward is not None:
            qwire = question[:-4].lower()
            name = labels_to_text(wire_labels(qwire))
            if self._not_mine(name, qtype):
                return Pending(query, question, qwire, qtype, edns, limit, name)
        entry = self.entry(question[:-4].lower(), qtype, minimal_any=limit != TCP_LIMIT)
        if not isinstance(entry, Entry):
            return self._continuation(query, q, limit, entry)
        reply = splice(entry, query, question, edns)
        if len(reply) > limit:
            # Cut to one of a few sizes (smaller than the client allows is legal: it gets TC and
            # retries over TCP), so the truncated renderings kept per entry stay few.
            size = max(s for s in (MIN_PAYLOAD, DEFAULT_PAYLOAD, self.max_payload, TCP_LIMIT) if s <= limit)

            def make() -> bytes:  # rendering with truncation packs several times: kept (render.cut_reply)
                labels = wire_labels(question[:-4].lower())
                answer = self.resolve(self.index, labels_to_text(labels), qtype, self.synced(),
                                      minimal_any=limit != TCP_LIMIT)
                cut = render(answer, labels, qtype, self.ttl, size - (OPT_LEN if edns else 0))
                return with_opt(cut, self.max_payload) if edns else cut

            cut = cut_reply(entry, size, edns, make)
            flags = (query[2] & 1) | ((query[3] >> 3) & 2)
            reply = b"".join((query[:2], heads(cut)[flags], question, cut[qend:]))
        stat = entry.stat if entry.stat[0] else (qtype, entry.stat[1])  # templates serve every type
        counts[stat] = counts.get(stat, 0) + 1
        return reply

    def _continuation(self, query: bytes, q: Query, limit: int, answer: Answer) -> Pending:
        """An autopath answer that needs upstream steps first: a Pending carrying what to answer
        if they are all NXDOMAIN (the answer as it stands) or if one fails (the plain NXDOMAIN).
        Or an alias whose target is outside our zones (``Answer.chase``): a Pending asking the target,
        answering the chain alone if that fails."""
        question = query[12 : q.qend]
        qwire = question[:-4].lower()
        labels = wire_labels(qwire)
        name = labels_to_text(labels)
        if answer.chase:
            alone = make_entry(render(answer, labels, q.qtype, self.ttl), 12 + len(qwire) + 4, 0, (q.qtype, answer.rcode),
                               self.max_payload, self.loadbalance)
            aliases = tuple(str(rdata) for _, rtype, rdata in answer.answer if rtype == CNAME)
            depends = (*answer.depends, *aliases[:-1])  # our names on the way (the last one is not ours)
            return Pending(query, question, qwire, q.qtype, q.edns, limit, name, (answer.chase,), alone, alone,
                           depends, aliases)
        nxdomain = self._template(self._plain(name, q.qtype))
        nxdomain = nxdomain._replace(stat=(q.qtype, nxdomain.stat[1]))
        depends = answer.depends
        if answer.answer:  # a later step of ours answered: rendered now, kept only with the outcome
            rcode = answer.rcode | AUTOPATH_HIT
            fallback = make_entry(render(answer, labels, q.qtype, self.ttl), 12 + len(qwire) + 4, 0, (q.qtype, rcode),
                                  self.max_payload, self.loadbalance)
        else:
            fallback = nxdomain
        if answer.authority:  # our SOA, whose serial moves with every change of ours (the apex is touched)
            depends += (answer.authority[0][0],)
        return Pending(query, question, qwire, q.qtype, q.edns, limit, name, answer.forward, fallback, nxdomain,
                       depends)

    def _plain(self, name: str, qtype: int) -> Answer:
        """The answer without the search path (what a failed autopath step leaves)."""
        return resolve(self.index, name, qtype, self.synced())

    def answer(
        self, query: bytes, limit: int = MIN_PAYLOAD, counts: dict[tuple[int, int], int] | None = None
    ) -> bytes | Pending | None:
        """The reply to one query (UDP: limit 512 before EDNS; TCP: TCP_LIMIT); None: drop;
        a Pending (only with upstreams configured): the forwarder answers it."""
        if type(query) is not bytes:
            query = bytes(query)
        if counts is None:
            counts = self.counts
        reply = self.fast(query, limit, counts)
        if reply is not None:
            return reply
        return self.miss(query, limit, counts)

    def negative(self, query: bytes, counts: dict[tuple[int, int], int], limit: int = MIN_PAYLOAD) -> bytes | Pending | None:
        """A template reply for a plainly shaped query whose name holds nothing (NXDOMAIN, NODATA,
        REFUSED); None when anything needs the strict path. This is what a random-name flood costs:
        one walk over the name, one resolve, no parser, no rendering, no table entry.
        """
        n = len(query)
        if n < 17 or n > MAX_QUERY or query[2] & 0xF8:
            return None
        labels, i = [], 12
        while True:
            if i >= n:
                return None
            length = query[i]
            if not length:
                break
            if length > 63:
                return None
            i += length + 1
            labels.append(query[i - length : i])
        qend = i + 5
        if qend > 12 + 255 + 4 or query[qend - 2 : qend] != b"\x00\x01":  # name over 255 bytes; class not IN
            return None
        counts_field = query[4:12]
        edns = counts_field == EDNS_COUNTS
        if edns:
            if n < qend + 11 or query[qend : qend + 3] != b"\x00\x00\x29" or query[qend + 6]:
                return None  # not our root OPT of version 0: the strict path decides
            rdlength = int.from_bytes(query[qend + 9 : qend + 11], "big")
            if n != qend + 11 + rdlength or (rdlength and not options_ok(query, qend + 11, n)):
                return None
        elif counts_field != PLAIN_COUNTS or n != qend:
            return None
        qtype = (query[qend - 4] << 8) | query[qend - 3]
        if qtype in _SPECIAL_TYPES:
            return None
        name = b".".join(labels).lower().decode("latin-1")
        if name.count(".") != len(labels) - 1:
            return None  # a label holding a dot: the strict path escapes it
        if self.forward is not None and self._not_mine(name, qtype):
            # Forwarded. The checks above are the strict parser's for this shape, so the Pending is
            # made here: parsing the query twice would cost an uncached forward ~10 us.
            if edns and limit == MIN_PAYLOAD:
                limit = max(MIN_PAYLOAD, min(self.max_payload, int.from_bytes(query[qend + 3 : qend + 5], "big")))
            question = query[12:qend]
            return Pending(query, question, question[:-4].lower(), qtype, edns, limit, name)
        answer = self.resolve(self.index, name, qtype, self.synced())
        if answer.answer or (answer.forward and self.forward is not None):
            return None  # data (rendered and kept by the strict path), or autopath steps to ask upstream
        entry = self._template(answer)
        stat = (qtype, answer.rcode)
        counts[stat] = counts.get(stat, 0) + 1
        if answer.negative and answer.authority:
            self._remember_negative(query[12:qend].lower(), entry, stat)
        return splice(entry, query, query[12:qend], edns)

    def _forget_asks(self) -> None:
        self._negatives_seen[:] = bytes(SEEN_BITS >> 3)
        self._seen_notes = 0

    def _remember_negative(self, key: bytes, entry: Entry, stat: tuple[int, int]) -> None:
        """A negative reply asked for the second time is kept (replies.py: until the next change), so the
        names pods ask that do not exist (the search list's expansions, ~30% of a cluster's queries) are
        answered by the fast path. Asked once, a name is only noted: of a flood of unique names, only the
        few the bitmap mistakes for asked before are kept (see SEEN_BITS)."""
        seen, h = self._negatives_seen, hash(key)
        a, b = h & (SEEN_BITS - 1), (h >> 20) & (SEEN_BITS - 1)
        if not (seen[a >> 3] >> (a & 7) & seen[b >> 3] >> (b & 7) & 1):
            if self._seen_notes >= NEGATIVES_SEEN:
                self._forget_asks()
            seen[a >> 3] |= 1 << (a & 7)
            seen[b >> 3] |= 1 << (b & 7)
            self._seen_notes += 1
            return
        shared = self._stat_entries.get((id(entry), stat))
        if shared is None or shared.plain_tail is not entry.plain_tail:  # (an id reused by another template)
            shared = self._stat_entries[(id(entry), stat)] = entry._replace(stat=stat)
        self.replies.keep_negative(key, shared)

    def miss(self, query: bytes, limit: int, counts: dict[tuple[int, int], int]) -> bytes | Pending | None:
        """The strict path, guarded: a bug costs one SERVFAIL and a rate-limited log line, never the server."""
        try:
            reply = self.negative(query, counts, limit)
            if reply is not None:
                return reply
            return self.full(query, limit, counts)
        except Exception:
            self.failures += 1
            now = time.monotonic()
            if now - self._failure_logged > 10.0:  # a packet that triggers a bug must not flood the log
                self._failure_logged = now
                log.exception("failed to answer a query (%d so far); replying SERVFAIL", self.failures)
            return header_reply(query, 2)


def refused(query: bytes) -> bytes | None:
    """REFUSED for a client --allow-from does not allow: its ID and question, nothing else parsed."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    qend = query.find(0, 12) + 5
    if query[4:6] != b"\x00\x01" or not 16 < qend <= len(query):
        return header_reply(query, 5)
    return query[:2] + bytes(((query[2] & 0x79) | 0x80, 5)) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:qend]


__all__ = ["Forwarding", "Responder", "refused"]
