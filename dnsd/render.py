"""Rendering answers to wire bytes: dnslib for positive answers, hand-built templates for the rest.

A positive answer is packed once by dnslib (with ID 0 and the lowercased question) and
kept by the Responder. Negative and error answers need no per-name work at all: an
NXDOMAIN or NODATA is the query's own question plus its zone's SOA, so it is one
template per (zone, rcode), spliced like the fast path's replies (see wire.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

from cachetools import LRUCache
from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import RR, DNSHeader, DNSQuestion, DNSRecord
from dnslib import SOA as SOA_RD
from dnslib import SRV as SRV_RD
from dnslib import TXT as TXT_RD
from dnslib import A as A_RD

from .parse import opt_record
from .records import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, SoaData, SrvData
from .resolver import Answer

TXT_TTL = 28800  # dns-version.<zone> (specification)
TCP_LIMIT = 65535


class Entry(NamedTuple):
    """A rendered reply, cut around the question so the query's own question can be spliced in.

    ``*_heads`` are the flags and counts for each (RD, CD) combination of the query, so
    no bit twiddling happens per query; ``plain_tail`` is everything after the question. With
    EDNS the reply is the same plus ``opt`` (our OPT record, one object per payload size):
    keeping a second tail cost every entry ~150 bytes, the join of 11 more bytes costs ~20 ns.
    """

    plain_heads: tuple[bytes, bytes, bytes, bytes]
    plain_tail: bytes
    plain_len: int
    edns_heads: tuple[bytes, bytes, bytes, bytes]  # ARCOUNT one more
    opt: bytes
    serial: int  # templates: the SOA serial rendered in (stale once it moves); 0 for positive answers
    stat: tuple[int, int]  # (qtype, rcode), the metrics key; templates: qtype 0, set per query


OPT_LEN = 11  # our OPT record: root owner, type, payload, extended rcode/version/flags, no options
_HEADS: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}  # shared: most entries have one of a few headers
_OPTS: dict[int, bytes] = {}
_STATS: dict[tuple[int, int], tuple[int, int]] = {}
# Truncated renderings (TC set) by (entry, size limit, EDNS). Keyed by the entry's value, so an
# entry's cut is found for as long as equal data is served and a changed answer never meets an
# old cut; rare (answers over 512 bytes to clients without EDNS), so a small LRU is plenty: each
# item (~1 KB with the entry it keeps alive) is paid again in every worker.
_CUTS: LRUCache[tuple[Entry, int, bool], bytes] = LRUCache(maxsize=256)


def heads(wire: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Flags + counts for a query with neither, RD, CD, or both (index: RD | CD >> 3)."""
    key = bytes(wire[2:12])
    found = _HEADS.get(key)
    if found is None:
        f2, f3, counts = wire[2], wire[3], wire[4:12]
        found = tuple(bytes((f2 | (i & 1), f3 | (0x10 if i & 2 else 0))) + counts for i in range(4))  # type: ignore[assignment]
        if len(_HEADS) < 4096:  # a bound, though flags x counts of real answers are few
            _HEADS[key] = found  # type: ignore[assignment]
    return found  # type: ignore[return-value]


def with_opt(wire: bytes, payload: int, ext_rcode: int = 0) -> bytes:
    arcount = int.from_bytes(wire[10:12], "big") + 1
    return wire[:10] + arcount.to_bytes(2, "big") + wire[12:] + opt_record(payload, ext_rcode)


def make_entry(plain: bytes, qend: int, serial: int, stat: tuple[int, int], payload: int) -> Entry:
    opt = _OPTS.get(payload)
    if opt is None:
        opt = _OPTS[payload] = opt_record(payload)
    stat = _STATS.setdefault(stat, stat)  # a few (qtype, rcode) pairs shared by every entry
    return Entry(heads(plain), plain[qend:], len(plain), heads(with_opt(plain[:12], payload)), opt, serial, stat)


def splice(entry: Entry, query: bytes, question: bytes, edns: bool) -> bytes:
    """The reply to ``query`` from ``entry``: the query's ID, RD and CD bits and ``question`` spliced in."""
    flags = (query[2] & 1) | ((query[3] >> 3) & 2)
    if edns:
        return b"".join((query[:2], entry.edns_heads[flags], question, entry.plain_tail, entry.opt))
    return b"".join((query[:2], entry.plain_heads[flags], question, entry.plain_tail))


def cut_reply(entry: Entry, size: int, edns: bool, make: Callable[[], bytes]) -> bytes:
    """The truncated rendering of ``entry`` for ``size`` (``make()`` renders it the first time)."""
    key = (entry, size, edns)
    cut = _CUTS.get(key)
    if cut is None:
        cut = _CUTS[key] = make()
    return cut


