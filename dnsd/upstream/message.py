"""Pure functions on upstream replies in wire form: validate, normalise, cacheable TTL, age, truncate.

A reply is walked once (names skipped, never decompressed) to find each record's TTL
offset, so a cached reply is re-aged by patching those four-byte fields and nothing
is ever re-packed: whatever types and compression the upstream used pass through intact.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from dnsd.dns.const import NOERROR, NXDOMAIN, OPT, SOA
from dnsd.dns.names import skip_name

_U16 = struct.Struct("!H")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class Record(NamedTuple):
    section: int  # 0 answer, 1 authority, 2 additional
    start: int
    rtype: int
    ttl: int
    end: int


class Reply(NamedTuple):
    wire: bytes
    qend: int  # end of the question
    rcode: int
    records: tuple[Record, ...]


def parse(wire: bytes) -> Reply:
    """Walk a reply with exactly one question; ValueError on anything malformed."""
    if len(wire) < 12:
        raise ValueError("shorter than a header")
    qd, an, ns, ar = struct.unpack_from("!HHHH", wire, 4)
    if qd != 1:
        raise ValueError(f"{qd} questions")
    try:
        qend = skip_name(wire, 12) + 4
        if qend > len(wire):
            raise ValueError("question cut short")
        records: list[Record] = []
        i = qend
        for section, count in enumerate((an, ns, ar)):
            for _ in range(count):
                start = i
                i = skip_name(wire, i)
                rtype, _, ttl, rdlength = _RR.unpack_from(wire, i)
                i += 10 + rdlength
                if i > len(wire):
                    raise ValueError("record cut short")
                records.append(Record(section, start, rtype, ttl, i))
    except (IndexError, struct.error):
        raise ValueError("cut short") from None
    if i != len(wire):
        raise ValueError("trailing bytes")
    rcode = wire[3] & 0x0F
    return Reply(wire, qend, rcode, tuple(records))


def normalise(reply: Reply) -> Reply:
    """ID 0, RD clear (the client's RD is put back per query), no OPT (ours is added per client)."""
    wire = reply.wire
    kept = [r for r in reply.records if r.rtype != OPT]
    head = b"\x00\x00" + bytes((wire[2] & 0xFE, wire[3])) + wire[4:10]
    ar = sum(1 for r in kept if r.section == 2)
    body = bytearray(wire[12 : reply.qend])
    records: list[Record] = []
    for r in kept:  # dropping OPT is safe: nothing points into it, pointers only point backwards
        start = 12 + len(body)
        body += wire[r.start : r.end]
        records.append(Record(r.section, start, r.rtype, r.ttl, start + r.end - r.start))
    out = head + _U16.pack(ar) + bytes(body)
    return Reply(out, reply.qend, reply.rcode, tuple(records))


def ttl_offset(wire: bytes, record: Record) -> int:
    return skip_name(wire, record.start) + 4


def cache_ttl(reply: Reply, max_ttl: int) -> int:
    """Seconds to keep a reply: the minimum TTL of a positive answer; RFC 2308 for a negative one
    (min of the SOA's TTL and its MINIMUM field); 0 = do not cache (errors, negatives without SOA)."""
    records = [r for r in reply.records if r.rtype != OPT]
    answers = [r for r in records if r.section == 0]
    if reply.rcode == NOERROR and answers:
        return max(0, min(min(r.ttl for r in records), max_ttl))
    if reply.rcode in (NOERROR, NXDOMAIN):
        for r in records:
            if r.section == 1 and r.rtype == SOA:
                minimum: int = struct.unpack_from("!I", reply.wire, r.end - 4)[0]
                return max(0, min(r.ttl, minimum, max_ttl))
    return 0


def aged(reply: Reply, offsets: tuple[int, ...], age: int | None, fixed: int | None = None, cap: int | None = None) -> bytes:
    """The reply with every TTL (at most ``cap``: no record outlives the entry) lowered by ``age``
    seconds (not below 0), or set to ``fixed``."""
    wire = bytearray(reply.wire)
    for offset, record in zip(offsets, (r for r in reply.records if r.rtype != OPT), strict=True):
        ttl = record.ttl if cap is None else min(record.ttl, cap)
        ttl = fixed if fixed is not None else max(0, ttl - (age or 0))
        struct.pack_into("!I", wire, offset, ttl)
    return bytes(wire)


def truncate(wire: bytes, reply: Reply, limit: int) -> bytes:
    """The longest prefix of whole records that fits ``limit``; TC when answer or authority data
    was lost (RFC 2181 9: additional data is dropped silently). Pointers only point backwards,
    so a prefix stays valid."""
    keep = [r for r in reply.records if r.end <= limit]
    lost_data = any(r.section < 2 for r in reply.records[len(keep):])
    end = keep[-1].end if keep else reply.qend
    counts = [sum(1 for r in keep if r.section == s) for s in range(3)]
    flags = bytes((wire[2] | (0x02 if lost_data else 0), wire[3]))
    return wire[:2] + flags + wire[4:6] + struct.pack("!HHH", *counts) + wire[12:end]
