"""dnsd vs Knot DNS vs a naive dnslib server: max UDP throughput and latency at equal load.

    bench/qps [--duration 10] [--workers 1] [--clients 4] [--scaling]

Generates a seeded 1,000-Service / 10,000-endpoint cluster and an ndots:5-style query
mix, serves exactly the same records (``dnsd records``) from each server in turn on
127.0.0.1, checks they answer alike, then measures with dnsperf:
  1. max throughput: closed loop, ``--outstanding`` queries in flight, ``--duration`` s;
  2. latency at equal load: open loop at half of dnsd's max QPS or ``--rate`` (``-Q``),
     every response's latency from ``dnsperf -v``, giving mean/p50/p99.
Prints a table and writes bench/out/qps.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import array
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import common, gen_cluster
from bench.common import Procs, Reply, log, quantile

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SAMPLE = 300  # queries compared across servers before the load
WARMUP = 5  # seconds at most
DNSPERF_TIMEOUT = 2  # seconds before dnsperf counts a query lost (also frees its slot)
# dnsperf opens a rate-limited run with a burst of up to -q queries at once; its first second is
# a start-up transient, not the server's steady latency, so it is left out for every server alike.
SETTLE_SECONDS = 1.0


@dataclass
class Server:
    key: str
    label: str
    argv: list[str]
    cpus: int  # cores the server may use (for pinning)
    env: dict[str, str] | None = None


@dataclass
class Run:
    """One dnsperf run against one server."""

    cmd: list[str]
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    mean_ms: float = math.nan
    stdev_ms: float = math.nan
    run_time: float = 0.0
    response_bytes: int = 0
    server_cpu: float = 0.0  # cores used by the server's processes during the run (1.0 = one core)
    loadgen_cpu: float = 0.0  # cores used by dnsperf
    other_cpu: float = 0.0  # cores used by everything else on the machine (other users' work)
    steal_cpu: float = 0.0  # cores the hypervisor took away (VM steal time)
    kernel_drops: int = 0  # queries the kernel dropped at the server socket (receive buffer full)
    server_cores_busy: float = 0.0  # busy fraction (anyone's work, irq included) of the server's pinned CPUs
    loadgen_cores_busy: float = 0.0  # the same for dnsperf's CPUs (both: all CPUs when not pinned)
    rate: float | None = None  # -Q, for the fixed-rate run
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    timeouts: int = 0
    p99_answered_ms: float = math.nan  # p99 of the answered queries only

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else math.nan

    @property
    def qps_per_core(self) -> float:
        """Throughput per CPU-second the server got: robust to other load stealing its core."""
        return self.qps / self.server_cpu if self.server_cpu > 0.05 else math.nan


@dataclass
class Probe:
    """One udpprobe run: the fixed-rate latency again, from a load generator that is one busy thread."""

    cmd: list[str]
    rate: float
    sent: int = 0
    answered: int = 0
    late_sends: int = 0  # queries the probe itself sent behind schedule (its own stalls)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    max_ms: float = math.nan

    @property
    def lost_pct(self) -> float:
        return 100.0 * (self.sent - self.answered) / self.sent if self.sent else math.nan


@dataclass
class Result:
    key: str
    label: str
    pinned: str
    cores: int = 1  # cores the server can use
    startup_s: list[float] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    max: Run | None = None  # the best of the max-throughput runs (one per round)
    max_runs: list[Run] = field(default_factory=list)
    fixed: Run | None = None  # the fixed-rate run with the lowest p99
    fixed_runs: list[Run] = field(default_factory=list)
    fixed_rate: float | None = None
    probe: Probe | None = None  # the udpprobe run with the lowest p99
    probe_runs: list[Probe] = field(default_factory=list)
    quiet_before: list[float] = field(default_factory=list)  # other processes' load (cores) just before each run
    overloaded_at_common_rate: bool = False
    error: str | None = None


# ---------------------------------------------------------------- data

def split_zones(records: list[str], out: Path) -> dict[str, Path]:
    """``dnsd records`` lines -> one zone file per apex (the names owning an SOA), for Knot."""
    apexes = sorted({line.split()[0].lower() for line in records if line.split()[3:4] == ["SOA"]}, key=len, reverse=True)
    zones: dict[str, list[str]] = {apex: [] for apex in apexes}
    for line in records:
        name = line.split()[0].lower()
        apex = next((a for a in apexes if name == a or name.endswith("." + a)), None)
        if apex is None:
            log(f"warning: {name} is outside every served zone; Knot will not serve it")
            continue
        zones[apex].append(line)
    paths = {}
    for apex, lines in zones.items():
        paths[apex] = out / f"{apex}zone"
        paths[apex].write_text("".join(line + "\n" for line in lines))
    return paths


def expected_mix(records: list[str], queries: list[str]) -> Counter[str]:
    """What the query file should get, from the records alone: answer / NODATA / NXDOMAIN / outside."""
    types: dict[str, set[str]] = {}
    for line in records:
        parts = line.split()
        types.setdefault(parts[0].lower(), set()).add(parts[3])
    apexes = [n for n, t in types.items() if "SOA" in t]
    existing = set(types)
    for name in list(types):  # empty non-terminals exist too
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if any(parent == a or parent.endswith("." + a) for a in apexes):
                existing.add(parent)
    mix: Counter[str] = Counter()
    for line in queries:
        qname, qtype = line.split()
        name = qname.lower().rstrip(".") + "."
        if not any(name == a or name.endswith("." + a) for a in apexes):
            mix["refused"] += 1
        elif qtype in types.get(name, ()) or "CNAME" in types.get(name, ()):
            mix["answer"] += 1
        elif name in existing:
            mix["nodata"] += 1
        else:
            mix["nxdomain"] += 1
    return mix


# ---------------------------------------------------------------- servers

def knot_config(tmp: Path, port: int, zones: dict[str, Path]) -> Path:
    """knotd with one thread of each kind, everything (rundir, storage) in the temp dir."""
    for sub in ("run", "storage"):
        (tmp / sub).mkdir(exist_ok=True)
    zone_lines = "".join(f"  - domain: {apex}\n    file: {path}\n" for apex, path in zones.items())
    conf = tmp / "knot.conf"
    conf.write_text(
        "server:\n"
        f"    rundir: {tmp / 'run'}\n"
        f"    listen: 127.0.0.1@{port}\n"
        "    udp-workers: 1\n"
        "    tcp-workers: 1\n"
        "    background-workers: 1\n"
        "database:\n"
        f"    storage: {tmp / 'storage'}\n"
        "log:\n"
        "  - target: stderr\n"
        "    any: info\n"
        "template:\n"
        "  - id: default\n"
        "    zonefile-sync: -1\n"  # never write the zone back
        "    journal-content: none\n"
        "zone:\n" + zone_lines
    )
    return conf


def pinning(server_cpus: int) -> tuple[str | None, str | None]:
    """(server CPU list, load generator CPU list) for taskset, or (None, None) when the cores do not suffice."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < server_cpus + 1:
        return None, None
    return ",".join(map(str, cpus[:server_cpus])), ",".join(map(str, cpus[server_cpus:]))


