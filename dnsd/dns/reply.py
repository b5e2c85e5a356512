"""Reply bytes kept once and answered many times: an Entry is a rendered reply cut around its question.

The responder and the forwarder both answer from Entries: a reply is the query's ID, flags and
question spliced into the entry's bytes (``splice``), so one rendering serves every spelling
of a name and every client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from cachetools import LRUCache

from dnsd.dns.const import AAAA, A
from dnsd.dns.names import skip_name


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
    rotate: tuple[int, int, int] | None = None  # the address records each reply rotates (address_run)


OPT_LEN = 11  # our OPT record: root owner, type, payload, extended rcode/version/flags, no options
_HEADS: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}  # shared: most entries have one of a few headers
_OPTS: dict[int, bytes] = {}
_STATS: dict[tuple[int, int], tuple[int, int]] = {}
# Truncated renderings (TC set) by (entry, size limit, EDNS). Keyed by the entry's value, so an
# entry's cut is found for as long as equal data is served and a changed answer never meets an
# old cut; rare (answers over 512 bytes to clients without EDNS), so a small LRU is plenty: each
# item (~1 KB with the entry it keeps alive) is paid again in every worker.
_CUTS: LRUCache[tuple[Entry, int, bool], bytes] = LRUCache(maxsize=256)


def opt_record(payload: int, ext_rcode: int = 0) -> bytes:
    """Our OPT: root owner, our UDP payload size, the extended rcode bits, version 0, no flags or options."""
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + bytes((ext_rcode, 0, 0, 0, 0, 0))


def heads(wire: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """Flags + counts for a query with neither, RD, CD, or both (index: RD | CD >> 3)."""
    key = bytes(wire[2:12])
    found = _HEADS.get(key)
    if found is None:
        f2, f3, counts = wire[2], wire[3], wire[4:12]
        b0, b1, b2, b3 = (bytes((f2 | (i & 1), f3 | (0x10 if i & 2 else 0))) + counts for i in range(4))
        found = (b0, b1, b2, b3)
        if len(_HEADS) < 4096:  # a bound, though flags x counts of real answers are few
            _HEADS[key] = found
    return found


def with_opt(wire: bytes, payload: int, ext_rcode: int = 0) -> bytes:
    arcount = int.from_bytes(wire[10:12], "big") + 1
    return wire[:10] + arcount.to_bytes(2, "big") + wire[12:] + opt_record(payload, ext_rcode)


def make_entry(plain: bytes, qend: int, serial: int, stat: tuple[int, int], payload: int,
               rotate: bool = False) -> Entry:
    """``rotate`` (loadbalance): each reply rotates the answer's addresses (``rotated``)."""
    opt = _OPTS.get(payload)
    if opt is None:
        opt = _OPTS[payload] = opt_record(payload)
    stat = _STATS.setdefault(stat, stat)  # a few (qtype, rcode) pairs shared by every entry
    run = address_run(plain, qend) if rotate else None
    return Entry(heads(plain), plain[qend:], len(plain), heads(with_opt(plain[:12], payload)), opt, serial, stat, run)


def address_run(plain: bytes, qend: int) -> tuple[int, int, int] | None:
    """Where the answer's A or AAAA records can be rotated: (offset in the tail, record size, count), or
    None. The run is the first one of two or more records in a row of one address type whose owners are
    the same compression pointer: every record then has the same size, and nothing can point into the
    run, so moving whole records keeps every other offset and pointer of the reply valid."""
    i, start, size, count, owner, rtype = qend, 0, 0, 0, b"", 0
    try:
        for _ in range(int.from_bytes(plain[6:8], "big")):
            begin = i
            i = skip_name(plain, i)
            name, kind = plain[begin:i], int.from_bytes(plain[i : i + 2], "big")
            i += 10 + int.from_bytes(plain[i + 8 : i + 10], "big")
            address = kind in (A, AAAA) and len(name) == 2 and name[0] >= 0xC0
            if address and count and name == owner and kind == rtype and i - begin == size:
                count += 1
            elif count >= 2:
                break
            elif address:
                start, size, count, owner, rtype = begin, i - begin, 1, name, kind
            else:
                count = 0
    except (IndexError, ValueError):
        return None
    return (start - qend, size, count) if count >= 2 else None


def rotated(tail: bytes, run: tuple[int, int, int], query: bytes) -> bytes:
    """``tail`` with the address records of ``run`` rotated by the query's ID: round robin for a client
    whose IDs count up, spread evenly for one whose IDs are random (CoreDNS's loadbalance shuffles by
    a random ID too)."""
    start, size, count = run
    turn = ((query[0] << 8) | query[1]) % count
    if not turn:
        return tail
    cut, end = start + turn * size, start + count * size
    return b"".join((tail[:start], tail[cut:end], tail[start:cut], tail[end:]))


def splice(entry: Entry, query: bytes, question: bytes, edns: bool) -> bytes:
    """The reply to ``query`` from ``entry``: the query's ID, RD and CD bits and ``question`` spliced in."""
    flags = (query[2] & 1) | ((query[3] >> 3) & 2)
    tail = entry.plain_tail if entry.rotate is None else rotated(entry.plain_tail, entry.rotate, query)
    if edns:
        return b"".join((query[:2], entry.edns_heads[flags], question, tail, entry.opt))
    return b"".join((query[:2], entry.plain_heads[flags], question, tail))


def cut_reply(entry: Entry, size: int, edns: bool, make: Callable[[], bytes]) -> bytes:
    """The truncated rendering of ``entry`` for ``size`` (``make()`` renders it the first time)."""
    key = (entry, size, edns)
    cut = _CUTS.get(key)
    if cut is None:
        cut = _CUTS[key] = make()
    return cut


__all__ = ["OPT_LEN", "Entry", "address_run", "cut_reply", "heads", "make_entry", "opt_record", "rotated", "splice", "with_opt"]
