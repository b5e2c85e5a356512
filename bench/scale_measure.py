"""bench/scale's measurements with one worker count: sync, memory, one change idle, updates under
query load (the figures summary_rows reports)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    A_TYPE,
    Procs,
    ask,
    dnsperf_latencies,
    free_port,
    group_cpu_seconds,
    http_get,
    log,
    quantile,
    stat_cpu_seconds,
    system_cpu_seconds,
    wait_until,
)
from bench.scale_changes import new_services, one_changes
from bench.scale_cluster import Cluster, plan_updates
from bench.scale_dnsd import Metrics, memory, pss, ready, serve_command, synced_lines
from bench.scale_probe import Probe, Prober
from bench.scale_report import fmt_ms
from tests.fakes.kube_api import FakeKubeAPI

ROOT = Path(__file__).resolve().parent.parent


def fake_list_stats(api: Any) -> dict[str, dict[str, float]]:
    """What the fake API spent serving list pages, per resource (its own handler time, not the transfer)."""
    out: dict[str, dict[str, float]] = {}
    for r in api.requests(verb="list"):
        s = out.setdefault(r.resource, {"pages": 0, "server_s": 0.0})
        s["pages"] += 1
        s["server_s"] = round(s["server_s"] + (r.duration or 0.0), 3)
    return out


def start_profile(procs: Procs, path: Path, pid: int, tmp: Path) -> subprocess.Popen[bytes]:
    """py-spy (not a project dependency: ``pip install py-spy``) sampling dnsd from its start until it answers."""
    if shutil.which("py-spy") is None:
        raise RuntimeError("--profile needs py-spy on the PATH (pip install py-spy)")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")  # raw: collapsed stacks, greppable
    path.parent.mkdir(parents=True, exist_ok=True)
    return procs.start(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads", "--subprocesses",
                        "--format", fmt, "--output", str(path.resolve())], tmp / "py-spy.log", cwd=ROOT)


def stop_profile(procs: Procs, spy: subprocess.Popen[bytes], path: Path) -> None:
    os.kill(spy.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(30)
    procs.stop(spy, grace=1)
    log(f"profile of the sync in {path}")


def other_load(ours: Callable[[], float], window: float = 0.5) -> float:
    """Cores used by processes that are not ours over ``window`` s (the machine is shared)."""
    busy0, ours0 = system_cpu_seconds()[0], ours()
    time.sleep(window)
    return max(0.0, (system_cpu_seconds()[0] - busy0 - (ours() - ours0)) / window)


def run_dnsperf(procs: Procs, pin: list[str], port: int, queries: Path, seconds: float, rate: int,
                out: Path) -> subprocess.Popen[bytes]:
    # Open loop at a fixed rate; -q gives 200 ms worth of slots so a stalled server does not pause the schedule.
    argv = [*pin, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", f"{seconds:g}",
            "-Q", str(rate), "-q", str(max(100, rate // 5)), "-c", "4", "-T", "1", "-t", "1", "-v"]
    return procs.start(argv, out, cwd=ROOT)


def dnsperf_result(out: Path) -> dict[str, Any]:
    text = out.read_text(errors="replace")

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else math.nan

    codes = dict((code, int(n)) for code, n in re.findall(r"\b([A-Z]+) (\d+) \(", text.split("Response codes:", 1)[-1]
                                                          .split("\n", 1)[0]))
    latencies, timeouts = dnsperf_latencies(text.splitlines())
    completed = num(r"Queries completed:\s+(\d+)")
    return {
        "sent": int(num(r"Queries sent:\s+(\d+)")) if "Queries sent" in text else 0,
        "completed": int(completed) if completed == completed else 0,
        "lost": int(num(r"Queries lost:\s+(\d+)")) if "Queries lost" in text else 0,
        "timeouts": timeouts,
        "rcodes": codes,
        "errors": sum(n for code, n in codes.items() if code != "NOERROR"),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "latency_p50_ms": quantile(sorted(latencies), 0.5), "latency_p99_ms": quantile(sorted(latencies), 0.99),
        "latency_max_ms": max(latencies, default=math.nan),
    }


def summarize_probes(results: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [r["latency"] * 1000 for r in results if r["latency"] is not None]
    out: dict[str, Any] = {"checked": len(results), "answered": len(lat), "timeouts_1s": len(results) - len(lat),
                           "p50_ms": quantile(sorted(lat), 0.5), "p99_ms": quantile(sorted(lat), 0.99),
                           "max_ms": max(lat, default=math.nan)}
    if len(lat) < len(results):
        # A missed probe counts as slower than everything else for p99 (it never showed within the cap).
        out["p99_ms"] = quantile(sorted(lat + [math.inf] * (len(results) - len(lat))), 0.99)
    for kind in sorted({r["kind"] for r in results}):
        kl = [r["latency"] * 1000 for r in results if r["kind"] == kind and r["latency"] is not None]
        out[kind] = {"checked": sum(r["kind"] == kind for r in results), "p50_ms": quantile(sorted(kl), 0.5),
                     "p99_ms": quantile(sorted(kl), 0.99), "max_ms": max(kl, default=math.nan)}
    return out


def measure(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any]) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2 and args.workers < len(cpus)
    dnsd_pin: list[str] = []
    if pinned:
        # dnsd (its one process) on the first CPU; this process (the fake API's thread included, as threads
        # and children inherit the mask), the prober and dnsperf on the others.
        dnsd_pin = ["taskset", "-c", str(cpus[0])]
        os.sched_setaffinity(0, cpus[1:])
    result["meta"]["pinning"] = (f"dnsd on CPU {cpus[0]}; fake API, prober and dnsperf on CPU {','.join(map(str, cpus[1:]))}"
                                 if pinned else "none")
    log(f"pinning: {result['meta']['pinning']}")

    # -- 1. the cluster, in the fake API ---------------------------------------------------------
    # Building it allocates millions of objects that all live on: a collection would find nothing, and
    # the full ones walk everything built so far (~1 min of a 1M-endpoint run). On again once frozen.
    gc.disable()
    t = time.monotonic()
    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed, args.shape, args.headless)
    stats = cluster.stats()
    objs = list(cluster.objects())
    gen_s = time.monotonic() - t
    api = FakeKubeAPI(backlog=50_000, bookmark_interval=5.0, log_limit=1_000_000)
    api.start()
    try:
        _with_api(args, procs, tmp, result, api, cluster, stats, objs, gen_s, dnsd_pin)
    finally:
        gc.enable()
        api.stop()


def _with_api(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any], api: Any, cluster: Cluster,
              stats: dict[str, int], objs: list[dict[str, Any]], gen_s: float, dnsd_pin: list[str]) -> None:
    t = time.monotonic()
    api.load(objs)
    load_s = time.monotonic() - t
    result["cluster"] = {**stats, "objects": len(objs), "generate_s": round(gen_s, 2), "fake_load_s": round(load_s, 2)}
    log(f"cluster: {stats['services']} Services ({stats['headless']} headless) in {stats['namespaces']} namespaces, "
        f"{stats['endpoints']} endpoints in {stats['endpointslices']} EndpointSlices; built in {gen_s:.1f} s, "
        f"loaded into the fake API in {load_s:.1f} s")
    # Everything is prepared now, so nothing heavy runs in the timed parts: the name that tells the sync is
    # done (a headless endpoint's own name needs both lists), the updates (the model then holds their
    # result), the queries (names that exist all along: new pods' names are left out).
    sync_svc = next((s for s in reversed(cluster.services) if s.headless and any(p.ready for p in s.pods())),
                    cluster.services[-1])  # no headless Service: the last Service's own name
    sync_pod = next((p for p in sync_svc.pods() if p.ready), None)
    sync_probe = Probe("sync", sync_pod.dns_name(sync_svc), A_TYPE, (sync_pod.ip,)) if sync_pod and sync_svc.headless \
        else Probe("sync", sync_svc.fqdn, A_TYPE, (sync_svc.cluster_ip or "",))
    used = {(sync_svc.namespace, sync_svc.name)}
    one_service = plan_updates(cluster, 1, used, endpoints_of="none")
    one_slice = plan_updates(cluster, 2, used, endpoints_of="headless")  # [clusterIP, endpoint]: the 2nd is ours
    plan = plan_updates(cluster, int(args.updates_per_second * args.duration), used)
    fresh = [cluster.new_service(i) for i in range(args.new_services)]
    avoid = {p.name for p in (*plan.probes, *one_slice.probes) if p is not None}
    queries = tmp / "queries.txt"
    queries.write_text("\n".join(cluster.query_lines(10_000, avoid)) + "\n")
    del objs
    # The fake API shares this process's GIL: a full collection over millions of generated objects
    # would pause it for hundreds of ms in the middle of a measurement. Freeze them out of the GC.
    gc.collect()
    gc.freeze()
    gc.enable()
    kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")

    # -- 2. dnsd: sync, memory, records ---------------------------------------------------------
    port, http_port = free_port(), free_port()
    dnsd_log = tmp / "dnsd.log"
    argv, env = serve_command(kubeconfig, port, http_port, args.workers)
    argv = [*dnsd_pin, *argv]
    fake_thread = f"/proc/self/task/{api._thread.native_id}/stat"  # the fake API's loop thread
    fake_cpu0, own_cpu0 = stat_cpu_seconds(fake_thread), stat_cpu_seconds("/proc/self/stat")
    busy0 = system_cpu_seconds()[0]
    api.reset_stats()
    started_wall, started = time.time(), time.monotonic()
    dnsd = procs.start(argv, dnsd_log, cwd=ROOT, env=env)
    log(f"dnsd started (pid {dnsd.pid}, DNS port {port}, HTTP port {http_port})")
    spy = start_profile(procs, args.profile, dnsd.pid, tmp) if args.profile else None

    health_at = wait_until(lambda: http_get(http_port, "/health", timeout=1) is not None, args.sync_timeout,
                           "dnsd /health", dnsd, dnsd_log, interval=0.02)
    ready_at = wait_until(lambda: ready(http_port), args.sync_timeout, "dnsd /ready", dnsd, dnsd_log, interval=0.02)
    dnsd_cpu_sync = group_cpu_seconds(dnsd.pid)
    fake_cpu_sync = stat_cpu_seconds(fake_thread) - fake_cpu0
    others_sync = (system_cpu_seconds()[0] - busy0 - dnsd_cpu_sync
                   - (stat_cpu_seconds("/proc/self/stat") - own_cpu0)) / (ready_at - started)
    # /ready is the store's view; with --workers N the workers build their own index after it: also time the
    # first correct answer for a name that needs both lists.
    answers_at = wait_until(lambda: (ask(port, sync_probe.name) or (0, set()))[1] == set(sync_probe.expect),
                            args.sync_timeout, "dnsd answering", dnsd, dnsd_log, interval=0.005)
    if spy is not None:
        stop_profile(procs, spy, args.profile)
    # With workers the figures reach the supervisor once a second, and a worker may still be building its
    # index: wait until every Service is counted and two reports agree (so is the memory then).
    scraped: list[Metrics] = []

    def settled() -> bool:
        scraped.append(Metrics.scrape(http_port))
        last, prev = scraped[-1], scraped[-2] if len(scraped) > 1 else None
        return (last.services >= len(cluster.services) and prev is not None and last.records == prev.records
                and last.prog_count == prev.prog_count)

    wait_until(settled, 30, "dnsd_services and dnsd_records to settle", dnsd, dnsd_log,
               interval=1.1 if args.workers > 1 else 0.2)
    after_sync = scraped[-1]
    mem_sync = memory(dnsd.pid)
    origins = synced_lines(dnsd_log, started_wall)
    result["sync"] = {
        "start_to_health_s": round(health_at - started, 3),
        "start_to_ready_s": round(ready_at - started, 3),
        "start_to_answers_s": round(answers_at - started, 3),
        "origins": origins,
        # The main process builds the one index (with --workers N, in the shared file).
        "index_build": {"batches": int(after_sync.prog_count), "sum_s": round(after_sync.prog_sum, 3)},
        "dnsd_cpu_s": round(dnsd_cpu_sync, 2),
        "fake_api_cpu_s": round(fake_cpu_sync, 2),
        "other_processes_cores": round(max(0.0, others_sync), 2),
        "fake_api_lists": fake_list_stats(api),
    }
    pss_sync = pss(dnsd.pid)
    result["memory_after_sync"] = {"total_rss_mb": round(sum(p["rss_mb"] for p in mem_sync), 1), "processes": mem_sync,
                                   "total_pss_mb": round(sum(p["pss_mb"] for p in pss_sync), 1)}
    result["records"] = int(after_sync.records)
    result["services"] = int(after_sync.services)
    log(f"ready {ready_at - started:.2f} s after start (HTTP up at {health_at - started:.2f} s, answering at "
        f"{answers_at - started:.2f} s); " + ", ".join(f"{o} {v['objects']} in {v['seconds']:.2f} s"
                                                       for o, v in origins.items()))
    per_process = ", ".join(f"{p['role']} {p['rss_mb']:.0f}" for p in mem_sync)
    log(f"RSS {result['memory_after_sync']['total_rss_mb']:.0f} MB ({per_process}), PSS "
        f"{result['memory_after_sync']['total_pss_mb']:.0f} MB; dnsd_records {result['records']}")

    # -- 3. one change -----------------------------------------------------------------------------
    prober = Prober(procs, port, args.probe_interval, args.probe_cap, tmp)
    # The prober's first poll also warms it up (imports, socket): give it a name that answers at once.
    prober.submit(sync_probe, time.monotonic())
    prober.wait(1, 10)
    result["one_change"] = one_changes(args, api, prober, http_port, one_service, one_slice)
    result["new_services"] = new_services(args, api, prober, http_port, fresh)
    settle = 1.3 if args.workers > 1 else 0.0  # workers report their programming times once a second

    # -- 4. updates under query load --------------------------------------------------------------
    gen_pin = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))))] if dnsd_pin else []
    # Warm-up, not measured: passes over the query file, so dnsd's rendered-answer table is as in a server
    # that has been running (a first query costs ~0.2 ms in the full path, a repeat ~0.01 ms). Workers each
    # have their own table and SO_REUSEPORT spreads by source port: 16 sockets and 3 passes reach them all.
    t = time.monotonic()
    warm = procs.start([*gen_pin, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "3",
                        "-l", "15", "-q", "50", "-c", "16", "-t", "1"], tmp / "warmup.txt", cwd=ROOT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        warm.wait(30)
    procs.stop(warm, grace=1)
    result["warmup_s"] = round(time.monotonic() - t, 2)
    perf_out = tmp / "dnsperf.txt"
    before = Metrics.scrape(http_port)
    cpu0 = (group_cpu_seconds(dnsd.pid), stat_cpu_seconds(fake_thread), system_cpu_seconds()[0], time.monotonic(),
            stat_cpu_seconds("/proc/self/stat"), stat_cpu_seconds(f"/proc/{prober.proc.pid}/stat"))
    perf = run_dnsperf(procs, gen_pin, port, queries, args.duration + 1.0, args.qps, perf_out)
    time.sleep(0.5)  # dnsperf at its rate before the first update
    n = len(plan.objs)
    log(f"{n} updates over {args.duration:g} s ({args.updates_per_second:g}/s) with dnsperf at {args.qps} qps")
    first = len(prober.results)
    submitted, lag, calls = 0, [], []  # calls: how long each api.update() took
    t_start = time.monotonic()
    for i, (obj, probe) in enumerate(zip(plan.objs, plan.probes, strict=True)):
        due = t_start + i / args.updates_per_second
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        lag.append(time.monotonic() - due)
        api.update(obj)
        t0 = time.monotonic()
        calls.append(t0 - due - lag[-1])
        if probe is not None:
            prober.submit(probe, t0, seq=i)
            submitted += 1
    updates_s = time.monotonic() - t_start
    results = prober.wait(first + submitted, args.probe_cap + 5)[first:]
    perf_cpu = stat_cpu_seconds(f"/proc/{perf.pid}/stat")  # before it is reaped
    with contextlib.suppress(subprocess.TimeoutExpired):
        perf.wait(args.duration + 15)
    cpu1 = (group_cpu_seconds(dnsd.pid), stat_cpu_seconds(fake_thread), system_cpu_seconds()[0], time.monotonic(),
            stat_cpu_seconds("/proc/self/stat"), stat_cpu_seconds(f"/proc/{prober.proc.pid}/stat"))
    time.sleep(settle)
    load = Metrics.scrape(http_port).since(before)
    wall = cpu1[3] - cpu0[3]
    dnsd_cores, fake_cores = (cpu1[0] - cpu0[0]) / wall, (cpu1[1] - cpu0[1]) / wall
    mem_load = memory(dnsd.pid)
    result["under_load"] = {
        "updates": n, "updates_s": round(updates_s, 2), "achieved_updates_per_s": round(n / updates_s, 1),
        "schedule_lag_max_ms": round(max(lag, default=0.0) * 1000, 1),
        "update_call_max_ms": round(max(calls, default=0.0) * 1000, 1),
        "schedule_lag_first_ms": next((round(x * 1000, 1) for x in lag if x > 0.1), None),
        "schedule_lag_first_at": next((i for i, x in enumerate(lag) if x > 0.1), None),
        "kinds": {k: plan.kinds.count(k) for k in sorted(set(plan.kinds))},
        "event_to_answer": summarize_probes(results),
        "applied": load,
        "queries": dnsperf_result(perf_out),
        "cpu_cores": {"dnsd": round(dnsd_cores, 2), "fake_api": round(fake_cores, 2),
                      "bench_process": round((cpu1[4] - cpu0[4]) / wall, 2), "prober": round((cpu1[5] - cpu0[5]) / wall, 2),
                      "dnsperf_at_least": round(perf_cpu / wall, 2), "machine": round((cpu1[2] - cpu0[2]) / wall, 2),
                      # Other users of this shared machine (a test suite, another benchmark) during the phase.
                      "other_processes": round(max(0.0, (cpu1[2] - cpu0[2] - (cpu1[0] - cpu0[0]) - (cpu1[4] - cpu0[4])
                                                         - (cpu1[5] - cpu0[5]) - perf_cpu) / wall), 2)},
        # Per update, in order: when it was applied (s into the phase) and its event-to-answer (s; None: not seen).
        "samples": [[r["seq"], r["kind"], round(r["t0"] - t_start, 4), r["latency"]] for r in results],
        "memory": {"total_rss_mb": round(sum(p["rss_mb"] for p in mem_load), 1), "processes": mem_load},
    }
    e2a, q = result["under_load"]["event_to_answer"], result["under_load"]["queries"]
    log(f"event->answer: {e2a['checked']} checked, p50 {fmt_ms(e2a['p50_ms'])} p99 {fmt_ms(e2a['p99_ms'])} "
        f"max {fmt_ms(e2a['max_ms'])}; queries {q['qps']:.0f} qps, {q['lost']} lost, {q['errors']} errors")
    procs.stop(prober.proc, grace=2)
    procs.stop(dnsd)
    if dnsd_log.exists():
        problems = [line for line in dnsd_log.read_text(errors="replace").splitlines()
                    if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        result["dnsd_log_problems"] = problems[:50]
