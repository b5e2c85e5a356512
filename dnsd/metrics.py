"""Metrics: plain counters on the query path, turned into Prometheus families on scrape.

Serving processes only bump ints in dicts and lists (cheap, no locks); a scrape,
or a worker's once-a-second report to the supervisor, reads them. Names follow
CoreDNS where the meaning matches, so existing dashboards work.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dnslib import QTYPE, RCODE
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# As CoreDNS: exponential from 0.25 ms, doubling, 16 buckets.
DURATION_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
PROGRAMMING_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
# Set in a reply's (qtype, rcode) counter key when the server-side search path found the
# answer: the fast path counts autopath hits with no extra work.
AUTOPATH_HIT = 0x10000
_QTYPES = {"A", "AAAA", "NS", "PTR", "SOA", "SRV", "TXT", "CNAME", "MX", "HTTPS", "ANY"}


class Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, counts: list[int], total: float) -> None:
        for i, c in enumerate(counts):
            self.counts[i] += c
        self.total += total


@dataclass
class Listener:
    """Counters of one listening socket; ``counts`` maps (qtype, rcode) -> replies."""

    proto: str  # "udp" | "tcp"
    family: str  # "1" IPv4, "2" IPv6 (as CoreDNS)
    server: str  # dns://address:port
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))


def type_name(qtype: int) -> str:
    name = QTYPE.get(qtype, "other")
    return name if name in _QTYPES else "other"


def rcode_name(rcode: int) -> str:
    return RCODE.get(rcode, str(rcode)) if rcode < 16 else {16: "BADVERS"}.get(rcode, str(rcode))


def snapshot(listeners: Iterable[Listener], dataplane: Any, forwarder: Any = None) -> dict[str, Any]:
    """What a worker reports: picklable, and summable across workers."""
    programming = dataplane.programming_seconds[:]
    dataplane.programming_seconds.clear()
    return {
        "listeners": [
            (lst.proto, lst.family, lst.server, dict(lst.counts), lst.duration.counts[:], lst.duration.total)
            for lst in listeners
        ],
        "records": dataplane.index.record_count,
        "services": len(dataplane.store.services),
        "programming": programming,
        "synced": dataplane.store.synced,
        "forward": forwarder.snapshot() if forwarder is not None else None,
    }


@dataclass
class Totals:
    """Sum of every worker's counters; the supervisor (or the single process) scrapes this."""

    requests: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # server, proto, family, type
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # server, rcode
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # server, proto
    records: int = 0
    services: int = 0
    autopath: dict[str, int] = field(default_factory=dict)  # server -> replies the search path answered
    programming: Histogram = field(default_factory=lambda: Histogram(PROGRAMMING_BUCKETS))
    forward: dict[str, Any] | None = None  # upstream/stats.py merge(): None when forwarding is off


def totals(snapshots: Iterable[dict[str, Any]], programming: Histogram) -> Totals:
    from .upstream.stats import merge

    snapshots = list(snapshots)
    out = Totals(programming=programming, forward=merge(s.get("forward") for s in snapshots))
    for snap in snapshots:
        out.records = max(out.records, snap["records"])
        out.services = max(out.services, snap["services"])
        for proto, family, server, counts, dcounts, dtotal in snap["listeners"]:
            for (qtype, rcode), n in counts.items():
                if rcode & AUTOPATH_HIT:
                    out.autopath[server] = out.autopath.get(server, 0) + n
                    rcode &= ~AUTOPATH_HIT
                key = (server, proto, family, type_name(qtype))
                out.requests[key] = out.requests.get(key, 0) + n
                rkey = (server, rcode_name(rcode))
                out.responses[rkey] = out.responses.get(rkey, 0) + n
            out.durations.setdefault((server, proto), Histogram(DURATION_BUCKETS)).merge(dcounts, dtotal)
    return out


def _histogram(name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]):
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        cumulative, buckets = 0, []
        for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(values, buckets, hist.total)
    return family


class DnsdCollector(Collector):
    """Builds every family at scrape time from ``read()``: (Totals, source status dict)."""

    def __init__(self, read: Callable[[], tuple[Totals, dict[str, Any]]]) -> None:
        self.read = read

    def collect(self):
        t, status = self.read()
        requests = CounterMetricFamily("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                                       labels=["server", "zone", "view", "proto", "family", "type"])
        for (server, proto, family, qtype), n in sorted(t.requests.items()):
            requests.add_metric([server, ".", "", proto, family, qtype], n)
        yield requests
        responses = CounterMetricFamily("coredns_dns_responses", "Counter of response status codes.",
                                        labels=["server", "zone", "view", "rcode", "plugin"])
        for (server, rcode), n in sorted(t.responses.items()):
            responses.add_metric([server, ".", "", rcode, "kubernetes"], n)
        yield responses
        yield _histogram("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took.",
                         ["server", "zone", "view", "proto"],
                         (([s, ".", "", p], h) for (s, p), h in sorted(t.durations.items())))
        autopath = CounterMetricFamily("coredns_autopath_success", "Counter of requests that did autopath.",
                                       labels=["server"])
        for server, n in sorted(t.autopath.items()):
            autopath.add_metric([server], n)
        yield autopath
        yield GaugeMetricFamily("dnsd_records", "Resource records served.", value=t.records)
        yield GaugeMetricFamily("dnsd_services", "Services known.", value=t.services)
        yield _histogram("dnsd_programming_duration_seconds",
                         "Time from a source change to updated answers, per applied batch.", [], [([], t.programming)])
        synced = GaugeMetricFamily("dnsd_source_synced", "1 once the source completed its first full sync.",
                                   labels=["origin"])
        healthy = GaugeMetricFamily("dnsd_source_healthy", "1 while the source's watch works.", labels=["origin"])
        age = GaugeMetricFamily("dnsd_watch_last_event_age_seconds",
                                "Seconds since the last successful list or watch event (incl. bookmarks).",
                                labels=["origin"])
        errors = CounterMetricFamily("dnsd_source_errors",
                                     "Failed API requests and broken streams, by resource and reason.",
                                     labels=["resource", "reason"])
        now = time.time()
        for origin, st in sorted(status.items()):
            for why, n in sorted((st.get("errors") or {}).items()):
                errors.add_metric([origin.removeprefix("k8s:"), why], n)
            synced.add_metric([origin], 1.0 if st.get("synced") else 0.0)
            healthy.add_metric([origin], 1.0 if st.get("healthy") else 0.0)
            if st.get("last_event") is not None:
                age.add_metric([origin], max(0.0, now - st["last_event"]))
        yield synced
        yield healthy
        yield age
        yield errors
        if t.forward is not None:
            from .upstream.stats import families

            yield from families(t.forward)
