"""Prometheus families, built at scrape time from the counters (metrics.py, upstream/stats.py).

Only the main process imports this (and prometheus_client, with the http.server, email and
urllib modules it brings): the zygote is forked before, so the workers' shared pages do not
include modules that only the main process runs, and copies on write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dnsd.observe.metrics import Histogram, Totals, rcode_name


def counter_family(name: str, doc: str, labels: list[str], items: Iterable[tuple[list[str], float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in items:
        family.add_metric(values, n)
    return family


def histogram_family(name: str, doc: str, labels: list[str], series: Iterable[tuple[list[str], Histogram]]
                     ) -> HistogramMetricFamily:
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

    def collect(self) -> Iterator[Metric]:
        t, status = self.read()
        yield counter_family("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                             ["server", "zone", "view", "proto", "family", "type"],
                             (([server, ".", "", proto, family, qtype], n)
                              for (server, proto, family, qtype), n in sorted(t.requests.items())))
        yield counter_family("coredns_dns_responses", "Counter of response status codes.",
                             ["server", "zone", "view", "rcode", "plugin"],
                             (([server, ".", "", rcode, "kubernetes"], n) for (server, rcode), n in sorted(t.responses.items())))
        yield histogram_family("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took.",
                               ["server", "zone", "view", "proto"],
                               (([s, ".", "", p], h) for (s, p), h in sorted(t.durations.items())))
        yield counter_family("coredns_autopath_success", "Counter of requests that did autopath.", ["server"],
                             (([server], n) for server, n in sorted(t.autopath.items())))
        yield GaugeMetricFamily("dnsd_records", "Resource records served.", value=t.records)
        yield GaugeMetricFamily("dnsd_services", "Services known.", value=t.services)
        yield histogram_family("dnsd_programming_duration_seconds",
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
            yield from forward_families(t.forward)
        yield from observe_families(t.observe)


_OBSERVED = (  # observe/tap.py's counters: family, help (present only while that output is on)
    ("log_written", "dnsd_query_log_lines", "Query log lines written (--log-queries)."),
    ("log_dropped", "dnsd_query_log_dropped", "Query log lines left out over --log-queries-rate."),
    ("dnstap_sent", "dnsd_dnstap_frames", "dnstap messages written to the collector (--dnstap)."),
    ("dnstap_dropped", "dnsd_dnstap_dropped", "dnstap messages dropped: the collector absent or too slow."),
)


def observe_families(counts: dict[str, int]) -> Iterator[Any]:
    for key, name, text in _OBSERVED:
        if key in counts:
            yield CounterMetricFamily(name, text, value=counts[key])


def forward_families(t: dict[str, Any]) -> Iterator[Any]:
    counter = counter_family
    yield counter("coredns_forward_requests", "Counter of requests made per upstream.", ["to"],
                  (([to], n) for to, n in sorted(t.get("requests", {}).items())))
    yield counter("coredns_forward_responses", "Counter of responses received per upstream.", ["to", "rcode"],
                  (([to, rcode_name(rc)], n) for (to, rc), n in sorted(t.get("responses", {}).items())))
    yield histogram_family("coredns_forward_request_duration_seconds", "Histogram of the time each request took.",
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