def wire_labels(wire: bytes) -> tuple[bytes, ...]:
    labels, i = [], 0
    while wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return tuple(labels)


def labels_to_text(labels: Iterable[bytes]) -> str:
    """Index key of a question name; a label holding a dot is escaped so it can never match."""
    return ".".join(lb.decode("latin-1").replace(".", "\\.") for lb in labels)


def name_wire(name: str) -> bytes:
    """Uncompressed wire form of a lowercase text name ("" is the root)."""
    return b"".join(bytes((len(lb),)) + lb for lb in name.encode().split(b".") if lb) + b"\x00"


def template(rcode: int, aa: bool, soa: tuple[str, SoaData, int] | None, payload: int) -> Entry:
    """A reply that does not depend on the name asked: header + (the query's question) + the zone's SOA, if any.

    The SOA's names are written uncompressed, so the tail is the same bytes after every question.
    """
    counts = struct.pack("!HHHH", 1, 0, 1 if soa else 0, 0)
    head = bytes((0x84 if aa else 0x80, rcode)) + counts
    tail = b""
    if soa is not None:
        zone, data, ttl = soa
        rdata = name_wire(data.mname) + name_wire(data.rname) + struct.pack("!IIIII", *data[2:])
        tail = name_wire(zone) + struct.pack("!HHIH", SOA, 1, ttl, len(rdata)) + rdata
    plain = b"\x00\x00" + head + tail
    serial = data.serial if soa is not None else 0
    return make_entry(plain, 12, serial, (0, rcode), payload)


def rdata_of(rtype: int, value: object):
    if rtype == A:
        return A_RD(value)
    if rtype == AAAA:
        return AAAA_RD(value)
    if rtype == SRV and isinstance(value, SrvData):
        return SRV_RD(value.priority, value.weight, value.port, label_tuple(value.target))
    if rtype == PTR:
        return PTR_RD(label_tuple(str(value)))
    if rtype == CNAME:
        return CNAME_RD(label_tuple(str(value)))
    if rtype == NS:
        return NS_RD(label_tuple(str(value)))
    if rtype == TXT:
        return TXT_RD(str(value))
    if rtype == SOA and isinstance(value, SoaData):
        return SOA_RD(label_tuple(value.mname), label_tuple(value.rname), value[2:])
    raise ValueError(f"cannot render type {rtype}")


def label_tuple(name: str) -> tuple[bytes, ...]:
    return tuple(name.encode().split(b".")) if name else ()


def render(answer: Answer, qlabels: tuple[bytes, ...], qtype: int, ttl: int, limit: int = TCP_LIMIT) -> bytes:
    """Pack an answer for the lowercased question, with ID 0 and no OPT, cut to ``limit`` bytes.

    Over the limit, whole RRsets are dropped from the end: losing only additional
    data is silent (RFC 2181 9), losing answer or authority data sets TC.
    """
    rrsets: list[tuple[int, list[RR]]] = []
    asked = answer.answer[0][0] if answer.answer else None  # later answer records may follow a CNAME
    for section, records in enumerate((answer.answer, answer.authority, answer.additional)):
        groups: dict[tuple[str, int], list[RR]] = {}
        for name, rtype, rdata in records:
            # Owner = the question: a pointer to it, in the asker's spelling.
            rname = qlabels if section == 0 and name == asked else label_tuple(name)
            rr_ttl = TXT_TTL if rtype == TXT else ttl
            groups.setdefault((name, rtype), []).append(RR(rname, rtype, 1, rr_ttl, rdata_of(rtype, rdata)))
        rrsets += [(section, rrs) for rrs in groups.values()]

    def pack(count: int) -> bytes:
        header = DNSHeader(id=0, qr=1, aa=int(answer.authoritative), rd=0, rcode=answer.rcode)  # RD comes from the query
        header.tc = int(any(section < 2 for section, _ in rrsets[count:]))
        msg = DNSRecord(header, questions=[DNSQuestion(qlabels, qtype, 1)])
        sections = (msg.rr, msg.auth, msg.ar)
        for section, rrs in rrsets[:count]:
            sections[section].extend(rrs)
        return bytes(msg.pack())

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


__all__ = [
    "OPT_LEN", "TXT_TTL", "Entry", "cut_reply", "heads", "label_tuple", "labels_to_text", "make_entry", "name_wire",
    "rdata_of", "render", "splice", "template", "wire_labels", "with_opt",
]
