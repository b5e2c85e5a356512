"""``dnsd top``'s pure parts: /metrics -> rates and quantiles, /debug/top -> tables, and the screen they make;
the poller against a fake HTTP port. The terminal itself is driven in tmux by tests/e2e/test_top.py."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
from rich.console import Console

from dnsd import argtypes
from dnsd.top import scrape, talkers
from dnsd.top.app import Poller
from dnsd.top.screen import View, screen
from tests.fakes.top_http import CANNED_METRICS, FakeTopHttp, document, window
from tests.helpers import free_port

UP = "127.0.0.1:5300"


def exposition(requests: float = 0, noerror: float = 0, nxdomain: float = 0, fast: float = 0, slow: float = 0,
               hits: float = 0, misses: float = 0, sent: float = 0, ok: float = 0, servfail: float = 0,
               checks: float = 0, forwarding: bool = True) -> str:
    """A /metrics text in dnsd's names: ``fast`` queries took under 1 ms, ``slow`` ones 2-4 ms."""
    lines = [
        "# TYPE coredns_dns_requests_total counter",
        f'coredns_dns_requests_total{{proto="udp",type="A"}} {requests * 0.75}',
        f'coredns_dns_requests_total{{proto="tcp",type="AAAA"}} {requests * 0.25}',
        "# TYPE coredns_dns_responses_total counter",
        f'coredns_dns_responses_total{{rcode="NOERROR"}} {noerror}',
        f'coredns_dns_responses_total{{rcode="NXDOMAIN"}} {nxdomain}',
        "# TYPE coredns_dns_request_duration_seconds histogram",
        f'coredns_dns_request_duration_seconds_bucket{{le="0.001"}} {fast}',
        f'coredns_dns_request_duration_seconds_bucket{{le="0.002"}} {fast}',
        f'coredns_dns_request_duration_seconds_bucket{{le="0.004"}} {fast + slow}',
        f'coredns_dns_request_duration_seconds_bucket{{le="+Inf"}} {fast + slow}',
        f"coredns_dns_request_duration_seconds_count {fast + slow}",
        f"coredns_dns_request_duration_seconds_sum {fast * 0.0005 + slow * 0.003}",
        "# TYPE dnsd_records gauge", "dnsd_records 51", "# TYPE dnsd_services gauge", "dnsd_services 7",
        "# TYPE dnsd_source_synced gauge", 'dnsd_source_synced{origin="k8s:services"} 1',
        "# TYPE dnsd_source_healthy gauge", 'dnsd_source_healthy{origin="k8s:services"} 0',
    ]
    if forwarding:
        lines += [
            "# TYPE coredns_forward_requests_total counter", f'coredns_forward_requests_total{{to="{UP}"}} {sent}',
            "# TYPE coredns_forward_responses_total counter",
            f'coredns_forward_responses_total{{rcode="NOERROR",to="{UP}"}} {ok}',
            f'coredns_forward_responses_total{{rcode="SERVFAIL",to="{UP}"}} {servfail}',
            "# TYPE coredns_forward_request_duration_seconds histogram",
            *(f'coredns_forward_request_duration_seconds_bucket{{le="{le}",rcode="NOERROR",to="{UP}"}} {n}'
              for le, n in (("0.01", ok), ("0.02", ok), ("+Inf", ok))),
            f'coredns_forward_request_duration_seconds_count{{rcode="NOERROR",to="{UP}"}} {ok}',
            f'coredns_forward_request_duration_seconds_sum{{rcode="NOERROR",to="{UP}"}} {ok * 0.005}',
            "# TYPE coredns_forward_healthcheck_failures_total counter",
            f'coredns_forward_healthcheck_failures_total{{to="{UP}"}} {checks}',
            "# TYPE coredns_cache_hits_total counter",
            f'coredns_cache_hits_total{{type="success"}} {hits * 0.5}', f'coredns_cache_hits_total{{type="denial"}} {hits * 0.5}',
            "# TYPE coredns_cache_misses_total counter", f"coredns_cache_misses_total {misses}",
            "# TYPE coredns_cache_entries gauge", 'coredns_cache_entries{type="success"} 40',
            'coredns_cache_entries{type="denial"} 2',
        ]
    return "\n".join(lines) + "\n"


