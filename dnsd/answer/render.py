"""Rendering answers to wire bytes: dnslib for positive answers, hand-built templates for the rest.

A positive answer is packed once by dnslib (with ID 0 and the lowercased question) and
kept by the Responder. Negative and error answers need no per-name work at all: an
NXDOMAIN or NODATA is the query's own question plus its zone's SOA, so it is one
template per (zone, rcode), spliced like the fast path's replies (dns/reply.py).
"""

from __future__ import annotations

import struct

from dnslib import AAAA as AAAA_RD
from dnslib import CNAME as CNAME_RD
from dnslib import NS as NS_RD
from dnslib import PTR as PTR_RD
from dnslib import RD, RR, DNSHeader, DNSQuestion, DNSRecord
from dnslib import SOA as SOA_RD
from dnslib import SRV as SRV_RD
from dnslib import TXT as TXT_RD
from dnslib import A as A_RD

from dnsd.dns.const import AAAA, CNAME, NS, PTR, SOA, SRV, TCP_LIMIT, TXT, A
from dnsd.dns.names import label_tuple, name_wire
from dnsd.dns.reply import Entry, make_entry
from dnsd.zone.records import SoaData, SrvData
from dnsd.zone.resolver import Answer

TXT_TTL = 28800  # dns-version.<zone> (specification)


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


def rdata_of(rtype: int, value: object) -> RD:
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


__all__ = ["TXT_TTL", "rdata_of", "render", "template"]
