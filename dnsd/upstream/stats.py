"""Forwarding and cache counters: bumped as plain ints, summed across workers, exported under
CoreDNS's metric names (``forward`` and ``cache`` plugins, exporter.py) so existing dashboards work."""

from __future__ import annotations

from typing import Any

from dnsd.observe.metrics import DURATION_BUCKETS, Histogram


class ForwardStats:
    def __init__(self) -> None:
        self.requests: dict[str, int] = {}  # upstream -> queries sent
        self.responses: dict[tuple[str, int], int] = {}  # (upstream, rcode) -> replies
        self.durations: dict[tuple[str, int], Histogram] = {}
        self.healthcheck_failures: dict[str, int] = {}
        self.dropped: dict[str, int] = {}  # reason -> upstream replies refused (address, id, question, garbage)
        self.loops = 0
        self.rejects = 0  # over --max-concurrent
        self.shed = 0  # REFUSED while saturated (--shed-after)
        self.misses = 0

    def sent(self, to: str) -> None:
        self.requests[to] = self.requests.get(to, 0) + 1

    def answered(self, to: str, rcode: int, seconds: float) -> None:
        key = (to, rcode)
        self.responses[key] = self.responses.get(key, 0) + 1
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = Histogram(DURATION_BUCKETS)
        hist.observe(seconds)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def check_failed(self, to: str) -> None:
        self.healthcheck_failures[to] = self.healthcheck_failures.get(to, 0) + 1


def snapshot(stats: ForwardStats, cache: Any) -> dict[str, Any]:
    success, denial = cache.counts()
    return {
        "requests": dict(stats.requests), "responses": dict(stats.responses),
        "durations": {k: (h.counts[:], h.total) for k, h in stats.durations.items()},
        "healthcheck_failures": dict(stats.healthcheck_failures), "dropped": dict(stats.dropped),
        "loops": stats.loops, "rejects": stats.rejects, "shed": stats.shed, "misses": stats.misses,
        "hits": {"success": cache.hits[0], "denial": cache.hits[1]},
        "entries": {"success": success, "denial": denial},
        "stale": cache.stale_served, "prefetch": cache.prefetches,
    }
