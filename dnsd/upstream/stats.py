"""Forwarding and cache counters: bumped as plain ints, summed across workers, exported under
CoreDNS's metric names (``forward`` and ``cache`` plugins) so existing dashboards work."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..metrics import DURATION_BUCKETS, Histogram, _histogram, rcode_name


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


def merge(snapshots: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Sum of every worker's forward snapshot (None when forwarding is off)."""
    out: dict[str, Any] | None = None
    for snap in snapshots:
        if not snap:
            continue
        if out is None:
            out = {"durations": {}}
        for field, value in snap.items():
            if field == "durations":
                for key, (counts, total) in value.items():
                    out["durations"].setdefault(key, Histogram(DURATION_BUCKETS)).merge(counts, total)
            elif isinstance(value, dict):
                into = out.setdefault(field, {})
                for key, n in value.items():
                    into[key] = into.get(key, 0) + n
            else:
                out[field] = out.get(field, 0) + value
    return out


def families(t: dict[str, Any]) -> Iterator[Any]:
    def counter(name: str, doc: str, labels: list[str], items: Iterable[tuple[list[str], float]]):
        family = CounterMetricFamily(name, doc, labels=labels)
        for values, n in items:
            family.add_metric(values, n)
        return family

    yield counter("coredns_forward_requests", "Counter of requests made per upstream.", ["to"],
                  (([to], n) for to, n in sorted(t.get("requests", {}).items())))
    yield counter("coredns_forward_responses", "Counter of responses received per upstream.", ["to", "rcode"],
                  (([to, rcode_name(rc)], n) for (to, rc), n in sorted(t.get("responses", {}).items())))
    yield _histogram("coredns_forward_request_duration_seconds", "Histogram of the time each request took.",
                     ["to", "rcode"], (([to, rcode_name(rc)], h) for (to, rc), h in sorted(t["durations"].items())))
    yield counter("coredns_forward_healthcheck_failures", "Counter of the number of failed healthchecks.", ["to"],
                  (([to], n) for to, n in sorted(t.get("healthcheck_failures", {}).items())))
    yield counter("coredns_forward_max_concurrent_rejects", "Counter of queries rejected over max_concurrent.", [],
                  [([], t.get("rejects", 0))])
    yield counter("dnsd_forward_shed", "Queries for upstreams answered REFUSED because UDP queries were waiting "
                  "over --shed-after (saturation).", [], [([], t.get("shed", 0))])
    yield counter("dnsd_forward_dropped_replies", "Upstream replies dropped: wrong address, ID, question, or garbage.",
                  ["reason"], (([r], n) for r, n in sorted(t.get("dropped", {}).items())))
    yield counter("dnsd_forward_loops_detected", "Upstreams refused because they are dnsd itself (a forwarding loop).",
                  [], [([], t.get("loops", 0))])
    yield counter("coredns_cache_hits", "The count of cache hits.", ["server", "type", "zones", "view"],
                  (([".", kind, ".", ""], n) for kind, n in sorted(t.get("hits", {}).items())))
    yield counter("coredns_cache_misses", "The count of cache misses.", ["server", "zones", "view"],
                  [([".", ".", ""], t.get("misses", 0))])
    entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                labels=["server", "type", "zones", "view"])
    for kind, n in sorted(t.get("entries", {}).items()):
        entries.add_metric([".", kind, ".", ""], n)
    yield entries
    yield counter("coredns_cache_served_stale", "The number of requests served from stale cache entries.",
                  ["server", "zones", "view"], [([".", ".", ""], t.get("stale", 0))])
    yield counter("coredns_cache_prefetch", "The number of times the cache has prefetched a cached item.",
                  ["server", "zones", "view"], [([".", ".", ""], t.get("prefetch", 0))])
