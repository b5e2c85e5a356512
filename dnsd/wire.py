"""DNS wire handling: the precomputed-response fast path, the full dnslib path, EDNS and truncation.

Every answer is rendered once per (lowercased name, type) with ID 0 and the
lowercased question, and kept as bytes. Its compression pointers aim into the
question, whose length does not depend on letter case, so one rendering serves
every spelling: a reply is the query's ID and question spliced into those bytes.
The fast path decides that from the header alone; anything unusual (other opcodes
or classes, several questions, bad EDNS, a reply too big for the client) takes the
full path, which parses with dnslib and applies every rule, and fills the same table.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import RR, DNSHeader, DNSQuestion, DNSRecord
from dnslib import SOA as SOA_RD
from dnslib import SRV as SRV_RD
from dnslib import TXT as TXT_RD
from dnslib import A as A_RD

from .index import Index
from .records import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, Record, SoaData, SrvData
from .resolver import FORMERR, NOTIMP, REFUSED, Answer, resolve

log = logging.getLogger("dnsd.wire")

OPT = 41
BADVERS = 16
SERVER_PAYLOAD = 1232  # what we advertise: the DNS-flag-day size that avoids fragmentation
MIN_PAYLOAD, MAX_PAYLOAD, TCP_LIMIT = 512, 4096, 65535
TXT_TTL = 28800  # dns-version.<zone> (specification)
_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"


class Entry(NamedTuple):
    """A rendered reply, cut around the question so the query's own question can be spliced in.

    ``*_heads`` are the flags and counts for each (RD, CD) combination of the query, so
    no bit twiddling happens per query; ``*_tail`` is everything after the question.
    """

    plain_heads: tuple[bytes, bytes, bytes, bytes]
    plain_tail: bytes
    plain_len: int
    edns_heads: tuple[bytes, bytes, bytes, bytes]
    edns_tail: bytes  # with our OPT record
    edns_len: int
    serial: int  # negative answers: the SOA serial rendered in (stale once it moves); 0 for positive ones
    stat: tuple[int, int]  # (qtype, rcode), the metrics key
    cut: dict[tuple[int, bool], bytes]  # truncated renderings by (size limit, EDNS): dropped with the entry


def _heads(wire: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Flags + counts for a query with neither, RD, CD, or both (index: RD | CD >> 3)."""
    f2, f3, counts = wire[2], wire[3], wire[4:12]
    return tuple(bytes((f2 | (i & 1), f3 | (0x10 if i & 2 else 0))) + counts for i in range(4))  # type: ignore[return-value]


def make_entry(plain: bytes, qend: int, serial: int, stat: tuple[int, int]) -> Entry:
    edns = _with_opt(plain)
    return Entry(_heads(plain), plain[qend:], len(plain), _heads(edns), edns[qend:], len(edns), serial, stat, {})


def opt_record(ext_rcode: int = 0) -> bytes:
    return b"\x00" + struct.pack("!HHBBHH", OPT, SERVER_PAYLOAD, ext_rcode, 0, 0, 0)


def wire_labels(wire: bytes) -> tuple[bytes, ...]:
    labels, i = [], 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return tuple(labels)


def labels_to_text(labels: Iterable[bytes]) -> str:
    """Index key of a question name; a label holding a dot is escaped so it can never match."""
    return ".".join(lb.decode("latin-1").replace(".", "\\.") for lb in labels)


def _rdata(rtype: int, value: object):
    if rtype == A:
        return A_RD(value)
    if rtype == AAAA:
        return AAAA_RD(value)
    if rtype == SRV and isinstance(value, SrvData):
        return SRV_RD(value.priority, value.weight, value.port, _label(value.target))
    if rtype == PTR:
        return PTR_RD(_label(str(value)))
    if rtype == CNAME:
        return CNAME_RD(_label(str(value)))
    if rtype == NS:
        return NS_RD(_label(str(value)))
    if rtype == TXT:
        return TXT_RD(str(value))
    if rtype == SOA and isinstance(value, SoaData):
        return SOA_RD(_label(value.mname), _label(value.rname), value[2:])
    raise ValueError(f"cannot render type {rtype}")


