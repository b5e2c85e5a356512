"""Strict query parsing: bytes -> one question and its EDNS, or the rcode a malformed query gets.

Hand-written rather than dnslib's parser, for two reasons: dnslib accepts what the RFCs
reject (trailing bytes, an OPT record anywhere, option lengths that lie, 0x40/0x80 label
types read as lengths), and its exceptions were the catch-all path's main source. Every
input ends here in one of three outcomes: None (drop: no readable header, or QR set),
a ``Query`` with rcode 0 (answer it), or a ``Query`` with an error rcode whose reply is
built from the raw bytes (never re-encoded). Outcomes follow what Knot DNS answers.
"""

from __future__ import annotations

from typing import NamedTuple

from dnsd.dns.const import BADVERS, EXISTS, FORMERR, MAX_NAME, NOERROR, NOTIMP, OPT, REFUSED
from dnsd.dns.reply import Entry, opt_record


class Query(NamedTuple):
    rcode: int  # 0: answerable; else the error to reply with
    qend: int  # offset just past the question when it is echoable (exactly one, well formed), else 12
    qtype: int = 0
    qclass: int = 0
    edns: bool = False  # one well-formed OPT: the reply carries ours
    payload: int = 0  # the client's advertised UDP size (EDNS only)


class Pending(NamedTuple):
    """A well-formed query that is not ours to answer: the listener hands it to the forwarder.

    With ``steps``, an autopath continuation of our own name: the forwarder asks the steps
    upstream in order (upstream/steps.py); if all are NXDOMAIN the reply is ``fallback``,
    and if one fails it is ``nxdomain``.
    """

    query: bytes
    question: bytes  # as asked (the client's case), type and class included
    qwire: bytes  # the name lowercased, in wire form
    qtype: int
    edns: bool
    limit: int  # reply size limit (the client's EDNS size within --udp-max-payload, 512, or TCP_LIMIT)
    name: str  # lowercased text, no final dot
    steps: tuple[str, ...] = ()
    fallback: Entry | None = None
    nxdomain: Entry | None = None
    depends: tuple[str, ...] = ()  # names of ours the reply is derived from (a cached one goes when they change)
    # An ExternalName chain ending outside our zones: the aliases' targets in order, the last one (the
    # only step) to ask upstream; the reply is the chain, then that name's records, with its rcode.
    aliases: tuple[str, ...] = ()


def _name(msg: bytes, i: int, end: int, pointers: bool) -> int:
    """Offset just past the name at ``i``; -1 if malformed. Pointers go strictly backwards."""
    total, jumped, after = 1, False, -1
    guard = i
    while True:
        if i >= end:
            return -1
        length = msg[i]
        if length == 0:
            return after if jumped else i + 1
        kind = length & 0xC0
        if kind == 0xC0:
            if not pointers or i + 1 >= end:
                return -1
            target = ((length & 0x3F) << 8) | msg[i + 1]
            if target >= guard:  # only backwards, into what came before: no loops
                return -1
            if not jumped:
                after, jumped = i + 2, True
            guard = i = target
            continue
        if kind:  # 0x40 and 0x80: extended and reserved label types (RFC 6891 dropped them)
            return -1
        total += length + 1
        if total > MAX_NAME:
            return -1
        i += length + 1


def options_ok(msg: bytes, i: int, end: int) -> bool:
    """EDNS options fill the OPT RDATA exactly (each: code, length, data)."""
    while i < end:
        if i + 4 > end:
            return False
        i += 4 + int.from_bytes(msg[i + 2 : i + 4], "big")
    return i == end


def parse(msg: bytes) -> Query | None:
    """Classify one query message (see the module docstring)."""
    n = len(msg)
    if n < 12 or msg[2] & 0x80:
        return None
    qdcount = int.from_bytes(msg[4:6], "big")
    ancount = int.from_bytes(msg[6:8], "big")
    nscount = int.from_bytes(msg[8:10], "big")
    arcount = int.from_bytes(msg[10:12], "big")
    i, qtype, qclass = 12, 0, 0
    for _ in range(qdcount):
        i = _name(msg, i, n, pointers=False)  # a query's own question has nothing before it to point to
        if i < 0 or i + 4 > n:
            return Query(FORMERR, 12)
        qtype = int.from_bytes(msg[i : i + 2], "big")
        qclass = int.from_bytes(msg[i + 2 : i + 4], "big")
        i += 4
    qend = i if qdcount == 1 else 12
    edns, version, payload = False, 0, 0
    additional_from = ancount + nscount
    for record in range(ancount + nscount + arcount):
        start = i
        i = _name(msg, i, n, pointers=True)
        if i < 0 or i + 10 > n:
            return Query(FORMERR, 12)
        rtype = int.from_bytes(msg[i : i + 2], "big")
        rdlength = int.from_bytes(msg[i + 8 : i + 10], "big")
        rdata = i + 10
        i = rdata + rdlength
        if i > n:
            return Query(FORMERR, 12)
        if rtype == OPT:
            # RFC 6891 6.1.1: one OPT, in the additional section, owned by the root; options must add up.
            if record < additional_from or edns or msg[start] != 0 or not options_ok(msg, rdata, i):
                return Query(FORMERR, 12)
            edns = True
            payload = int.from_bytes(msg[start + 3 : start + 5], "big")
            version = msg[start + 6]
    if i != n:
        return Query(FORMERR, 12)  # trailing bytes after the last record
    opcode = (msg[2] >> 3) & 0x0F
    if opcode:
        return Query(NOTIMP, qend, qtype, qclass, edns, payload)
    if qdcount != 1:
        return Query(FORMERR, 12, 0, 0, edns, payload)
    if version:
        return Query(BADVERS, qend, qtype, qclass, edns, payload)
    if qtype == OPT:
        return Query(FORMERR, qend, qtype, qclass, edns, payload)  # a meta type, not askable (RFC 6891 6.1.1)
    if qclass != 1:
        return Query(REFUSED, qend, qtype, qclass, edns, payload)
    if qtype == EXISTS:
        return Query(NOTIMP, qend, qtype, qclass, edns, payload)  # as Knot
    return Query(NOERROR, qend, qtype, qclass, edns, payload)


def error_reply(msg: bytes, query: Query, payload: int) -> bytes:
    """The reply for an error rcode, from the query's own bytes: its ID, opcode, RD, and question if echoable.

    The question is copied, never re-encoded, so a name a library would choke on cannot raise here.
    ``payload`` is what our OPT advertises; BADVERS always carries an OPT (RFC 6891 6.1.3).
    """
    rcode = query.rcode
    echo = query.qend > 12
    opt = query.edns or rcode == BADVERS
    head = msg[:2] + bytes((0x80 | (msg[2] & 0x79), rcode & 0x0F, 0, int(echo), 0, 0, 0, 0, 0, int(opt)))
    reply = head + msg[12 : query.qend] if echo else head
    if opt:
        reply += opt_record(payload, rcode >> 4)
    return reply


def header_reply(msg: bytes, rcode: int) -> bytes | None:
    """A bare reply (ID, opcode, RD, rcode; no sections) for what cannot be parsed; None: drop."""
    if len(msg) < 12 or msg[2] & 0x80:
        return None
    return msg[:2] + bytes(((msg[2] & 0x79) | 0x80, rcode)) + b"\x00" * 8


__all__ = ["Pending", "Query", "error_reply", "header_reply", "options_ok", "parse"]
