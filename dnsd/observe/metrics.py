"""Metrics: plain counters on the query path (Prometheus families are built from them on scrape: exporter.py).

Serving processes only bump ints in dicts and lists (cheap, no locks); a scrape,
or a worker's once-a-second report to the supervisor, reads them. Names follow
CoreDNS where the meaning matches, so existing dashboards work.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from dnslib import QTYPE, RCODE

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

    def observe_many(self, value: float, n: int) -> None:
        """``n`` observations of ``value`` (a batch's mean)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n

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


ListenerCounts = tuple[str, str, str, dict[tuple[int, int], int], list[int], float]


class Snapshot(TypedDict):
    """One serving process's counters: picklable, and summable across processes (``totals``)."""

    listeners: list[ListenerCounts]  # proto, family, server, (qtype, rcode) -> replies, duration buckets, sum
    records: int  # records served (the main process's; a worker holds none of its own)
    services: int
    programming: list[float]  # seconds each change took to reach the index, since the last snapshot
    synced: bool
    forward: dict[str, Any] | None  # upstream/stats.py snapshot(); None when forwarding is off
    observe: dict[str, Any]  # observe/tap.py snapshot(): top talkers' delta, query log and dnstap counters


class Forwarding(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


class Observing(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


def snapshot(listeners: Iterable[Listener], forwarder: Forwarding | None, *, synced: bool, records: int = 0,
             services: int = 0, programming: list[float] | None = None, tap: Observing | None = None) -> Snapshot:
    """What a serving process reports."""
    return {
        "listeners": [
            (lst.proto, lst.family, lst.server, dict(lst.counts), lst.duration.counts[:], lst.duration.total)
            for lst in listeners
        ],
        "records": records,
        "services": services,
        "programming": programming or [],
        "synced": synced,
        "forward": forwarder.snapshot() if forwarder is not None else None,
        "observe": tap.snapshot() if tap is not None else {},
    }


def merge(snapshots: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Sum of every worker's forward snapshot (upstream/stats.py; None when forwarding is off)."""
    out: dict[str, Any] | None = None
    for snap in snapshots:
        if not snap:
            continue
        if out is None:
            out = {"durations": {}}
        for name, value in snap.items():
            if name == "durations":
                for key, (counts, total) in value.items():
                    out["durations"].setdefault(key, Histogram(DURATION_BUCKETS)).merge(counts, total)
            elif isinstance(value, dict):
                into = out.setdefault(name, {})
                for key, n in value.items():
                    into[key] = into.get(key, 0) + n
            else:
                out[name] = out.get(name, 0) + value
    return out


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
    forward: dict[str, Any] | None = None  # merge() of the forwarders' snapshots: None when forwarding is off
    observe: dict[str, int] = field(default_factory=dict)  # query log and dnstap counters, summed (observe/tap.py)


def totals(snapshots: Iterable[Snapshot], programming: Histogram) -> Totals:
    snapshots = list(snapshots)
    out = Totals(programming=programming, forward=merge(s["forward"] for s in snapshots))
    for snap in snapshots:
        out.records = max(out.records, snap["records"])
        out.services = max(out.services, snap["services"])
        for name, n in snap.get("observe", {}).items():
            out.observe[name] = out.observe.get(name, 0) + n
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
