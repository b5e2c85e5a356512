"""Heavy hitters in fixed memory: Space-Saving summaries, merged, and kept over sliding windows.

A summary keeps at most ``capacity`` keys, each with an over-estimate of its count and a bound on
that over-estimate: the true count lies in ``[count - error, count]``, and any key whose true
count exceeds total/capacity is kept (Metwally et al., Space-Saving; merged as in Cafaro et al.,
"Parallel Space Saving on multi- and many-core processors"). Exact counts of a short stretch of
traffic fold in as one merge, so memory stays bounded however many distinct keys pass.

Not Apache DataSketches' frequent-items sketch (on PyPI as ``datasketches``): its per-update call
costs as much as the dict update below, and its merged results are the same kind of bound; this
module is ~100 lines and pickles to the main process as plain tuples.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

Counts = dict[str, tuple[int, int]]  # key -> (count, error)


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    count: int  # an over-estimate
    error: int  # the true count is at least count - error


def merged(a: Counts, b: Counts, capacity: int) -> Counts:
    """The summary of both streams. A key missing from a full summary may still have been counted
    up to that summary's least count: it is added to the key's count and its error."""
    floor_a = min((c for c, _ in a.values()), default=0) if len(a) >= capacity else 0
    floor_b = min((c for c, _ in b.values()), default=0) if len(b) >= capacity else 0
    out: Counts = {}
    for key in a.keys() | b.keys():
        ca, ea = a.get(key, (floor_a, floor_a))
        cb, eb = b.get(key, (floor_b, floor_b))
        out[key] = (ca + cb, ea + eb)
    if len(out) > capacity:
        out = dict(heapq.nlargest(capacity, out.items(), key=lambda kv: kv[1][0]))
    return out


def exact(counts: Mapping[str, int]) -> Counts:
    """Exact counts as a summary (error 0)."""
    return {key: (count, 0) for key, count in counts.items()}


def top(counts: Counts, limit: int) -> list[Item]:
    """The ``limit`` largest, by count then key (a stable order for equal counts)."""
    best = heapq.nsmallest(limit, counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return [Item(key, count, error) for key, (count, error) in best]


class Windows:
    """Summaries over the last minute and the last 15 minutes, from deltas added as they come.

    Ten-second slots make the minute and one-minute slots the quarter hour: a window is the merge of
    its slots, the current one included, so it covers between (n-1) and n slots of the past. Memory:
    21 summaries of ``capacity`` keys per kind, whatever the traffic."""

    SPANS = (("1m", 10, 6), ("15m", 60, 15))  # name, slot seconds, slots

    def __init__(self, kinds: Iterable[str], capacity: int) -> None:
        self.kinds = tuple(kinds)
        self.capacity = capacity
        self.lock = threading.Lock()  # fed from the loop and the workers' monitor, read from HTTP
        # window -> ring of (slot number, {kind: summary}, queries)
        self._rings: dict[str, list[tuple[int, dict[str, Counts], int]]] = {name: [] for name, _, _ in self.SPANS}

    def add(self, delta: Mapping[str, Counts], queries: int, now: float) -> None:
        with self.lock:
            self._add(delta, queries, now)

    def report(self, now: float, limit: int) -> dict[str, object]:
        """Every window, as /debug/top shows it."""
        with self.lock:
            windows = {name: self._window(name, now, limit) for name, _, _ in self.SPANS}
        return {"generated": now, "capacity": self.capacity, "windows": windows}

    def _add(self, delta: Mapping[str, Counts], queries: int, now: float) -> None:
        for name, seconds, slots in self.SPANS:
            ring = self._rings[name]
            slot = int(now // seconds)
            if not ring or ring[-1][0] != slot:
                ring.append((slot, {k: {} for k in self.kinds}, 0))
            _, summaries, count = ring[-1]
            for kind, counts in delta.items():
                if counts:
                    summaries[kind] = merged(summaries[kind], counts, self.capacity)
            ring[-1] = (slot, summaries, count + queries)
            while ring and ring[0][0] <= slot - slots:
                ring.pop(0)

    def _window(self, name: str, now: float, limit: int) -> dict[str, object]:
        seconds, slots = next((s, n) for w, s, n in self.SPANS if w == name)
        oldest = int(now // seconds) - slots
        ring = [entry for entry in self._rings[name] if entry[0] > oldest]
        out: dict[str, object] = {"seconds": seconds * slots, "queries": sum(q for _, _, q in ring)}
        for kind in self.kinds:
            total: Counts = {}
            for _, summaries, _ in ring:
                total = merged(total, summaries[kind], self.capacity)
            out[kind] = [asdict(item) for item in top(total, limit)]
        return out


__all__ = ["Counts", "Item", "Windows", "exact", "merged", "top"]