def render(view: View, height: int = 60) -> str:
    console = Console(width=160, height=height, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(screen(view))
    return console.export_text()


# == /metrics =============================================================================
def test_parse_the_metrics_of_a_real_dnsd() -> None:
    s = scrape.parse(CANNED_METRICS, at=0.0)
    assert s.total("coredns_dns_requests_total") == 6
    assert s.by("coredns_dns_responses_total", "rcode") == {"NOERROR": 5, "NXDOMAIN": 1}
    hist = scrape.buckets(s, "coredns_dns_request_duration_seconds")
    assert hist.count == 8 and math.isinf(hist.bounds[-1]) and len(hist.bounds) == 17
    assert list(hist.cumulative) == sorted(hist.cumulative)
    stats = scrape.compare(None, s)
    assert stats.qps is None and stats.seconds is None  # one scrape: no rate yet
    assert stats.forwarding and stats.records == 51 and stats.services == 7
    assert stats.cache_ratio_total == pytest.approx(1 / 3)
    [up] = stats.upstreams
    assert up.to.startswith("127.0.0.1:") and up.failed == 0 and up.state == "idle"


def test_not_prometheus_text_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        scrape.parse("<html>this is not it</html>\n", at=0.0)


def test_quantiles_as_histogram_quantile() -> None:
    hist = scrape.Buckets((0.001, 0.002, 0.004, math.inf), (10, 20, 20, 20), 0.03)
    assert hist.quantile(0.5) == pytest.approx(0.001)
    assert hist.quantile(0.75) == pytest.approx(0.0015)
    assert hist.quantile(1.0) == pytest.approx(0.002)
    assert hist.mean() == pytest.approx(0.0015)
    # past the last finite bound, the last finite bound (PromQL does the same)
    assert scrape.Buckets((0.001, math.inf), (0, 5), 1.0).quantile(0.5) == 0.001
    assert scrape.Buckets((0.001, math.inf), (0, 0), 0.0).quantile(0.5) is None


def test_rates_ratios_and_latency_over_the_interval() -> None:
    before = scrape.parse(exposition(requests=1000, noerror=900, nxdomain=100, fast=1000, hits=50, misses=50), at=10.0)
    after = scrape.parse(exposition(requests=1200, noerror=1050, nxdomain=150, fast=1000, slow=200, hits=140,
                                    misses=60), at=12.0)
    stats = scrape.compare(before, after)
    assert stats.seconds == 2.0
    assert stats.qps == pytest.approx(100.0)
    assert stats.rcodes == {"NOERROR": pytest.approx(0.75), "NXDOMAIN": pytest.approx(0.25)}
    assert list(stats.rcodes) == ["NOERROR", "NXDOMAIN"]  # largest share first
    # only the 200 slow queries of the interval count, not the 1000 fast ones before it
    assert 0.002 < stats.p50 < stats.p99 <= 0.004  # type: ignore[operator]
    assert stats.cache_ratio == pytest.approx(0.9)  # 90 hits, 10 misses in the interval
    assert stats.cache_ratio_total == pytest.approx(140 / 200)
    assert stats.cache_entries == 42
    assert [(s.origin, s.synced, s.healthy) for s in stats.sources] == [("k8s:services", True, False)]


def test_a_counter_that_went_down_was_reset() -> None:
    before = scrape.parse(exposition(requests=5000, fast=5000, hits=10, misses=10), at=0.0)
    after = scrape.parse(exposition(requests=30, fast=30, hits=3, misses=1), at=1.0)  # dnsd restarted
    stats = scrape.compare(before, after)
    assert stats.qps == pytest.approx(30.0)
    assert stats.cache_ratio == pytest.approx(0.75)
    assert stats.p50 is not None and stats.p50 <= 0.001
    assert scrape.increase(10, 4) == 4 and scrape.increase(4, 10) == 6 and scrape.increase(None, 3) == 3


def test_no_second_scrape_in_the_same_instant() -> None:
    s = scrape.parse(exposition(requests=10), at=5.0)
    assert scrape.compare(s, s).qps is None


def test_upstreams_rate_failures_latency_and_health() -> None:
    before = scrape.parse(exposition(sent=100, ok=90, servfail=5, checks=3), at=0.0)
    after = scrape.parse(exposition(sent=300, ok=270, servfail=15, checks=3), at=2.0)
    [up] = scrape.compare(before, after).upstreams
    assert up.to == UP and up.qps == pytest.approx(100.0)
    assert up.failed == pytest.approx(20 / 200)  # 180 NOERROR of 200 sent: 10 SERVFAIL, 10 without a reply
    assert up.mean == pytest.approx(0.005)
    assert 0 < up.p50 <= 0.01 and up.p99 <= 0.01  # type: ignore[operator]
    assert up.state == "up" and up.checks_failed == 0 and up.checks_failed_total == 3
    down = scrape.compare(after, scrape.parse(exposition(sent=300, ok=270, servfail=15, checks=7), at=3.0)).upstreams[0]
    assert down.state == "down" and down.checks_failed == 4 and down.failed is None and down.p50 is None


def test_forwarding_off() -> None:
    stats = scrape.compare(None, scrape.parse(exposition(requests=5, forwarding=False), at=0.0))
    assert not stats.forwarding and stats.upstreams == [] and stats.cache_ratio_total is None


# == /debug/top ===========================================================================
def test_parse_debug_top() -> None:
    doc = document({"1m": window(60, {"10.0.0.7": 10, "10.0.0.8": 30}, {"web.default.svc.cluster.local": 40},
                                 {"typo.default.svc.cluster.local": 3}),
                    "15m": window(900, {"10.0.0.7": 100}, {"a.b": 100}, forwarded={"example.com": 5})}, workers=2)
    doc["windows"]["1m"]["clients"][0]["error"] = 4
    top = talkers.parse(json.dumps(doc))
    assert top.workers == 2 and top.capacity == 128 and set(top.windows) == {"1m", "15m"}
    one = top.windows["1m"]
    assert one.seconds == 60 and one.queries == 40 and one.qps == pytest.approx(40 / 60)
    clients = [(e.key, e.count, e.error, e.lower) for e in one.tables["clients"]]
    assert clients == [("10.0.0.8", 30, 4, 26), ("10.0.0.7", 10, 0, 10)]
    assert one.tables["nxdomain"][0].key == "typo.default.svc.cluster.local" and one.tables["forwarded"] == ()
    assert top.windows["15m"].tables["forwarded"][0].count == 5


@pytest.mark.parametrize(("body", "why"), [
    ("not json", "not JSON"),
    ("[]", "windows"),
    ('{"generated": 1, "capacity": 1, "workers": 1, "windows": {"1m": {"seconds": "x", "queries": 1}}}', "seconds"),
    ('{"generated": 1, "capacity": 1, "workers": 1, "windows": {"1m": {"seconds": 60, "queries": 1, "names": [1]}}}',
     "windows.1m.names[0]"),
    ('{"capacity": 1, "workers": 1, "windows": {}}', "generated"),
])
def test_debug_top_that_does_not_fit_the_schema(body: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        talkers.parse(body)


# == the screen ===========================================================================
def _talkers() -> talkers.Talkers:
    return talkers.parse(json.dumps(document(
        {"1m": window(60, {"127.0.0.2": 30, "127.0.0.3": 20}, {"web.default.svc.cluster.local": 45, "example.com": 5},
                      {"nope.default.svc.cluster.local": 7}, {"example.com": 5}),
         "15m": window(900, {"10.9.9.9": 900}, {"old.default.svc.cluster.local": 900})}, workers=2)))


def test_screen_shows_rates_upstreams_and_the_tables_of_the_window() -> None:
    before = scrape.parse(exposition(requests=100, noerror=90, nxdomain=10, fast=100, hits=1, misses=1, sent=1, ok=1), 0.0)
    after = scrape.parse(exposition(requests=350, noerror=300, nxdomain=50, fast=350, hits=9, misses=3, sent=11, ok=11), 1.0)
    view = View("http://127.0.0.1:8080", 1.0, "1m", 10, scrape.compare(before, after), _talkers(), updated=0.0)
    text = render(view)
    assert "qps 250.0/s" in text and "NOERROR 84.0%" in text and "NXDOMAIN 16.0%" in text
    assert "hit ratio 80.0% over 1.0s (75.0% since start)" in text and "entries 42" in text
    assert "k8s:services synced UNHEALTHY" in text and "workers 2" in text
    assert UP in text and "10.0/s" in text  # the upstream's rate
    for shown in ("Top clients", "127.0.0.2", "127.0.0.3", "Top names", "web.default.svc.cluster.local",
                  "Top NXDOMAIN names", "nope.default.svc.cluster.local", "Top forwarded names", "60.0%"):
        assert shown in text, shown
    assert "10.9.9.9" not in text
    fifteen = render(View("http://x:1", 1.0, "15m", 10, scrape.compare(None, after), _talkers()))
    assert "10.9.9.9" in fifteen and "127.0.0.2" not in fifteen and "(none)" in fifteen


def test_screen_limit_cuts_rows() -> None:
    many = talkers.parse(json.dumps(document({"1m": window(60, {f"10.0.0.{i}": 100 - i for i in range(30)}, {})})))
    text = render(View("http://x:1", 1.0, "1m", 3, None, many), height=80)
    assert "10.0.0.2 " in text and "10.0.0.3 " not in text


def test_screen_unreachable_missing_endpoint_and_window() -> None:
    text = render(View("http://127.0.0.1:9", 1.0, "1m", 10, error="cannot reach http://127.0.0.1:9/metrics: connection refused"))
    assert "cannot reach http://127.0.0.1:9/metrics: connection refused; retrying every 1s" in text
    assert "Traceback" not in text
    off = scrape.compare(None, scrape.parse(exposition(forwarding=False), 0.0))
    text = render(View("http://x:1", 2.0, "1m", 10, off, None, talkers_note="this dnsd has no /debug/top"))
    assert "forwarding off" in text and "this dnsd has no /debug/top" in text and "Upstreams" not in text
    only = talkers.parse(json.dumps(document({"1m": window(60, {}, {})})))
    assert "has no window 15m (it has: 1m)" in render(View("http://x:1", 1.0, "15m", 10, off, only))


# == the poller against a fake HTTP port ==================================================
def test_poller_rates_between_two_polls_and_talkers() -> None:
    with FakeTopHttp(exposition(requests=100), document({"1m": window(60, {"127.0.0.2": 4}, {"a.b": 4})})) as fake:
        poller = Poller(f"http://{fake.address}", 1.0, 7)
        poller.poll()
        assert poller.polled.stats is not None and poller.polled.stats.qps is None
        fake.metrics = exposition(requests=400)
        poller.poll()
        polled = poller.polled
        assert polled.error is None and polled.talkers_note is None and polled.updated is not None
        assert polled.stats is not None and polled.stats.qps is not None and polled.stats.qps > 0
        assert polled.talkers is not None and polled.talkers.windows["1m"].tables["clients"][0].key == "127.0.0.2"
        assert "/debug/top?limit=7" in fake.asked


def test_poller_asks_at_most_the_capacity() -> None:
    """/debug/top answers 400 above its capacity: --limit 500 asks 128 (dnsd's); a 400 then, the default
    of 10, then the capacity the answer gives."""
    with FakeTopHttp(exposition(requests=1), document({"1m": window(60, {}, {})}, capacity=50)) as fake:
        poller = Poller(f"http://{fake.address}", 1.0, 500)
        for _ in range(4):
            poller.poll()
        asked = [p.removeprefix("/debug/top?limit=") for p in fake.asked if p.startswith("/debug/top")]
        assert asked == ["128", "10", "50", "50"]
        assert poller.polled.talkers is not None and poller.polled.talkers_note is None


def test_poller_without_debug_top_or_with_garbage() -> None:
    with FakeTopHttp(exposition(requests=1), top=None) as fake:
        poller = Poller(f"http://{fake.address}", 1.0, 10)
        poller.poll()
        assert poller.polled.stats is not None and "no /debug/top" in (poller.polled.talkers_note or "")
        fake.metrics = "<html>\n"
        poller.poll()
        assert "is not Prometheus text" in (poller.polled.error or "")
        assert poller.polled.stats is not None  # the last good data stays on screen


def test_poller_unreachable_keeps_the_last_data() -> None:
    port = free_port()
    poller = Poller(f"http://127.0.0.1:{port}", 1.0, 10)
    poller.poll()
    assert poller.polled.error == f"cannot reach http://127.0.0.1:{port}/metrics: connection refused"
    assert poller.polled.stats is None


# == the flag =============================================================================
@pytest.mark.parametrize(("value", "url"), [("127.0.0.1:8080", "http://127.0.0.1:8080"), ("[::1]:9153", "http://[::1]:9153"),
                                            ("dnsd.example:80", "http://dnsd.example:80"),
                                            ("https://dnsd.example/", "https://dnsd.example")])
def test_http_flag(value: str, url: str) -> None:
    assert argtypes.http_base(value) == url


@pytest.mark.parametrize("value", ["localhost", "host:port", "ftp://x:1", ":8080", ""])
def test_http_flag_rejects(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        argtypes.http_base(value)
