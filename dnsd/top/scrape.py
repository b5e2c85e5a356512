"""From /metrics text to what ``dnsd top`` shows: two scrapes -> rates, ratios and latency quantiles.

Pure: no I/O, no clock. Rates are taken between two scrapes as Prometheus's ``rate()`` would: a
counter that went down was reset (dnsd restarted), so its new value is the whole increase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = dict[str, str]
# rcodes an upstream answers with when it did its job; anything else (and no reply at all) is a failure
UPSTREAM_OK = frozenset({"NOERROR", "NXDOMAIN"})


@dataclass(frozen=True)
class Scrape:
    """One /metrics answer: sample name (``..._total``, ``..._bucket``) -> its series; ``at`` in seconds."""

    at: float
    samples: dict[str, list[tuple[Labels, float]]]

    def series(self, name: str, **match: str) -> list[tuple[Labels, float]]:
        return [(labels, value) for labels, value in self.samples.get(name, ())
                if all(labels.get(k) == v for k, v in match.items())]

    def total(self, name: str, **match: str) -> float:
        return sum(value for _, value in self.series(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in self.series(name, **match):
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    def has(self, name: str) -> bool:
        return name in self.samples


def parse(text: str, at: float) -> Scrape:
    """ValueError when the text is not the Prometheus exposition format."""
    samples: dict[str, list[tuple[Labels, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(at, samples)


@dataclass(frozen=True)
class Buckets:
    """A histogram summed over its series: upper bounds (the last +Inf) and cumulative counts."""

    bounds: tuple[float, ...] = ()
    cumulative: tuple[float, ...] = ()
    sum: float = 0.0

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, before: Buckets) -> Buckets:
        """The observations made since ``before``; all of them when the histogram was reset."""
        if before.bounds != self.bounds or self.count < before.count:
            return self
        return Buckets(self.bounds, tuple(a - b for a, b in zip(self.cumulative, before.cumulative, strict=True)),
                       self.sum - before.sum)

    def quantile(self, q: float) -> float | None:
        """As PromQL's histogram_quantile: linear within the bucket the rank falls in; None when empty."""
        total = self.count
        if total <= 0:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            if cum >= rank:
                if math.isinf(bound):
                    return lower  # past the last finite bound: the best that can be said
                if cum == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (cum - below)
            lower, below = bound, cum
        return lower

    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def buckets(scrape: Scrape, family: str, **match: str) -> Buckets:
    """The histogram ``family`` (no suffix), its series with matching labels added up."""
    per_bound: dict[float, float] = {}
    for labels, value in scrape.series(family + "_bucket", **match):
        bound = float(labels.get("le", "+Inf"))
        per_bound[bound] = per_bound.get(bound, 0.0) + value
    bounds = tuple(sorted(per_bound))
    return Buckets(bounds, tuple(per_bound[b] for b in bounds), scrape.total(family + "_sum", **match))


def increase(before: float | None, after: float) -> float:
    """A counter's increase; after a reset (it went down) the new value is the increase."""
    if before is None:
        return after
    return after - before if after >= before else after


@dataclass(frozen=True)
class Upstream:
    """One upstream (the ``to`` label) over the interval."""

    to: str
    qps: float
    failed: float | None  # share of its queries not answered NOERROR/NXDOMAIN (timeouts, SERVFAIL...)
    mean: float | None  # seconds
    p50: float | None
    p99: float | None
    checks_failed: float  # failed health checks in the interval: it is marked down while they fail
    checks_failed_total: float

    @property
    def state(self) -> str:
        if self.checks_failed > 0:
            return "down"
        return "up" if self.qps > 0 else "idle"


@dataclass(frozen=True)
class Source:
    origin: str
    synced: bool
    healthy: bool


@dataclass(frozen=True)
class Stats:
    """What the header and the upstream table show; rates are None until two scrapes exist."""

    seconds: float | None  # the interval the rates cover
    qps: float | None
    rcodes: dict[str, float]  # rcode -> share of the replies in the interval (0-1), largest first
    p50: float | None  # seconds, every query (cluster names and forwarded alike)
    p99: float | None
    forwarding: bool  # the forward and cache families exist (not --upstream none)
    cache_ratio: float | None  # forward cache hits / lookups in the interval
    cache_ratio_total: float | None  # ... since dnsd started
    cache_entries: float
    stale_per_s: float | None
    shed_per_s: float | None
    records: float
    services: float
    sources: list[Source] = field(default_factory=list)
    upstreams: list[Upstream] = field(default_factory=list)