def _label(name: str) -> tuple[bytes, ...]:
    return tuple(name.encode().split(b".")) if name else ()


def render(answer: Answer, qlabels: tuple[bytes, ...], qtype: int, ttl: int, limit: int = TCP_LIMIT) -> bytes:
    """Pack an answer for the lowercased question, with ID 0 and no OPT, cut to ``limit`` bytes.

    Over the limit, whole RRsets are dropped from the end: losing only additional
    data is silent (RFC 2181 9), losing answer or authority data sets TC.
    """
    rrsets: list[tuple[int, list[RR]]] = []
    for section, records in enumerate((answer.answer, answer.authority, answer.additional)):
        groups: dict[tuple[str, int], list[RR]] = {}
        for name, rtype, rdata in records:
            rname = qlabels if section == 0 else _label(name)  # owner = the question: a pointer to it
            rr_ttl = TXT_TTL if rtype == TXT else ttl
            groups.setdefault((name, rtype), []).append(RR(rname, rtype, 1, rr_ttl, _rdata(rtype, rdata)))
        rrsets += [(section, rrs) for rrs in groups.values()]

    def pack(count: int) -> bytes:
        header = DNSHeader(id=0, qr=1, aa=int(answer.authoritative), rd=0, rcode=answer.rcode)  # RD comes from the query
        header.tc = int(any(section < 2 for section, _ in rrsets[count:]))
        msg = DNSRecord(header, questions=[DNSQuestion(qlabels, qtype, 1)])
        sections = (msg.rr, msg.auth, msg.ar)
        for section, rrs in rrsets[:count]:
            sections[section].extend(rrs)
        return msg.pack()

    wire = pack(len(rrsets))
    if len(wire) <= limit:
        return wire
    low, high = 0, len(rrsets) - 1  # largest prefix of RRsets that fits
    while low < high:
        mid = (low + high + 1) // 2
        if len(pack(mid)) <= limit:
            low = mid
        else:
            high = mid - 1
    return pack(low)


def _with_opt(wire: bytes, ext_rcode: int = 0) -> bytes:
    arcount = int.from_bytes(wire[10:12], "big") + 1
    return wire[:10] + arcount.to_bytes(2, "big") + wire[12:] + opt_record(ext_rcode)


