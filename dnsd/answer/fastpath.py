"""The fast path: a reply from what is kept (the reply table, kept negatives, the forward cache) with
the query's ID and question spliced in, decided from the header alone; None sends the query to the
strict path (responder.py), the only one that fills what is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from dnsd.dns.const import ANY, MAX_QUERY, MIN_PAYLOAD, TCP_LIMIT
from dnsd.dns.query import options_ok
from dnsd.dns.reply import OPT_LEN, Entry, rotated

PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1, nothing else
EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QD=1, AR=1 (the OPT)


class Forwarding(Protocol):
    """What the Responder needs from upstream/ (a Forwarder): it never learns more."""

    forwards_default: bool  # names outside the served zones go upstream (else REFUSED)

    def entry(self, key: bytes) -> Entry | None: ...  # a cached upstream reply, fresh
    def is_stub(self, name: str) -> bool: ...  # under a --stub-domain
    def forget(self, names: Iterable[str]) -> None: ...  # names whose data changed (reverse, autopath)
    def forget_derived(self) -> None: ...  # every cached reply derived from our data (autopath)


class FastPath:
    """The Responder's fast path (the Responder sets these attributes)."""

    _table: dict[bytes, Entry]  # the reply table's dict (replies.py)
    _negatives: dict[bytes, Entry]  # kept negatives (replies.py)
    forward: Forwarding | None
    max_payload: int

    def _kept(self, key: bytes) -> Entry | None:
        entry = self._table.get(key) or self._negatives.get(key)
        if entry is None and self.forward is not None:
            entry = self.forward.entry(key)  # a cached upstream reply (no await)
        return entry

    def fast(self, query: bytes, limit: int, counts: dict[tuple[int, int], int]) -> bytes | None:
        """A reply from the table, or None when the strict path must decide.

        ``limit`` is the UDP size without EDNS (512) or TCP_LIMIT for TCP. The key is the
        whole question lowercased; only the strict path inserts keys, and only for valid
        questions, so a hit proves the question is well formed (the label walk is free),
        and, the key being everything after the header, that nothing trails it.
        Lowercasing also folds qtype bytes 0x41-0x5A (types 65-90 with 97-122): none of
        them is a type we hold, so both answers are the same bytes after the question.
        """
        counts_field = query[4:12]
        if counts_field == PLAIN_COUNTS:  # QD=1, nothing else: the question is the rest
            entry = self._kept(query[12:].lower())
            if entry is None or query[2] & 0xF8 or entry.plain_len > limit:
                return None
            if limit == TCP_LIMIT and entry.stat[0] == ANY:
                return None  # the table holds UDP's minimal ANY; TCP gets every RRset (strict path)
            counts[entry.stat] = counts.get(entry.stat, 0) + 1
            tail = entry.plain_tail if entry.rotate is None else rotated(entry.plain_tail, entry.rotate, query)
            return query[:2] + entry.plain_heads[(query[2] & 1) | ((query[3] >> 3) & 2)] + query[12:] + tail
        if counts_field != EDNS_COUNTS or query[2] & 0xF8:
            return None
        qend = query.find(0, 12) + 5
        entry = self._kept(query[12:qend].lower())
        if (
            entry is None
            or (limit == TCP_LIMIT and entry.stat[0] == ANY)  # as above: TCP gets the full ANY
            or query[qend : qend + 3] != b"\x00\x00\x29"  # root owner, type OPT
            or query[qend + 6 : qend + 7] != b"\x00"  # EDNS version 0
        ):
            return None
        rdlength = int.from_bytes(query[qend + 9 : qend + 11], "big")
        size = len(query)
        if size != qend + 11 + rdlength:
            return None
        if rdlength and (not options_ok(query, qend + 11, size) or (size > MAX_QUERY and limit != TCP_LIMIT)):
            return None  # lying option lengths and oversize datagrams: the strict path's FORMERR
        if limit == MIN_PAYLOAD:
            limit = max(MIN_PAYLOAD, min(self.max_payload, int.from_bytes(query[qend + 3 : qend + 5], "big")))
        if entry.plain_len + OPT_LEN > limit:
            return None
        counts[entry.stat] = counts.get(entry.stat, 0) + 1
        tail = entry.plain_tail if entry.rotate is None else rotated(entry.plain_tail, entry.rotate, query)
        return (query[:2] + entry.edns_heads[(query[2] & 1) | ((query[3] >> 3) & 2)] + query[12:qend] + tail
                + entry.opt)

    def fast_many(self, queries: list[bytes], counts: dict[tuple[int, int], int]) -> list[bytes | None]:
        """fast() for a batch of UDP queries: the same replies, with the common shape (no EDNS, a table or
        negative hit) answered in this one loop, everything else by fast() itself: no call, attribute
        lookups or namedtuple reads per datagram (docs/performance.md, the UDP hit path)."""
        table, negatives, forward, fast = self._table.get, self._negatives.get, self.forward, self.fast
        replies: list[bytes | None] = []
        append, join, count = replies.append, b"".join, counts.get
        for query in queries:
            # A slice and ==, not startswith(PLAIN_COUNTS, 4): its argument parsing costs more than the slice.
            if query[4:12] != PLAIN_COUNTS or query[2] & 0xF8:
                append(fast(query, MIN_PAYLOAD, counts))
                continue
            question = query[12:]
            key = question.lower()
            entry = table(key) or negatives(key) or (forward.entry(key) if forward is not None else None)  # _kept()
            if entry is None:
                append(None)
                continue
            heads, tail, size, _, _, _, stat, rotate = entry
            if size > MIN_PAYLOAD:
                append(None)  # the strict path truncates it
                continue
            counts[stat] = count(stat, 0) + 1
            if rotate is not None:
                tail = rotated(tail, rotate, query)
            append(join((query[:2], heads[(query[2] & 1) | ((query[3] >> 3) & 2)], question, tail)))
        return replies


__all__ = ["EDNS_COUNTS", "PLAIN_COUNTS", "FastPath", "Forwarding"]
