"""Top talkers of one serving process: who asks, what, which names are NXDOMAIN, which go upstream.

Queries are counted exactly in plain dicts for a short stretch, then folded into Space-Saving
summaries (sketch.py) once a dict holds FOLD keys, and handed to the main process as a delta at
each report (``drain``). Names are counted by their wire form, as asked (the case a client chose
included), and decoded only when folded: a fold decodes at most FOLD names.

The hit path's cost is bounded by a budget: up to BUDGET queries a second are counted exactly; past
that, one batch in N is counted with weight N, N chosen from the last second's rate so that about
BUDGET a second are counted (each ~1-2 us with its client's address decoded and its share of the folds:
well under 1% of a core, whatever the rate). Listeners hand over whole batches (see net/udp.py).
"""

from __future__ import annotations

import heapq
import time
from operator import itemgetter
from typing import Any, TypeVar

from dnsd.dns.names import wire_text
from dnsd.observe.sketch import Counts, exact, merged

_K = TypeVar("_K", str, bytes)

KINDS = ("clients", "names", "nxdomain", "forwarded")
CAPACITY = 128  # keys each summary keeps: the top 10 of a Zipf load are found far below this
FOLD = 1024  # exact keys held before folding: bounds memory at a few hundred KB per process
# Queries a second counted one by one; a busier process samples batches to about this many, so counting
# stays a small share of the hit path (docs/performance.md, observability overhead).
BUDGET = 2_000


class Talkers:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.clients: dict[str, int] = {}
        self.names: dict[bytes, int] = {}  # the question's name in wire form
        self.nxdomain: dict[bytes, int] = {}
        self.forwarded: dict[str, int] = {}
        self.queries = 0
        self._summaries: dict[str, Counts] = {kind: {} for kind in KINDS}
        self._batches = 0
        self._seen = 0  # queries in batches offered this second
        self._until = 0.0  # when this second ends
        self._stride = 1  # one batch in this many is counted, with this weight

    def take(self, queries: int) -> int:
        """The weight of each query of the next batch (of about ``queries``): 1 while the process answers
        under BUDGET a second, else the stride of the sampling, for one batch in that many; 0: not counted."""
        self._seen += queries
        now = time.monotonic()
        if now >= self._until:
            self._stride = max(1, -(-self._seen // BUDGET))
            self._seen, self._until = 0, now + 1.0
        stride = self._stride
        if stride == 1:
            return 1
        self._batches += 1
        return stride if self._batches % stride == 0 else 0

    def count(self, items: list[tuple[bytes, Any, bytes, float]], weight: int) -> None:
        """(query, client address, reply, seconds) of answered queries, each standing for ``weight``."""
        clients, names, nxdomain = self.clients, self.names, self.nxdomain
        for query, addr, reply, _ in items:
            client = addr[0]
            clients[client] = clients.get(client, 0) + weight
            end = query.find(0, 12)
            if end < 0:
                continue
            name = query[12:end + 1]
            names[name] = names.get(name, 0) + weight
            if len(reply) > 3 and reply[3] & 15 == 3:
                nxdomain[name] = nxdomain.get(name, 0) + weight
        self.queries += weight * len(items)
        if len(clients) > FOLD or len(names) > FOLD or len(nxdomain) > FOLD:
            self._fold()

    def sent_upstream(self, name: str) -> None:
        """A name asked upstream (not answered from the cache)."""
        forwarded = self.forwarded
        forwarded[name] = forwarded.get(name, 0) + 1
        if len(forwarded) > FOLD:
            self._fold()

    def drain(self) -> dict[str, Any]:
        """What was counted since the last drain, as summaries (picklable): the delta a report carries."""
        self._fold()
        delta, self._summaries = self._summaries, {kind: {} for kind in KINDS}
        queries, self.queries = self.queries, 0
        return {"summaries": delta, "queries": queries}

    def _fold(self) -> None:
        summaries, capacity = self._summaries, self.capacity
        for kind, counts in (("clients", self.clients), ("forwarded", self.forwarded)):
            if counts:
                summaries[kind] = merged(summaries[kind], exact(_largest(counts, capacity)), capacity)
        for kind, wire in (("names", self.names), ("nxdomain", self.nxdomain)):
            if wire:
                lowered: dict[bytes, int] = {}
                for name, count in wire.items():
                    key = name.lower()
                    lowered[key] = lowered.get(key, 0) + count
                summaries[kind] = merged(summaries[kind], exact(_by_name(_largest(lowered, capacity))), capacity)
        self.clients, self.names, self.nxdomain, self.forwarded = {}, {}, {}, {}


def _largest(counts: dict[_K, int], capacity: int) -> dict[_K, int]:
    """The ``capacity`` largest counts: no other key of a stretch can enter a summary of that size, since
    a key it lacks enters with the stretch's count plus the summary's floor. A random-name flood folds
    ~1,000 keys at a time; this keeps merging and decoding to the few that matter."""
    if len(counts) <= capacity:
        return counts
    return dict(heapq.nlargest(capacity, counts.items(), key=itemgetter(1)))


def _by_name(wire: dict[bytes, int]) -> dict[str, int]:
    """Lowercase wire names as text; undecodable ones left out."""
    out: dict[str, int] = {}
    for name, count in wire.items():
        try:
            text = wire_text(name) or "."
        except (ValueError, IndexError):
            continue
        out[text] = out.get(text, 0) + count
    return out


__all__ = ["BUDGET", "CAPACITY", "KINDS", "Talkers"]
