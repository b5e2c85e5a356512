"""dnsd at cluster scale: initial sync, memory, time to apply a change, event-to-answer under load.

    bench/scale [--services 10000] [--endpoints 100000] [--updates-per-second 100] [--duration 10] [--workers 1]

About 25 s with the defaults (a 2-CPU machine). Needs dnsperf and taskset; dnsd is the working tree's.

1. Cluster (seeded): N Services over 50 namespaces, every other one headless (30% of those
   StatefulSet-like, with hostnames); every Service has EndpointSlices (<= 100 endpoints each, with
   nodeName/zone/targetRef like the controller writes, ~2% not ready), ``--endpoints`` in total,
   skewed: most Services have a few pods, 1% hundreds. Served by ``tests.fakes.kube_api.FakeKubeAPI`` from
   this process (its own thread, loopback); dnsd is a subprocess.
2. Sync: ``python -m dnsd serve --kubeconfig ...``; process start -> /health (imports), -> /ready, and
   -> the first correct answer for a name that needs both lists; dnsd's ``<origin>: synced N objects in
   X s`` lines; the programming time spent building the index; VmRSS/VmHWM of every dnsd process;
   dnsd_records.
3. One change, idle: a Service's clusterIP, then one pod of a headless Service's slice replaced. For
   each: dnsd_programming_duration_seconds delta (the batch that applied it) and event-to-answer: from
   the fake's update() returning to the first UDP answer with exactly the new data, polled every 1 ms
   (cap 1 s) by a separate prober process (CLOCK_MONOTONIC is shared between processes).
   Then ``--new-services`` Services created one at a time (each with its EndpointSlice), idle, each
   timed from its creation to the first answer with its clusterIP: median and max.
4. Under load: after a warm-up pass (dnsd keeps rendered answers; a server that has been running has
   them), dnsperf sends a fixed rate (``--qps``) of queries for existing names (a hot set: ClusterIP A
   and SRV, small headless A, pod names) while ``--updates-per-second`` updates run for ``--duration``
   s, alternating a clusterIP change and a pod replacement in a random Service's slice (each Service
   changed once at most). Updates whose effect shows in DNS are probed (ClusterIP Services' endpoints
   are not in DNS: applied, not probed). Reported: event-to-answer p50/p99/max and how many were
   checked, dnsperf's QPS, lost queries, non-NOERROR answers and latency, CPU of each party.
5. A summary table with the targets, and everything (per-update samples too) in bench/out/scale.json.
   ``--sizes 100000,500000,1000000`` runs it per endpoint count (a tenth as many Services) and adds one
   table of them all; ``--shape uniform --headless 0`` makes every Service ClusterIP with as many
   endpoints as the next (the cluster issue 23 quotes).

Pinning (2 CPUs): with ``--workers 1`` dnsd runs on CPU 0 and everything else (this process with the
fake API, the prober, dnsperf) on CPU 1, so the fake API's CPU does not count against dnsd; with as
many workers as CPUs nothing is pinned. Other processes' CPU use is measured and shown.

The parts: scale_cluster (the cluster and its changes), scale_probe (the prober process), scale_dnsd
(what dnsd reports), scale_measure, scale_memory (--workers 1,2,4) and scale_report; this module parses
the arguments and runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Procs, log, set_log_tag, stat_cpu_seconds
from bench.scale_cluster import add_cluster_options
from bench.scale_measure import measure, other_load
from bench.scale_memory import memory_rows, memory_runs
from bench.scale_report import meta, plain, sizes_table, summary_rows, table

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_options(parser)
    parser.add_argument("--updates-per-second", type=float, default=100, help="update rate under load (default 100)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of updates under load (default 10)")
    parser.add_argument("--workers", default="1",
                        help="dnsd --workers (default 1); a list such as 1,2,4 (or 1, for one count) measures only "
                             "memory, for each count: total PSS after sync, after every name is queried --passes "
                             "times, and after three forced relists")
    parser.add_argument("--passes", type=int, default=3, help="memory runs: queries of every name per phase (default 3)")
    parser.add_argument("--new-services", type=int, default=20,
                        help="Services created one at a time, idle, each timed to its first answer (default 20)")
    parser.add_argument("--qps", type=int, default=5000, help="dnsperf query rate during the updates (default 5000)")
    parser.add_argument("--probe-interval", type=float, default=0.001, help="seconds between polls of one name (default 0.001)")
    parser.add_argument("--probe-cap", type=float, default=1.0, help="give up on an update after this many s (default 1)")
    parser.add_argument("--sync-timeout", type=float, default=90, help="fail if dnsd is not ready after this many s")
    parser.add_argument("--wait-quiet", type=float, default=20,
                        help="wait up to this many s for other processes to go quiet first (default 20; 0: don't)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin dnsd and the load generators to CPUs")
    parser.add_argument("--json", type=Path, default=OUT / "scale.json",
                        help="where to write the results (default bench/out/scale.json)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy profile of dnsd from start to answering: .svg flame graph, .json speedscope, "
                             "else collapsed stacks (needs py-spy; perturbs the sync figures a little)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (dnsd log, dnsperf output, kubeconfig)")
    parser.add_argument("--sizes", default="",
                        help="endpoint counts, e.g. 100000,500000,1000000: one run each, with a tenth as many Services "
                             "(each run's results in --json with the count in its name), then one table of them all")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(n) for n in args.sizes.split(",") if n]
    except ValueError:
        parser.error(f"--sizes: {args.sizes!r} is not a comma-separated list of numbers")
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w]
        args.memory = "," in args.workers
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a number or a comma-separated list of numbers")
    args.workers = args.worker_counts[0]
    if args.services < 4 or args.endpoints < 4 or args.updates_per_second <= 0 or args.duration <= 0 \
            or min(args.worker_counts) < 1 or args.passes < 1:
        parser.error("need --services >= 4, --endpoints >= 4, positive --updates-per-second/--duration, --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_log_tag("scale")
    if shutil.which("dnsperf") is None or shutil.which("taskset") is None:
        log("needs dnsperf and taskset on the PATH (apt-get install dnsperf util-linux)")
        return 2
    if not args.sizes:
        return run(args)[0]
    results = []
    cpus = os.sched_getaffinity(0)  # a run pins this process to the CPUs dnsd does not use: each starts anew
    for endpoints in args.sizes:
        os.sched_setaffinity(0, cpus)
        one = argparse.Namespace(**vars(args))
        one.endpoints, one.services = endpoints, max(4, endpoints // 10)
        one.json = args.json.with_name(f"{args.json.stem}-{endpoints}{args.json.suffix}")
        status, result = run(one)
        if status:
            return status
        results.append(result)
    print(sizes_table(results))
    return 0


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """One run at one cluster size: the exit status and the results."""
    procs = Procs()

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)  # cleanup runs on SIGTERM as on Ctrl-C
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-scale-"))
    result: dict[str, Any] = {"meta": meta(args)}
    started = time.monotonic()
    failed = False
    try:
        if args.wait_quiet > 0:
            deadline = time.monotonic() + args.wait_quiet
            while (load := other_load(lambda: stat_cpu_seconds("/proc/self/stat"))) > 0.3 and time.monotonic() < deadline:
                pass
            result["meta"]["other_load_cores_at_start"] = round(load, 2)
            if load > 0.3:
                log(f"WARNING: other processes use {load:.1f} cores: the figures below are pessimistic")
        if args.memory:
            memory_runs(args, procs, tmp, result)
        else:
            measure(args, procs, tmp, result)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        result["error"] = "interrupted"
        failed = True
        return 130, result
    except Exception as exc:
        failed = True
        log(f"FAILED: {exc}")
        result["error"] = str(exc)
        return 1, result
    finally:
        procs.stop_all(grace=3.0)
        result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        if "cluster" in result:
            rows = []
            try:
                rows = memory_rows(result) if "memory_runs" in result else summary_rows(result)
                result["summary"] = [{"figure": f.strip(), "value": v, "target": t, "ok": ok} for f, v, t, ok in rows]
            finally:  # the raw figures are kept even if the summary has a bug
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(plain(result), indent=2) + "\n")
            print(table(rows))
            log(f"wrote {args.json} (run took {result['meta']['wall_s']:.0f} s)")
        if args.keep or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0, result


if __name__ == "__main__":
    sys.exit(main())