class Responder:
    """Turns query bytes into reply bytes for one index; owns the rendered-answer table."""

    def __init__(self, index: Index, ttl: int, synced: Callable[[], bool], cache_size: int = 200_000) -> None:
        self.index = index
        self.ttl = ttl
        self.synced = synced
        self.serial = 0
        self.cache_size = cache_size
        # lowercased question (name, type, class) in wire form -> Entry; a plain dict, bounded
        # first-in-first-out: a cachetools LRUCache lookup costs ~0.4 us in Python, a dict ~0.05 us.
        self._table: dict[bytes, Entry] = {}
        self._keys: dict[str, set[bytes]] = {}  # index name (text) -> its keys in the table
        self.counts: dict[tuple[int, int], int] = {}  # (qtype, rcode) -> replies

    def invalidate(self, names: Iterable[str]) -> None:
        table, keys = self._table, self._keys
        if not keys:
            return
        for name in names:
            for key in keys.pop(name, ()):
                table.pop(key, None)

    def clear(self) -> None:
        self._table.clear()
        self._keys.clear()

    @staticmethod
    def _count(counts: dict[tuple[int, int], int], qtype: int, rcode: int) -> None:
        key = (qtype, rcode)
        counts[key] = counts.get(key, 0) + 1

    # -- the fast path -------------------------------------------------------------
    def fast(self, query: bytes, limit: int, counts: dict[tuple[int, int], int]) -> bytes | None:
        """A reply from the table, or None when the full path must decide.

        ``limit`` is the UDP size without EDNS (512) or TCP_LIMIT for TCP. The key is the
        whole question lowercased; only the full path inserts keys, and only for valid
        questions, so a hit proves the question is well formed (the label walk is free).
        Lowercasing also folds qtype bytes 0x41-0x5A (types 65-90 with 97-122): none of
        them is a type we hold, so both answers are the same bytes after the question.
        """
        counts_field = query[4:12]
        if counts_field == _PLAIN_COUNTS:  # QD=1, nothing else: the question is the rest
            entry = self._table.get(query[12:].lower())
            if entry is None or query[2] & 0xF8 or entry.plain_len > limit:
                return None
            if entry.serial and entry.serial != self.serial:
                return None
            counts[entry.stat] = counts.get(entry.stat, 0) + 1
            return query[:2] + entry.plain_heads[(query[2] & 1) | ((query[3] >> 3) & 2)] + query[12:] + entry.plain_tail
        if counts_field != _EDNS_COUNTS or query[2] & 0xF8:
            return None
        qend = query.find(0, 12) + 5
        entry = self._table.get(query[12:qend].lower())
        if (
            entry is None
            or query[qend : qend + 3] != b"\x00\x00\x29"  # root owner, type OPT
            or query[qend + 6 : qend + 7] != b"\x00"  # EDNS version 0
            or len(query) != qend + 11 + int.from_bytes(query[qend + 9 : qend + 11], "big")
            or (entry.serial and entry.serial != self.serial)
        ):
            return None
        if limit == MIN_PAYLOAD:
            limit = max(MIN_PAYLOAD, min(MAX_PAYLOAD, int.from_bytes(query[qend + 3 : qend + 5], "big")))
        if entry.edns_len > limit:
            return None
        counts[entry.stat] = counts.get(entry.stat, 0) + 1
        return query[:2] + entry.edns_heads[(query[2] & 1) | ((query[3] >> 3) & 2)] + query[12:qend] + entry.edns_tail

    # -- the full path -------------------------------------------------------------
    def entry(self, qwire: bytes, qtype: int) -> Entry:
        """The table's reply for (lowercased wire name, type), rendered now if missing or stale."""
        key = (qwire + struct.pack("!HH", qtype, 1)).lower()  # as the fast path builds it (see fast())
        entry = self._table.get(key)
        if entry is not None and not (entry.serial and entry.serial != self.serial):
            return entry
        labels = wire_labels(qwire)
        name = labels_to_text(labels)
        answer = resolve(self.index, name, qtype, self.synced())
        plain = render(answer, labels, qtype, self.ttl)
        serial = self.serial if answer.negative else 0
        entry = make_entry(plain, 12 + len(qwire) + 4, serial, (qtype, answer.rcode))
        if answer.authoritative:  # SERVFAIL before sync and REFUSED are never kept
            self._store(key, name, entry)
        return entry

    def _store(self, key: bytes, name: str, entry: Entry) -> None:
        table = self._table
        if key not in table and len(table) >= self.cache_size:
            old = next(iter(table))  # first in, first out: O(1), and hot names come straight back
            del table[old]
            old_name = labels_to_text(wire_labels(old[:-4]))
            keys = self._keys.get(old_name)
            if keys is not None:
                keys.discard(old)
                if not keys:
                    del self._keys[old_name]
        table[key] = entry
        self._keys.setdefault(name, set()).add(key)

    def full(self, query: bytes, limit: int, counts: dict[tuple[int, int], int]) -> bytes | None:
        """Parse with dnslib and answer by every rule; None means drop the packet."""
        try:
            msg = DNSRecord.parse(query)
        except Exception:  # dnslib raises several types on garbage
            return _error_header(query, FORMERR)
        if msg.header.qr:
            return None  # a reply sent to us: answering could loop
        opts = [rr for rr in msg.ar if rr.rtype == OPT]
        edns = bool(opts)
        if msg.header.opcode != 0:
            return self._error(msg, NOTIMP, edns, counts)
        if len(msg.questions) != 1 or len(opts) > 1:
            return self._error(msg, FORMERR, edns, counts)
        if opts:
            if (opts[0].ttl >> 16) & 0xFF:  # EDNS version above 0
                return self._error(msg, BADVERS, edns, counts)
            if limit == MIN_PAYLOAD:
                limit = max(MIN_PAYLOAD, min(MAX_PAYLOAD, opts[0].rclass))
        q = msg.questions[0]
        if q.qclass != 1:
            return self._error(msg, REFUSED, edns, counts)
        labels = tuple(q.qname.label)
        if any(len(lb) > 63 for lb in labels) or sum(len(lb) + 1 for lb in labels) + 1 > 255:
            return self._error(msg, FORMERR, edns, counts)  # dnslib reads 0x40/0x80 label types as lengths
        question = name_to_wire_labels(labels) + struct.pack("!HH", q.qtype, q.qclass)
        qwire = name_to_wire_labels(tuple(lb.lower() for lb in labels))
        entry = self.entry(qwire, q.qtype)
        qend = 12 + len(question)
        heads, tail = (entry.edns_heads, entry.edns_tail) if edns else (entry.plain_heads, entry.plain_tail)
        reply = b"".join((query[:2], heads[(query[2] & 1) | ((query[3] >> 3) & 2)], question, tail))
        if len(reply) > limit:
            cut = entry.cut.get((limit, edns))
            if cut is None:  # rendering with truncation packs several times: keep the result
                labels = wire_labels(qwire)
                answer = resolve(self.index, labels_to_text(labels), q.qtype, self.synced())
                cut = render(answer, labels, q.qtype, self.ttl, limit - (11 if edns else 0))
                cut = entry.cut[(limit, edns)] = _with_opt(cut) if edns else cut
            reply = b"".join((query[:2], _heads(cut)[(query[2] & 1) | ((query[3] >> 3) & 2)], question, cut[qend:]))
        counts[entry.stat] = counts.get(entry.stat, 0) + 1
        return reply

    def _error(self, msg: DNSRecord, rcode: int, edns: bool, counts: dict[tuple[int, int], int]) -> bytes:
        header = DNSHeader(id=msg.header.id, qr=1, opcode=msg.header.opcode, rd=msg.header.rd, rcode=rcode & 0xF)
        questions = msg.questions if rcode != FORMERR else []
        wire = DNSRecord(header, questions=questions).pack()
        self._count(counts, msg.questions[0].qtype if msg.questions else 0, rcode)
        return _with_opt(wire, rcode >> 4) if edns or rcode == BADVERS else wire

    def answer(
        self, query: bytes, limit: int = MIN_PAYLOAD, counts: dict[tuple[int, int], int] | None = None
    ) -> bytes | None:
        """The reply to one query (UDP: limit 512 before EDNS; TCP: TCP_LIMIT); None: drop."""
        if type(query) is not bytes:
            query = bytes(query)
        if counts is None:
            counts = self.counts
        reply = self.fast(query, limit, counts)
        if reply is not None:
            return reply
        try:
            return self.full(query, limit, counts)
        except Exception:  # a bug must cost one reply, never the server
            log.exception("failed to answer a query; replying SERVFAIL")
            return _error_header(query, 2)


def name_to_wire_labels(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes((len(lb),)) + lb for lb in labels) + b"\x00"


def _error_header(query: bytes, rcode: int) -> bytes | None:
    """A bare reply for a query we cannot parse: its ID and opcode, no sections; drop if no header."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    return query[:2] + bytes(((query[2] & 0x79) | 0x80, rcode)) + b"\x00" * 8


__all__ = ["Entry", "Record", "Responder", "render"]