def taskset(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def ready(port: int, probes: list[tuple[str, str]]) -> bool:
    """Answers every probe with data (not just listening: Knot loads zones and dnsd syncs after binding)."""
    for name, qtype in probes:
        reply = common.query(port, name, qtype, timeout=0.5, tries=1)
        if reply is None or reply.rcode != "NOERROR" or not reply.answers:
            return False
    return True


def compare(sample: list[tuple[str, str]], replies: list[Reply | None], reference: list[Reply | None] | None) -> dict[str, Any]:
    mismatches = []
    if reference is not None:
        for (name, qtype), got, want in zip(sample, replies, reference, strict=True):
            if got != want and (got is None or want is None or (got.rcode, got.answers) != (want.rcode, want.answers)):
                mismatches.append(f"{name} {qtype}: {want.summary() if want else 'timeout'} vs "
                                  f"{got.summary() if got else 'timeout'}")
    answered = [r for r in replies if r is not None]
    return {
        "queries": len(sample),
        "timeouts": len(replies) - len(answered),
        "truncated": sum(r.tc for r in answered),
        "mean_response_bytes": round(sum(r.size for r in answered) / len(answered), 1) if answered else None,
        "rcodes": dict(Counter(r.rcode for r in answered)),
        "mismatches": len(mismatches),
        "mismatch_examples": mismatches[:5],
    }


# ---------------------------------------------------------------- load

_STATS = {
    "sent": r"Queries sent:\s+(\d+)", "completed": r"Queries completed:\s+(\d+)", "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)", "mean": r"Average Latency \(s\):\s+([\d.]+)",
    "stdev": r"Latency StdDev \(s\):\s+([\d.]+)", "run_time": r"Run time \(s\):\s+([\d.]+)",
    "response_bytes": r"Average packet size:\s+request \d+, response (\d+)",
}


def dnsperf(cmd: list[str], out: Path, port: int, pgid: int, wall: float, cpus: tuple[list[int], list[int]]) -> Run:
    """Run dnsperf (output to a file: -v writes a line per query), with the CPU use of everyone during it.

    ``cpus``: the server's and dnsperf's pinned CPUs (empty lists when not pinned), to tell which core was full.
    """
    run = Run(cmd=cmd)
    per_cpu0 = common.per_cpu_busy()
    (busy0, steal0), server0, gen0, drops0 = (common.system_cpu_seconds(), common.group_cpu_seconds(pgid),
                                              common.children_cpu_seconds(), common.udp_drops(port))
    start = time.monotonic()
    with open(out, "wb") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=wall, start_new_session=True, check=False)
    elapsed = time.monotonic() - start
    server = common.group_cpu_seconds(pgid) - server0
    gen = common.children_cpu_seconds() - gen0
    busy, steal = common.system_cpu_seconds()
    drops, per_cpu = common.udp_drops(port), common.per_cpu_busy()
    text = out.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"dnsperf exited with {proc.returncode}: {text[-1500:]}")
    found = {key: re.search(pattern, text) for key, pattern in _STATS.items()}
    if not found["qps"]:
        raise RuntimeError(f"cannot parse dnsperf output: {text[-1500:]}")
    run.sent, run.completed, run.lost = (int(found[k].group(1)) if found[k] else 0 for k in ("sent", "completed", "lost"))
    run.qps = float(found["qps"].group(1))
    run.mean_ms = float(found["mean"].group(1)) * 1000 if found["mean"] else math.nan
    run.stdev_ms = float(found["stdev"].group(1)) * 1000 if found["stdev"] else math.nan
    run.run_time = float(found["run_time"].group(1)) if found["run_time"] else 0.0
    run.response_bytes = int(found["response_bytes"].group(1)) if found["response_bytes"] else 0
    # The server's CPU per second of load: over dnsperf's run time, not the wall time around it (dnsperf's
    # start-up, and up to -t seconds waiting for late answers at the end, when the server is idle). dnsperf
    # itself keeps polling through that tail, so its share is over the wall time.
    window = run.run_time if 0 < run.run_time <= elapsed else elapsed
    run.server_cpu, run.loadgen_cpu = server / window, gen / elapsed
    run.other_cpu = max(0.0, (busy - busy0 - server - gen) / elapsed)
    run.steal_cpu = (steal - steal0) / elapsed
    run.kernel_drops = drops - drops0
    server_cpus, gen_cpus = cpus
    run.server_cores_busy = common.busy_seconds(per_cpu0, per_cpu, server_cpus or sorted(per_cpu)) / (
        window * len(server_cpus or per_cpu))
    run.loadgen_cores_busy = common.busy_seconds(per_cpu0, per_cpu, gen_cpus or sorted(per_cpu)) / (
        (elapsed if gen_cpus else window) * len(gen_cpus or per_cpu))
    return run


