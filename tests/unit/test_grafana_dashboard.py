"""deploy/grafana/dnsd-dashboard.json: a well-formed Grafana dashboard whose queries name only metrics a real
dnsd exports, and which shows every family dnsd exports (so a new metric cannot be forgotten silently).

The metrics are read from a real dnsd with every output on that has metrics of its own (forwarding to a
loopback fake upstream, so the forward and cache families exist; the query log; dnstap, to a socket no
collector listens on), not from a list kept here: that keeps this test honest as metrics come and go.
With promtool installed (Debian's prometheus package), every query's PromQL syntax is checked too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream
from tests.helpers import ROOT, Dnsd

DASHBOARD = ROOT / "deploy" / "grafana" / "dnsd-dashboard.json"
# Series Prometheus makes itself when it scrapes, not dnsd: allowed in queries though /metrics lacks them.
PROMETHEUS_SERIES = {"up"}
# Families dnsd exports that no panel needs to show; each with the reason. (None today.)
NOT_ON_THE_DASHBOARD: dict[str, str] = {}
# The sample names each family type has in the text format; families are named without them.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
            "gauge": ("",), "unknown": ("",), "info": ("_info",), "stateset": ("",),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount")}
# A metric in a PromQL expression: a name followed by its selector; and any name of dnsd's or CoreDNS's.
SELECTED = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
OURS = re.compile(r"\b((?:coredns|dnsd)_[a-zA-Z0-9_:]+)")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """family name -> type, from the /metrics of a real dnsd with every optional output on."""
    absent = tmp_path_factory.mktemp("dnstap") / "nobody.sock"
    with FakeUpstream() as upstream:
        server = Dnsd("--upstream", upstream.server, "--log-queries", "--dnstap", f"unix:{absent}").wait_listening()
        try:
            server.query("www.example.com")  # one forwarded name: every forward series has samples
            status, text = server.http("/metrics")
        finally:
            assert server.stop() == 0, server.log()
    assert status == 200
    yield {family.name: family.type for family in text_string_to_metric_families(text)}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' own panels (collapsed rows keep theirs inside) included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    # label names inside a selector are followed by = or =~, never by {, so SELECTED sees metrics only
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(SELECTED.findall(without_strings)) | set(OURS.findall(without_strings))


def sample_names(families: dict[str, str]) -> dict[str, str]:
    """sample name -> its family: coredns_dns_requests_total -> coredns_dns_requests, ..._bucket -> ..."""
    return {family + suffix: family for family, kind in families.items() for suffix in SUFFIXES.get(kind, ("",))}


# == the JSON ==============================================================================
def test_standard_dashboard_keys(dashboard: dict[str, Any]) -> None:
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, key
    assert dashboard["title"] and re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert "id" not in dashboard or dashboard["id"] is None  # Grafana assigns it on import


def test_panels_have_unique_ids_a_place_and_queries(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        if panel["type"] == "row":
            continue
        assert panel.get("title") and panel["targets"], where
        assert panel["datasource"]["uid"] == "${datasource}", where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], int] = {}
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"panels {taken.get((x, y))} and {panel['id']} overlap at {(x, y)}"
                taken[(x, y)] = panel["id"]


def test_datasource_job_and_instance_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["multi"]


def test_every_query_is_narrowed_to_the_chosen_job_and_instance(dashboard: dict[str, Any]) -> None:
    for expr in expressions(dashboard):
        for selector in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*\s*(\{[^}]*\})", expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
        assert metric_names(expr) and all(f"{name}{{" in expr.replace(" {", "{") for name in metric_names(expr)), expr


# == against a real dnsd's /metrics ========================================================
def test_every_metric_a_query_names_is_exported(dashboard: dict[str, Any], families: dict[str, str]) -> None:
    exported = sample_names(families)
    unknown = {name for expr in expressions(dashboard) for name in metric_names(expr)} - exported.keys() - PROMETHEUS_SERIES
    # a family's bare name (coredns_dns_requests, a histogram without _bucket) selects nothing in Prometheus
    assert not unknown, f"not in dnsd's /metrics: {sorted(unknown)} (it has: {sorted(exported)})"


def test_every_exported_family_is_on_the_dashboard(dashboard: dict[str, Any], families: dict[str, str]) -> None:
    exported = sample_names(families)
    shown = {exported[name] for expr in expressions(dashboard) for name in metric_names(expr) if name in exported}
    missing = set(families) - shown - NOT_ON_THE_DASHBOARD.keys()
    assert not missing, f"exported by dnsd but on no panel (add one, or list it in NOT_ON_THE_DASHBOARD): {sorted(missing)}"
    assert not NOT_ON_THE_DASHBOARD.keys() - set(families), "NOT_ON_THE_DASHBOARD names a family dnsd no longer has"


def test_metric_names_are_read_as_prometheus_does() -> None:
    expr = ('histogram_quantile(0.99, sum by (to, le) (rate(coredns_forward_request_duration_seconds_bucket'
            '{job=~"$job", rcode="dnsd_x{"}[5m]))) / sum(dnsd_records {instance=~"$instance"})')
    assert metric_names(expr) == {"coredns_forward_request_duration_seconds_bucket", "dnsd_records"}
    names = sample_names({"a": "counter", "b": "histogram", "c": "gauge"})
    assert names == {"a_total": "a", "b_bucket": "b", "b_sum": "b", "b_count": "b", "c": "c"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, once Grafana's variables are given values."""
    values = {"$__rate_interval": "1m", "$job": ".+", "$instance": ".+"}
    rules = []
    for i, expr in enumerate(expressions(dashboard)):
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable left unset: {expr}"
        rules.append({"record": f"dnsd:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
