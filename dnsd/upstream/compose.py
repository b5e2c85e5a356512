"""A client's reply from a cached or forwarded entry: its ID, flags and question spliced in, cut to its
limit; and the entries of the error replies the forwarder answers without an upstream's."""

from __future__ import annotations

import struct

from dnsd.dns.const import IN
from dnsd.dns.query import Pending
from dnsd.dns.reply import OPT_LEN, Entry, cut_reply, heads, make_entry, splice, with_opt
from dnsd.upstream.message import parse, truncate


def compose(pending: Pending, entry: Entry, counts: dict[tuple[int, int], int], payload: int) -> bytes:
    """The client's reply from an entry: its ID, flags and question spliced in, cut to its limit."""
    query, question = pending.query, pending.question
    reply = splice(entry, query, question, pending.edns)
    if len(reply) > pending.limit:

        def make() -> bytes:
            plain = b"\x00\x00" + entry.plain_heads[0] + question.lower() + entry.plain_tail
            cut = truncate(plain, parse(plain), pending.limit - (OPT_LEN if pending.edns else 0))
            return with_opt(cut, payload) if pending.edns else cut

        cut = cut_reply(entry, pending.limit, pending.edns, make)
        flags = (query[2] & 1) | ((query[3] >> 3) & 2)
        reply = b"".join((query[:2], heads(cut)[flags], question, cut[12 + len(question):]))
    counts[entry.stat] = counts.get(entry.stat, 0) + 1
    return reply


def error_entry(qwire: bytes, qtype: int, rcode: int, payload: int) -> Entry:
    """An error reply to (name in wire form, type): QR, RA and ``rcode``, nothing after the question."""
    plain = b"\x00\x00\x80" + bytes((0x80 | rcode,)) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + qwire + struct.pack(
        "!HH", qtype, IN)
    return make_entry(plain, len(plain), 0, (qtype, rcode), payload)


__all__ = ["compose", "error_entry"]