def _rate(before: Scrape | None, after: Scrape, name: str, seconds: float | None, **match: str) -> float | None:
    if before is None or not seconds:
        return None
    return increase(before.total(name, **match), after.total(name, **match)) / seconds


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _upstreams(before: Scrape | None, after: Scrape, seconds: float | None) -> list[Upstream]:
    rows = []
    names = after.by("coredns_forward_requests_total", "to").keys() | after.by("coredns_forward_healthcheck_failures_total", "to")
    for to in sorted(names):
        sent = after.total("coredns_forward_requests_total", to=to)
        ok = sum(v for rc, v in after.by("coredns_forward_responses_total", "rcode", to=to).items() if rc in UPSTREAM_OK)
        checks = after.total("coredns_forward_healthcheck_failures_total", to=to)
        hist = buckets(after, "coredns_forward_request_duration_seconds", to=to)
        if before is not None and seconds:
            sent_before = before.total("coredns_forward_requests_total", to=to)
            ok_before = sum(v for rc, v in before.by("coredns_forward_responses_total", "rcode", to=to).items()
                            if rc in UPSTREAM_OK)
            sent_d, ok_d = increase(sent_before, sent), increase(ok_before, ok)
            checks_d = increase(before.total("coredns_forward_healthcheck_failures_total", to=to), checks)
            hist = hist.minus(buckets(before, "coredns_forward_request_duration_seconds", to=to))
            qps = sent_d / seconds
        else:  # one scrape: what happened since dnsd started
            sent_d, ok_d, checks_d, qps = sent, ok, 0.0, 0.0
        failed = _ratio(max(0.0, sent_d - ok_d), sent_d)
        rows.append(Upstream(to, qps, failed, hist.mean(), hist.quantile(0.5), hist.quantile(0.99), checks_d, checks))
    return rows


def compare(before: Scrape | None, after: Scrape) -> Stats:
    """The rates between two scrapes of the same dnsd (``before`` None: the first scrape, no rates)."""
    seconds = after.at - before.at if before is not None and after.at > before.at else None
    if seconds is None:
        before = None
    durations = buckets(after, "coredns_dns_request_duration_seconds")
    replies = after.by("coredns_dns_responses_total", "rcode")
    hits, misses = after.total("coredns_cache_hits_total"), after.total("coredns_cache_misses_total")
    if before is not None:
        durations = durations.minus(buckets(before, "coredns_dns_request_duration_seconds"))
        old = before.by("coredns_dns_responses_total", "rcode")
        replies = {rc: increase(old.get(rc), n) for rc, n in replies.items()}
        hits_d = increase(before.total("coredns_cache_hits_total"), hits)
        misses_d = increase(before.total("coredns_cache_misses_total"), misses)
        cache_ratio = _ratio(hits_d, hits_d + misses_d)
    else:
        cache_ratio = None
    answered = sum(replies.values())
    rcodes = {rc: n / answered for rc, n in sorted(replies.items(), key=lambda kv: -kv[1]) if n > 0} if answered else {}
    synced = after.by("dnsd_source_synced", "origin")
    healthy = after.by("dnsd_source_healthy", "origin")
    return Stats(
        seconds=seconds,
        qps=_rate(before, after, "coredns_dns_requests_total", seconds),
        rcodes=rcodes,
        p50=durations.quantile(0.5),
        p99=durations.quantile(0.99),
        forwarding=after.has("coredns_forward_requests_total") or after.has("coredns_cache_misses_total"),
        cache_ratio=cache_ratio,
        cache_ratio_total=_ratio(hits, hits + misses),
        cache_entries=after.total("coredns_cache_entries"),
        stale_per_s=_rate(before, after, "coredns_cache_served_stale_total", seconds),
        shed_per_s=_rate(before, after, "dnsd_forward_shed_total", seconds),
        records=after.total("dnsd_records"),
        services=after.total("dnsd_services"),
        sources=[Source(o, bool(synced[o]), bool(healthy.get(o))) for o in sorted(synced)],
        upstreams=_upstreams(before, after, seconds),
    )