def udpprobe(binary: Path, port: int, queries: Path, rate: float, seconds: float, out: Path,
             gen_cpus: str | None, clients: int) -> Probe:
    """Run bench/udpprobe.c's binary; percentiles over every query sent (a lost one is infinitely slow)."""
    cmd = taskset(gen_cpus, [str(binary), str(port), str(queries), str(int(rate)), f"{seconds:g}", str(out), str(clients)])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True, check=False)
    found = re.search(r"sent (\d+) answered (\d+) late_sends (\d+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"udpprobe exited with {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    probe = Probe(cmd=cmd, rate=rate, sent=int(found[1]), answered=int(found[2]), late_sends=int(found[3]))
    values = array.array("f")
    values.frombytes(out.read_bytes())
    ranked = sorted(math.inf if v < 0 else float(v) for v in values)
    probe.p50_ms, probe.p99_ms, probe.p999_ms, probe.max_ms = (quantile(ranked, q) for q in (0.50, 0.99, 0.999, 1.0))
    return probe


def wait_quiet(pgid: int, limit: float, threshold: float = 0.2, window: float = 0.5) -> float:
    """Wait (at most ``limit`` s) until other processes use < ``threshold`` cores; return the last load seen.

    The machine is shared: a test suite running next to us steals the server's or dnsperf's core.
    """
    deadline = time.monotonic() + limit
    waited = False
    while True:
        busy0, ours0, kids0 = common.system_cpu_seconds()[0], common.group_cpu_seconds(pgid), common.children_cpu_seconds()
        time.sleep(window)
        ours = common.group_cpu_seconds(pgid) - ours0 + common.children_cpu_seconds() - kids0
        other = max(0.0, (common.system_cpu_seconds()[0] - busy0 - ours) / window)
        if other < threshold or time.monotonic() >= deadline:
            if waited:
                log(f"other processes use {other:.2f} cores" + (" (waited for quiet)" if other < threshold else
                                                                 f"; gave up waiting after {limit:g}s"))
            return other
        waited = True


def percentiles(run: Run, out: Path, skip: int = 0) -> None:
    """p50/p99/p99.9 over the queries of a -v run after the first ``skip`` (lines come in completion
    order); a timed-out query counts as infinitely slow."""
    with open(out, errors="replace") as f:
        latencies, timeouts = common.dnsperf_latencies(f, skip)
    ranked = sorted(latencies) + [math.inf] * timeouts
    run.timeouts = timeouts
    run.p50_ms, run.p99_ms, run.p999_ms = (quantile(ranked, q) for q in (0.50, 0.99, 0.999))
    run.p99_answered_ms = quantile(sorted(latencies), 0.99)


def perf_cmd(port: int, queries: Path, seconds: float, args: argparse.Namespace, gen_cpus: str | None,
             rate: float | None = None, once: bool = False) -> list[str]:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", f"{seconds:g}",
           "-c", str(args.clients), "-T", "1", "-t", str(DNSPERF_TIMEOUT)]
    if args.tcp:
        cmd += ["-m", "tcp"]  # -c connections, each pipelining its share of the -q queries in flight
    if once:
        cmd += ["-n", "1"]  # one pass over the query file, if the time limit allows
    if rate is None:
        cmd += ["-q", str(args.outstanding)]
    else:
        # Open loop: slots for 200 ms of queries, so dnsperf keeps its schedule through a stall of the
        # server instead of waiting for answers (coordinated omission would hide the stall from p99).
        cmd += ["-Q", str(int(rate)), "-q", str(max(1000, int(rate * 0.2))), "-v"]
    return taskset(gen_cpus, cmd)


# ---------------------------------------------------------------- one server

def p99_key(run: Run) -> tuple[float, float]:
    return (run.p99_ms, run.lost_pct)


def bench_server(server: Server, procs: Procs, port: int, tmp: Path, queries: Path, args: argparse.Namespace,
                 probes: list[tuple[str, str]], sample: list[tuple[str, str]], reference: list[Reply | None] | None,
                 common_rate: float | None, result: Result, round_no: int) -> list[Reply | None]:
    """One round on one server: start, check answers, warm up, max run, fixed-rate run, stop. Fills ``result``."""
    server_cpus, gen_cpus = pinning(server.cpus)
    pinned = ([int(c) for c in server_cpus.split(",")] if server_cpus else [],
              [int(c) for c in gen_cpus.split(",")] if gen_cpus else [])
    result.pinned = f"server on CPU {server_cpus}, dnsperf on CPU {gen_cpus}" if server_cpus else "none"
    tag = f"{server.key}.r{round_no}"
    log_path = tmp / f"{tag}.log"
    rounds = f" (round {round_no}/{args.repeat})" if args.repeat > 1 else ""
    log(f"{server.label}: starting on 127.0.0.1:{port}{rounds}; pinning: {result.pinned}")
    proc = procs.start(taskset(server_cpus, server.argv), log_path, cwd=ROOT, env=server.env)
    try:
        asked = time.monotonic()
        startup = common.wait_until(lambda: ready(port, probes), 120, "server", proc, log_path) - asked
        result.startup_s.append(round(startup, 2))
        replies = [common.query(port, name, qtype) for name, qtype in sample]
        check = compare(sample, replies, reference)
        log(f"{server.label}: answering after {startup:.1f}s; sample of {check['queries']}: {check['rcodes']}, "
            f"{check['truncated']} truncated, {check['timeouts']} timeouts, mean reply {check['mean_response_bytes']} B")
        if check["mismatches"] or check["timeouts"] or check["truncated"]:
            log(f"WARNING: {server.label} differs from dnsd on {check['mismatches']}/{check['queries']} sample queries "
                f"({check['timeouts']} timeouts, {check['truncated']} truncated): " + "; ".join(check["mismatch_examples"]))
        if not result.check or check["mismatches"] > result.check["mismatches"]:
            result.check = check
        wall = args.duration + DNSPERF_TIMEOUT + 30
        # Warm-up, unmeasured, the same for all: one pass over the query file (at most WARMUP s), so dnsd's
        # reply cache holds every name, as in a long-running server (Knot and the naive server have no cache).
        dnsperf(perf_cmd(port, queries, min(WARMUP, args.duration), args, gen_cpus, once=True),
                tmp / f"{tag}.warmup.txt", port, proc.pid, wall, pinned)

        result.quiet_before.append(round(wait_quiet(proc.pid, args.quiet_wait), 2))
        log(f"{server.label}: max throughput, {args.duration:g}s, {args.outstanding} outstanding")
        run = dnsperf(perf_cmd(port, queries, args.duration, args, gen_cpus), tmp / f"{tag}.max.txt", port, proc.pid, wall,
                      pinned)
        log(f"{server.label}: {run.qps:,.0f} qps, mean {run.mean_ms:.2f} ms, lost {run.lost_pct:.2f}%; cores used: "
            f"server {run.server_cpu:.2f}, dnsperf {run.loadgen_cpu:.2f}, others {run.other_cpu:.2f}")
        result.max_runs.append(run)
        result.max = max(result.max_runs, key=lambda r: r.qps)  # best round: other load only ever lowers throughput

        if result.fixed_rate is None:  # chosen in the first round, then kept: every round at the same load
            rate = common_rate if common_rate is not None else run.qps / 2
            if run.qps < rate * 1.1:
                # It cannot sustain the common rate: measuring there would only show its queue overflowing.
                result.overloaded_at_common_rate = True
                rate = run.qps / 2
            result.fixed_rate = rate
        if result.fixed_rate >= 1:
            result.quiet_before.append(round(wait_quiet(proc.pid, args.quiet_wait), 2))
            log(f"{server.label}: latency at {result.fixed_rate:,.0f} qps, {args.duration:g}s")
            fixed_out = tmp / f"{tag}.fixed.txt"
            fixed = dnsperf(perf_cmd(port, queries, args.duration, args, gen_cpus, result.fixed_rate), fixed_out,
                            port, proc.pid, wall, pinned)
            fixed.rate = result.fixed_rate
            percentiles(fixed, fixed_out, skip=int(result.fixed_rate * SETTLE_SECONDS))
            log(f"{server.label}: p50 {ms(fixed.p50_ms)} ms, p99 {ms(fixed.p99_ms)} ms (answered only: "
                f"{ms(fixed.p99_answered_ms)} ms), lost {fixed.lost_pct:.2f}%; "
                f"others used {fixed.other_cpu:.2f} cores")
            result.fixed_runs.append(fixed)
            result.fixed = min(result.fixed_runs, key=p99_key)  # least disturbed round, as for throughput

            result.quiet_before.append(round(wait_quiet(proc.pid, args.quiet_wait), 2))
            probe = udpprobe(tmp / "udpprobe", port, queries, result.fixed_rate, args.duration, tmp / f"{tag}.probe.f32",
                             gen_cpus, args.clients)
            log(f"{server.label}: udpprobe at {result.fixed_rate:,.0f} qps: p50 {ms(probe.p50_ms)} ms, p99 "
                f"{ms(probe.p99_ms)} ms, p99.9 {ms(probe.p999_ms)} ms, max {ms(probe.max_ms)} ms, lost "
                f"{probe.lost_pct:.2f}%, {probe.late_sends} sent late by the probe")
            result.probe_runs.append(probe)
            result.probe = min(result.probe_runs, key=lambda p: (p.p99_ms, p.lost_pct))
        return replies
    finally:
        procs.stop(proc)


# ---------------------------------------------------------------- report

def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def bound(result: Result) -> str:
    """Which side's core was full during the max run (whoever filled it: "others" says how much was not ours)."""
    m = result.max
    if m is None:
        return "-"
    if result.pinned == "none":  # both fractions are of all CPUs
        return "all CPUs" if m.server_cores_busy >= 0.95 else "none"
    if m.server_cores_busy >= 0.95:
        return "server"
    return "dnsperf" if m.loadgen_cores_busy >= 0.95 else "none"


def table(results: list[Result], common_rate: float | None, given_rate: bool) -> str:
    """Three column groups: max throughput | latency at a fixed rate | CPU (cores) during the max run."""
    head = ("server", "QPS", "QPS/core", "mean ms", "lost %", "|", "rate", "mean ms", "p50 ms", "p99 ms", "p99 answ", "lost %",
            "|", "p50 ms", "p99 ms", "p99.9 ms", "lost %", "|", "server", "dnsperf", "others", "bound")
    rows = [head]
    errors = []
    for r in results:
        m, f, p = r.max, r.fixed, r.probe
        if m is None:
            rows.append((r.label, "failed", *[""] * (len(head) - 2)))
            errors.append(f"{r.label}: {r.error}")
            continue
        rate = "-" if f is None or f.rate is None else f"{f.rate:,.0f}" + ("*" if r.overloaded_at_common_rate else "")
        rows.append((
            r.label, f"{m.qps:,.0f}", "-" if math.isnan(m.qps_per_core) else f"{m.qps_per_core:,.0f}", ms(m.mean_ms),
            f"{m.lost_pct:.2f}", "|", rate,
            *((ms(f.mean_ms), ms(f.p50_ms), ms(f.p99_ms), ms(f.p99_answered_ms), f"{f.lost_pct:.2f}") if f else ("-",) * 5),
            "|", *((ms(p.p50_ms), ms(p.p99_ms), ms(p.p999_ms), f"{p.lost_pct:.2f}") if p else ("-",) * 4),
            "|", f"{m.server_cpu:.2f}", f"{m.loadgen_cpu:.2f}", f"{m.other_cpu:.2f}", bound(r),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    # Group titles over the columns, aligned on the "|" separators.
    bars = [i for i, c in enumerate(lines[0]) if c == "|"]
    at_rate = (f"at {common_rate:,.0f} qps ({'--rate' if given_rate else 'dnsd max / 2'})" if common_rate
               else "at a fixed rate")
    groups = f"{'':{widths[0]}}  max throughput (closed loop)"
    groups = groups.ljust(bars[0]) + f"| dnsperf latency {at_rate}"
    groups = groups.ljust(bars[1]) + "| udpprobe, same rate"
    groups = groups.ljust(bars[2]) + "| CPU cores, max run"
    return "\n".join([groups, *lines[:1], "-" * len(lines[0]), *lines[1:], *errors])


def ratios(results: list[Result]) -> dict[str, float]:
    qps = {r.key: r.max.qps for r in results if r.max and r.max.qps > 0}
    per_core = {r.key: r.max.qps_per_core for r in results if r.max and not math.isnan(r.max.qps_per_core)}
    # The latency runs: the same offered rate for every server (unless one could not sustain it), by round.
    fixed = {r.key: [f.qps_per_core for f in r.fixed_runs] for r in results if r.fixed_runs and not r.overloaded_at_common_rate}
    out = {}
    for ours, other in (("dnsd", "knot"), ("dnsd", "naive"), ("floor", "knot")):
        if ours in qps and other in qps:
            out[f"{ours}/{other}"] = round(qps[ours] / qps[other], 3)
        if ours in per_core and other in per_core:
            out[f"{ours}/{other} per core"] = round(per_core[ours] / per_core[other], 3)
        if ours in fixed and other in fixed:
            # Round by round (the rounds alternate the servers), the median: below saturation, where a
            # batch's fixed cost weighs more and neither side waits for dnsperf.
            paired = [a / b for a, b in zip(fixed[ours], fixed[other], strict=False) if not (math.isnan(a) or math.isnan(b))]
            if paired:
                out[f"{ours}/{other} per core at the fixed rate"] = round(statistics.median(paired), 3)
    return out


def result_dict(result: Result) -> dict[str, Any]:
    """asdict() plus the derived figures of every run."""
    def run(r: Run | None) -> dict[str, Any] | None:
        return None if r is None else {**asdict(r), "lost_pct": r.lost_pct, "qps_per_core": r.qps_per_core}

    def probe(p: Probe | None) -> dict[str, Any] | None:
        return None if p is None else {**asdict(p), "lost_pct": p.lost_pct}

    out = asdict(result)
    out.update(max=run(result.max), fixed=run(result.fixed), max_runs=[run(r) for r in result.max_runs],
               fixed_runs=[run(r) for r in result.fixed_runs], probe=probe(result.probe),
               probe_runs=[probe(p) for p in result.probe_runs])
    return out


def plain(value: Any) -> Any:
    """Strict JSON: NaN -> null, infinity (a timed-out percentile) -> "timeout"."""
    if isinstance(value, float):
        return None if math.isnan(value) else "timeout" if math.isinf(value) else round(value, 4)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, str | int | bool) else str(value)


def source_digest() -> str:
    """The dnsd code measured (the tree changes under us): sha256 over dnsd/**/*.py."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "dnsd").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(r"[Vv]ersion\s+(\S+)|(\d+\.\d+\.\d+)", out)
    return (match.group(1) or match.group(2)) if match else out.strip()[:40]


def meta(args: argparse.Namespace) -> dict[str, Any]:
    # Read-only git, without the optional index lock: others commit in this tree while we run.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, env=env).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "dnsd"],
                           capture_output=True, text=True, env=env).stdout.strip()
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_head": git, "dnsd_tree_modified": bool(dirty), "dnsd_source_sha256_16": source_digest(),
        "cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu_model, "kernel": platform.release(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(), "dnsperf": tool_version(["dnsperf", "-h"]),
        "knotd": tool_version(["knotd", "--version"]),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/qps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured dnsperf run (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="dnsd --workers for the main row (default 1)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c: client sockets (source ports) (default 4)")
    parser.add_argument("--outstanding", type=int, default=200,
                        help="dnsperf -q for the max-throughput run (default 200: below the ~270 small datagrams "
                             "a default 208 KiB receive buffer holds, so a saturated server queues instead of dropping)")
    parser.add_argument("--rate", type=float,
                        help="fixed rate (qps) of the latency run for every server (default: half of dnsd's max QPS); "
                             "a fixed number makes p99 comparable across commits")
    parser.add_argument("--scaling", action="store_true", help="also run dnsd with --workers 2")
    parser.add_argument("--tcp", action="store_true",
                        help="queries over TCP: --clients connections, pipelined (as node-local caches reach the "
                             "cluster DNS); every server is measured so")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all servers (each restarts the server); the best run of each counts (default 1)")
    parser.add_argument("--quiet-wait", type=float, default=8,
                        help="before each measured run, wait up to this many seconds for other processes to go "
                             "below 0.2 cores (default 8; 0: do not wait)")
    parser.add_argument("--servers", default="dnsd,knot,naive",
                        help="comma-separated subset of dnsd,knot,floor,naive (floor: bench/floor_server.py, the "
                             "interpreter's floor for a UDP hit path; not run by default)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="also run dnsd with these extra flags, as its own row (repeatable), e.g. "
                             "--variant 'no-top=--no-top-talkers' --variant 'log=--log-queries --log-queries-rate 0'")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--query-count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=BENCH / "out" / "qps.json", help="results file (default bench/out/qps.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (manifests, zones, logs, dnsperf output)")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    try:
        args.variants = {name.strip(): shlex.split(flags) for name, flags in (v.split("=", 1) for v in args.variant)}
    except ValueError:
        parser.error("--variant takes NAME=FLAGS")
    if unknown := set(args.servers) - {"dnsd", "knot", "floor", "naive"}:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.rate is not None and args.rate < 1:
        parser.error("--rate must be at least 1")
    if args.duration <= 0 or min(args.clients, args.outstanding, args.workers, args.repeat) < 1 or args.quiet_wait < 0:
        parser.error("--duration, --clients, --outstanding, --workers and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.ensure_packages({"dnsperf": "dnsperf", "knotd": "knot", "taskset": "util-linux", "gcc": "gcc"})
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below ends every server we started. SIGINT is set
    # explicitly: a shell starting us in the background (cmd &) would have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    started = time.monotonic()
    info = meta(args)
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-qps-"))
    procs = Procs()
    ok = False
    try:
        cluster = gen_cluster.generate(args.services, args.endpoints, seed=args.seed)
        gen_cluster.write_manifests(cluster, tmp / "cluster", args.seed)
        query_lines = gen_cluster.queries(cluster, args.query_count, args.seed)
        queries = tmp / "queries.txt"
        queries.write_text("\n".join(query_lines) + "\n")
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp / "udpprobe"), str(BENCH / "udpprobe.c")], check=True,
                       timeout=120)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        dnsd_records = subprocess.run([sys.executable, "-m", "dnsd", "records", "--manifests", str(tmp / "cluster")],
                                      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if dnsd_records.returncode != 0:
            raise RuntimeError(f"dnsd records failed: {dnsd_records.stderr[-2000:]}")
        records = dnsd_records.stdout.splitlines()
        (tmp / "records.txt").write_text(dnsd_records.stdout)
        (tmp / "zones").mkdir()
        zones = split_zones(records, tmp / "zones")
        mix = expected_mix(records, query_lines)
        info["cluster"] = {"services": len(cluster), "endpoints": sum(len(s.endpoints) for s in cluster),
                           "records": len(records), "queries": len(query_lines),
                           "expected_mix_pct": {k: round(100 * v / len(query_lines), 1) for k, v in sorted(mix.items())}}
        log(f"{len(cluster)} services, {info['cluster']['endpoints']} endpoints, {len(records)} records; "
            f"query mix {info['cluster']['expected_mix_pct']} (in {tmp})")

        # Readiness probes: a Service address, a PTR (the reverse zone loaded) and each apex SOA.
        first = {rtype: next(line.split()[0] for line in records if line.split()[3] == rtype) for rtype in ("A", "PTR")}
        probes = [(first["A"], "A"), (first["PTR"], "PTR"), *((apex, "SOA") for apex in zones)]
        sample = [(name, qtype) for name, qtype in (line.split() for line in
                  random.Random(args.seed).sample(query_lines, min(SAMPLE, len(query_lines))))]

        plan = [s for s in ("dnsd", "knot", "floor", "naive") if s in args.servers]
        plan[1:1] = [f"dnsd:{name}" for name in args.variants]  # beside plain dnsd, for the same conditions
        if args.scaling and args.workers != 2 and "dnsd" in args.servers:
            plan.append("dnsd-w2")
            if len(os.sched_getaffinity(0)) < 3:
                # Too few cores to pin two workers apart from dnsperf: also run them on one core, pinned
                # apart from dnsperf. Against the 1-worker row that is the cost of the process model
                # itself (steering, the shared index, the second process), with no core gained.
                plan.append("dnsd-w2-1cpu")
        reference: list[Reply | None] | None = None
        common_rate: float | None = args.rate
        by_key: dict[str, Result] = {}

        def make_server(key: str, port: int) -> Server:
            if key.startswith("dnsd:"):
                name = key.partition(":")[2]
                return Server(key, f"dnsd {name} ({' '.join(args.variants[name])})",
                              [sys.executable, "-m", "dnsd", "serve", "--manifests", str(tmp / "cluster"), "--port", str(port),
                               "--address", "127.0.0.1", "--workers", str(args.workers), "--http-address", "",
                               "--upstream", "none", *args.variants[name]], args.workers, env)
            if key in ("dnsd", "dnsd-w2", "dnsd-w2-1cpu"):
                workers = args.workers if key == "dnsd" else 2
                cpus = 1 if key == "dnsd-w2-1cpu" else workers
                label = f"dnsd ({workers} worker{'s' if workers > 1 else ''}{', on 1 CPU' if cpus < workers else ''})"
                return Server(key, label,
                              [sys.executable, "-m", "dnsd", "serve", "--manifests", str(tmp / "cluster"), "--port", str(port),
                               "--address", "127.0.0.1", "--workers", str(workers), "--http-address", "",
                               "--upstream", "none"], cpus, env)
            if key == "knot":
                return Server(key, "knot (1 udp worker)", ["knotd", "-c", str(knot_config(tmp, port, zones))], 1)
            if key == "floor":
                return Server(key, "python floor", [sys.executable, str(BENCH / "floor_server.py"), "--manifests",
                                                    str(tmp / "cluster"), "--queries", str(queries), "--port", str(port)], 1, env)
            return Server(key, "naive dnslib", [sys.executable, str(BENCH / "naive_server.py"), "--records",
                                                str(tmp / "records.txt"), "--port", str(port)], 1, env)

        # Rounds interleave the servers (one at a time), so slow drifts in other load hit all of them alike.
        for round_no in range(1, args.repeat + 1):
            for key in plan:
                if key in by_key and by_key[key].error:
                    continue  # failed in an earlier round
                port = common.free_port()
                server = make_server(key, port)
                result = by_key.setdefault(key, Result(key, server.label, "", server.cpus))
                try:
                    replies = bench_server(server, procs, port, tmp, queries, args, probes, sample, reference, common_rate,
                                           result, round_no)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    log(f"ERROR: {server.label}: {exc} (logs in {tmp})")
                    result.error = str(exc).splitlines()[0]
                    continue
                if key == "dnsd" and round_no == 1:
                    reference = replies  # everyone is compared with dnsd's answers
                    if result.max and result.max.qps > 0 and args.rate is None:
                        common_rate = result.max.qps / 2
        results = [by_key[key] for key in plan if key in by_key]

        report = table(results, common_rate, args.rate is not None)
        rat = ratios(results)
        print()
        print(report)
        print()
        print("  ".join(f"{k} = {v:.3f}x" for k, v in rat.items()) or "(no ratios: they need dnsd and another server)")
        notes = []
        if any(r.overloaded_at_common_rate for r in results):
            notes.append("* cannot sustain the common rate: measured at half of its own max instead")
        if any(r.max and r.max.other_cpu > 0.1 for r in results):
            notes.append("other processes used CPU during the runs (column 'others', in cores): numbers are noisy")
        if stolen := [f"{r.label} {r.max.steal_cpu:.2f}" for r in results if r.max and r.max.steal_cpu > 0.05]:
            notes.append(f"the hypervisor took CPU (steal, cores) during the max run of: {', '.join(stolen)}")
        if any(r.max and r.max.loadgen_cpu > 0.9 for r in results):
            notes.append("dnsperf used ~a full core on a run: that row may be load-generator bound (a lower bound)")
        for note in notes:
            print(f"note: {note}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": info, "common_rate": common_rate, "ratios": rat, "table": report,
                   "results": [result_dict(r) for r in results], "elapsed_s": round(time.monotonic() - started, 1)}
        args.json.write_text(json.dumps(plain(payload), indent=2) + "\n")
        log(f"results in {args.json} ({payload['elapsed_s']}s)")
        ok = all(r.error is None for r in results)
        return 0 if ok else 1
    except (KeyboardInterrupt, SystemExit):
        ok = True  # interrupted: nothing to debug, do not leave the temp dir behind
        raise
    finally:
        procs.stop_all()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (manifests, zones, server logs, dnsperf output)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
