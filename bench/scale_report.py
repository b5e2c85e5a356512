"""bench/scale's report: the summary table against the targets, JSON-safe results, run metadata."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"sync_s": 10.0, "rss_mb": 200.0, "apply_ms": 5.0, "e2a_p99_ms": 100.0, "new_median_ms": 10.0, "new_max_ms": 50.0}


def fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "> cap"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    c = r["cluster"]
    rows.append(("cluster", f"{c['services']} Services ({c['headless']} headless), {c['endpoints']} endpoints, "
                            f"{c['endpointslices']} slices", "", None))
    s = r.get("sync")
    if s:
        rows.append(("initial sync: process start -> /ready", f"{s['start_to_ready_s']:.2f} s",
                     f"< {TARGETS['sync_s']:g} s", s["start_to_ready_s"] < TARGETS["sync_s"]))
        rows.append(("  start -> HTTP up (imports, start-up)", f"{s['start_to_health_s']:.2f} s", "", None))
        for origin, v in s["origins"].items():
            rows.append((f"  {origin}: list+convert (log)", f"{v['objects']} objects in {v['seconds']:.2f} s", "", None))
        rows.append(("  index build (programming during sync)",
                     f"{s['index_build']['sum_s']:.2f} s in {s['index_build']['batches']} batches", "", None))
        rows.append(("  start -> first answer needing both lists", f"{s['start_to_answers_s']:.2f} s", "", None))
        rows.append(("  CPU: dnsd / fake API during sync", f"{s['dnsd_cpu_s']:.1f} s / {s['fake_api_cpu_s']:.1f} s", "", None))
    m = r.get("memory_after_sync")
    if m:
        per = ", ".join(f"{p['role']} {p['rss_mb']:.0f} (peak {p['peak_rss_mb']:.0f})" for p in m["processes"])
        rows.append(("RSS after sync (sum of dnsd processes)", f"{m['total_rss_mb']:.0f} MB", f"< {TARGETS['rss_mb']:g} MB",
                     m["total_rss_mb"] < TARGETS["rss_mb"]))
        rows.append(("  per process, MB", per, "", None))
        if "total_pss_mb" in m:
            rows.append(("PSS after sync (sum of dnsd processes)", f"{m['total_pss_mb']:.0f} MB", "", None))
    if "records" in r:
        rows.append(("dnsd_records / dnsd_services", f"{r['records']} / {r['services']}", "", None))
    for label, v in (r.get("one_change") or {}).items():
        applied = v["applied"].get("mean_ms", math.nan)
        ok = None if math.isnan(applied) else applied < TARGETS["apply_ms"]
        rows.append((f"one change applied: {label}", f"{fmt_ms(applied)} ({v['applied'].get('batches')} batch)",
                     f"< {TARGETS['apply_ms']:g} ms", ok))
        rows.append((f"  event -> answer: {label}", fmt_ms(v["event_to_answer_ms"]), "", None))
    n = r.get("new_services")
    if n:
        rows.append((f"new Service -> answer, idle: median / max of {n['count']}",
                     f"{fmt_ms(n['median_ms'])} / {fmt_ms(n['max_ms'])}", f"<= {TARGETS['new_median_ms']:g} / "
                     f"{TARGETS['new_max_ms']:g} ms", n["median_ms"] <= TARGETS["new_median_ms"]
                     and n["max_ms"] <= TARGETS["new_max_ms"]))
        a = n["applied"]
        rows.append(("  applied: mean per batch (batches)", f"{fmt_ms(a.get('mean_ms'))} ({a.get('batches')})", "", None))
    u = r.get("under_load")
    if u:
        e = u["event_to_answer"]
        rows.append((f"event -> answer under load, p99 ({e['checked']} of {u['updates']} updates checked)",
                     fmt_ms(e["p99_ms"]), f"< {TARGETS['e2a_p99_ms']:g} ms",
                     e["checked"] > 0 and e["p99_ms"] < TARGETS["e2a_p99_ms"]))
        rows.append(("  p50 / max / not seen within the cap",
                     f"{fmt_ms(e['p50_ms'])} / {fmt_ms(e['max_ms'])} / {e['timeouts_1s']}", "", None))
        for kind in ("service", "endpoint"):
            if kind in e:
                k = e[kind]
                rows.append((f"  {kind} changes: p50 / p99 / max ({k['checked']})",
                             f"{fmt_ms(k['p50_ms'])} / {fmt_ms(k['p99_ms'])} / {fmt_ms(k['max_ms'])}", "", None))
        a = u["applied"]
        rows.append(("  applied under load: mean / p99 bucket / max bucket",
                     f"{fmt_ms(a['mean_ms'])} / <= {fmt_ms(a['p99_le_ms'])} / <= {fmt_ms(a['max_le_ms'])} "
                     f"({a['batches']} batches)", "", None))
        rows.append(("  updates applied to the fake API", f"{u['updates']} in {u['updates_s']:.1f} s "
                                                          f"({u['achieved_updates_per_s']:.0f}/s)", "", None))
        q = u["queries"]
        rows.append(("query load during updates (dnsperf)", f"{q['qps']:.0f} qps, {q['lost']} lost, {q['errors']} errors",
                     "0 lost, 0 errors", q["lost"] == 0 and q["errors"] == 0))
        rows.append(("  query latency p50 / p99 / max", f"{fmt_ms(q['latency_p50_ms'])} / {fmt_ms(q['latency_p99_ms'])} "
                                                         f"/ {fmt_ms(q['latency_max_ms'])}", "", None))
        cc = u["cpu_cores"]
        rows.append(("  CPU cores: dnsd / fake API / whole machine", f"{cc['dnsd']:.2f} / {cc['fake_api']:.2f} / "
                                                                     f"{cc['machine']:.2f}", "", None))
        others_sync = s["other_processes_cores"] if s else 0.0
        rows.append(("other processes on the machine: sync / load", f"{others_sync:.2f} / {cc['other_processes']:.2f} cores",
                     "~0 (shared machine)", max(others_sync, cc["other_processes"]) < 0.3))
        rows.append(("RSS after the updates", f"{u['memory']['total_rss_mb']:.0f} MB", f"< {TARGETS['rss_mb']:g} MB",
                     u["memory"]["total_rss_mb"] < TARGETS["rss_mb"]))
    return rows


def sizes_table(results: list[dict[str, Any]]) -> str:
    """One line per cluster size (--sizes): the figures issue 23 compares across sizes, as Markdown."""
    lines = ["| Services / endpoints | sync (start -> /ready) | dnsd CPU in it | other processes | PSS after sync "
             "| new Service -> answer, median / max | applied per batch (mean) | under load: event -> answer p50 / p99 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, s, m = r["cluster"], r.get("sync") or {}, r.get("memory_after_sync") or {}
        n, u = r.get("new_services") or {}, (r.get("under_load") or {}).get("event_to_answer") or {}
        lines.append(f"| {c['services']:,} / {c['endpoints']:,} | {s.get('start_to_ready_s', math.nan):.2f} s "
                     f"| {s.get('dnsd_cpu_s', math.nan):.1f} s | {s.get('other_processes_cores', math.nan):.2f} cores "
                     f"| {m.get('total_pss_mb', math.nan):.0f} MB | {fmt_ms(n.get('median_ms'))} / {fmt_ms(n.get('max_ms'))} "
                     f"| {fmt_ms((n.get('applied') or {}).get('mean_ms'))} | {fmt_ms(u.get('p50_ms'))} / "
                     f"{fmt_ms(u.get('p99_ms'))} |")
    return "\n".join(lines)


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{'figure':<{w0}}  {'value':<{w1}}  {'target':<{w2}}  ok", "-" * (w0 + w1 + w2 + 10)]
    for fig, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(f"{fig:<{w0}}  {value:<{w1}}  {target:<{w2}}  {mark}".rstrip())
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 4)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return ""

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "args": vars(args),
        "commit": git("rev-parse", "--short", "HEAD"), "dirty_dnsd": bool(git("status", "--porcelain", "dnsd")),
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
    }
