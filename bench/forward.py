"""Forwarding benchmarks: dnsd in front of Knot DNS on loopback. See bench/README.md.

  bench/forward [--duration 8] [--repeat 3] [--flood 200000] [--flood-seconds 60] [--cache-size 100000]
                [--probes 2000] [--skip-flood | --only-flood | --only-cached] [--shed-after MS] [--autopath]

1. Cached external names vs cluster names, in the same run: dnsperf against dnsd for a
   file of cluster names, then a file of external names already in the forward cache,
   then the cluster file again. Target: external >= 80% of cluster QPS. With --unbound,
   unbound too (Debian's, one thread, forward-zone "." to the same Knot), asked the same
   warm external names in the same rounds: dnsd / unbound per core. The servers are pinned
   to CPU 0 and dnsperf to CPU 1 when there are two CPUs.
2. Uncached forwarding latency: a one-thread probe asks unique names (never cached; Knot
   answers them from a wildcard) one at a time, alternating blocks straight to Knot and
   through dnsd. Added p50 = dnsd p50 - Knot p50. Target <= 0.3 ms.
3. Uncached forwarding throughput: dnsperf with unique names through dnsd.
4. Flood: --flood unique external names through dnsd (dnsperf, one pass, at most
   --flood-seconds) with --forward-cache-size --cache-size; dnsd's PSS before and after,
   cache entries, how many were forwarded (NOERROR) and how many shed (REFUSED), and the
   latency of cluster names asked by a probe during the flood vs before it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import common
from bench.common import Procs, log, wire_query
from bench.qps import knot_config, pinning, taskset

ROOT = Path(__file__).resolve().parent.parent
ZONE = """$ORIGIN example.test.
$TTL 3600
@ SOA ns.example.test. hostmaster.example.test. 1 7200 900 86400 60
@ NS ns
ns A 127.0.0.1
* A 192.0.2.1
"""
CLUSTER = ["web.default.svc.cluster.local A", "db.shop.svc.cluster.local A", "_http._tcp.web.default.svc.cluster.local SRV",
           "cart.shop.svc.cluster.local A", "dns-version.cluster.local TXT"]


def pss_kb(pid: int) -> int:
    """PSS of a process and its children (dnsd's workers), from smaps_rollup."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


GEN_CPUS: str | None = None  # dnsperf's CPUs when the servers are pinned apart


def unbound_config(tmp: Path, port: int, upstream: int) -> Path:
    """unbound as a node cache: one thread, everything forwarded to ``upstream``, no DNSSEC, nothing on disk."""
    conf = tmp / "unbound.conf"
    conf.write_text(
        "server:\n"
        f"    interface: 127.0.0.1@{port}\n    port: {port}\n    num-threads: 1\n"
        f"    directory: \"{tmp}\"\n    chroot: \"\"\n    username: \"\"\n    pidfile: \"{tmp / 'unbound.pid'}\"\n"
        "    use-syslog: no\n    logfile: \"\"\n    verbosity: 0\n    do-not-query-localhost: no\n"
        "    access-control: 127.0.0.0/8 allow\n    module-config: \"iterator\"\n"
        "    local-zone: \"test.\" nodefault\n    msg-cache-size: 64m\n    rrset-cache-size: 64m\n"
        "forward-zone:\n    name: \".\"\n"
        f"    forward-addr: 127.0.0.1@{upstream}\n"
    )
    return conf


def dnsperf(port: int, queries: Path, seconds: float | None, once: bool = False, outstanding: int = 100,
            rate: int = 0) -> dict[str, float]:
    cmd = taskset(GEN_CPUS, ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-q", str(outstanding),
                             "-t", "2", "-c", "4"])
    if rate:
        cmd += ["-Q", str(rate)]
    cmd += (["-n", "1"] if once else []) + (["-l", f"{seconds:g}"] if seconds else [])  # -n and -l: whichever ends first
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=(seconds or 0) + 600).stdout
    found = {k: float(v) for k, v in re.findall(r"(Queries (?:per second|sent|completed|lost)):\s+([\d.]+)", out)}
    codes = re.search(r"Response codes:\s+(.*)", out)  # e.g. "NOERROR 9000 (90.00%), REFUSED 1000 (10.00%)"
    for name, n in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1) if codes else ""):
        found[name] = float(n)
    run = re.search(r"Run time \(s\):\s+([\d.]+)", out)
    found["seconds"] = float(run.group(1)) if run else float(seconds or 0)
    if "Queries per second" not in found:
        raise RuntimeError(out[-1500:])
    return found


def probe(port: int, names: list[str], timeout: float = 2.0) -> list[float]:
    """One query at a time, A type; seconds per answer (lost ones left out)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for i, name in enumerate(names):
            qid = i & 0xFFFF
            q = wire_query(qid, name)
            start = time.perf_counter()
            s.sendto(q, ("127.0.0.1", port))
            try:
                while int.from_bytes(s.recv(4096)[:2], "big") != qid:
                    pass
            except TimeoutError:
                continue
            out.append(time.perf_counter() - start)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


def metric(http: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        body = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per dnsperf run")
    parser.add_argument("--flood", type=int, default=200_000, help="unique external names in the flood")
    parser.add_argument("--flood-seconds", type=float, default=60.0, help="the flood stops after this long")
    parser.add_argument("--only-flood", action="store_true", help="only part 4")
    parser.add_argument("--shed-after", type=int, default=None, help="dnsd --shed-after (ms); default dnsd's")
    parser.add_argument("--cache-size", type=int, default=100_000, help="dnsd --forward-cache-size")
    parser.add_argument("--probes", type=int, default=2000, help="queries per latency probe")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the cached/cluster comparison")
    parser.add_argument("--flood-rate", type=int, default=0, help="flood queries/s offered (0: as fast as dnsd answers)")
    parser.add_argument("--skip-flood", action="store_true", help="only parts 1-3")
    parser.add_argument("--autopath", action="store_true", help="dnsd with --autopath; part 1 adds warm autopath hits")
    parser.add_argument("--only-cached", action="store_true", help="only part 1")
    parser.add_argument("--unbound", action="store_true", help="part 1 also measures unbound on the same warm names")
    args = parser.parse_args()
    common.ensure_packages({"dnsperf": "dnsperf", "knotd": "knot", **({"unbound": "unbound"} if args.unbound else {})})
    global GEN_CPUS
    server_cpus, GEN_CPUS = pinning(1)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-forward-"))
    try:
        knot_port, port, http = common.free_port(), common.free_port(), common.free_port()
        (tmp / "example.test.zone").write_text(ZONE)
        knot = procs.start(["knotd", "-c", str(knot_config(tmp, knot_port, {"example.test": tmp / "example.test.zone"}))],
                           tmp / "knot.log")
        dnsd = procs.start(taskset(server_cpus, [
                            sys.executable, "-m", "dnsd", "serve", "--port", str(port), "--address", "127.0.0.1",
                            "--workers", "1", "--http-address", f"127.0.0.1:{http}", "--upstream", f"127.0.0.1:{knot_port}",
                            "--forward-cache-size", str(args.cache_size),
                            *(["--shed-after", str(args.shed_after)] if args.shed_after is not None else []),
                            *(["--autopath", "--autopath-search", "example.test"] if args.autopath else [])]),
                           tmp / "dnsd.log", cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        common.wait_until(lambda: bool(probe(knot_port, ["x.example.test"], 0.3)), 20, "knot", knot)
        common.wait_until(lambda: bool(probe(port, ["web.default.svc.cluster.local"], 0.3)), 20, "dnsd", dnsd)
        args.unbound_port = None
        if args.unbound:
            args.unbound_port = common.free_port()
            unbound = procs.start(taskset(server_cpus, ["unbound", "-d", "-c", str(unbound_config(tmp, args.unbound_port,
                                                                                                   knot_port))]),
                                  tmp / "unbound.log")
            common.wait_until(lambda: bool(probe(args.unbound_port, ["x.example.test"], 0.3)), 20, "unbound", unbound)
        log(f"knot on {knot_port}, dnsd on {port} (pid {dnsd.pid}); machine load {os.getloadavg()[0]:.2f}")

        tag = int(time.time())
        if not args.only_flood:
            cached_and_uncached(args, port, http, knot_port, tmp, tag)
        if args.skip_flood or args.only_cached:
            return 0
        flood(args, port, http, dnsd.pid, tmp, tag)
        print(f"load average after: {os.getloadavg()[0]:.2f} (2 CPUs shared with other users)")
    finally:
        procs.stop_all()
    return 0


def cached_and_uncached(args: argparse.Namespace, port: int, http: int, knot_port: int, tmp: Path, tag: int) -> None:
    # 1. cached external vs cluster
    cluster = tmp / "cluster.txt"
    cluster.write_text("\n".join(CLUSTER * 200) + "\n")
    external = tmp / "external.txt"
    external.write_text("".join(f"c{i}.example.test A\n" for i in range(1000)))
    searched = tmp / "autopath.txt"
    searched.write_text("".join(f"c{i}.shop.svc.cluster.local A\n" for i in range(1000)))
    dnsperf(port, external, None, once=True)  # warm the forward cache
    if args.unbound_port:
        dnsperf(args.unbound_port, external, None, once=True)
    dnsperf(port, cluster, None, once=True)
    if args.autopath:
        dnsperf(port, searched, None, once=True)
    cl: list[float] = []
    ex: list[float] = []
    ap: list[float] = []
    ub: list[float] = []
    sent = metric(http, "coredns_forward_requests_total")
    for _ in range(args.repeat):  # interleaved, best of each: the machine is shared
        cl.append(dnsperf(port, cluster, args.duration)["Queries per second"])
        ex.append(dnsperf(port, external, args.duration)["Queries per second"])
        if args.unbound_port:
            ub.append(dnsperf(args.unbound_port, external, args.duration)["Queries per second"])
        if args.autopath:
            ap.append(dnsperf(port, searched, args.duration)["Queries per second"])
    print(f"cached external names: {max(ex):,.0f} qps (runs {', '.join(f'{x:,.0f}' for x in ex)}); cluster names "
          f"{max(cl):,.0f} qps (runs {', '.join(f'{x:,.0f}' for x in cl)}); best/best {max(ex) / max(cl):.0%} "
          f"(target >= 80%)")
    if ub:
        print(f"unbound, the same cached external names: {max(ub):,.0f} qps (runs {', '.join(f'{x:,.0f}' for x in ub)}); "
              f"dnsd / unbound {max(ex) / max(ub):.2f}x (target >= 0.8x; both on one core)")
    if args.autopath:
        print(f"warm autopath hits (cN.shop.svc.cluster.local -> CNAME cN.example.test + A): {max(ap):,.0f} qps "
              f"(runs {', '.join(f'{x:,.0f}' for x in ap)}); vs cached external {max(ap) / max(ex):.0%}, "
              f"vs cluster {max(ap) / max(cl):.0%}; queries sent upstream during the runs: "
              f"{metric(http, 'coredns_forward_requests_total') - sent:,.0f}")
    if args.only_cached:
        return

    # 2. uncached latency, dnsd vs knot directly
    direct, via = [], []
    for block in range(10):
        n = args.probes // 10
        direct += probe(knot_port, [f"l{tag}-{block}-{i}.k.example.test" for i in range(n)])
        via += probe(port, [f"l{tag}-{block}-{i}.d.example.test" for i in range(n)])
    print(f"uncached latency p50: knot {pct(direct, .5):.3f} ms, via dnsd {pct(via, .5):.3f} ms; added "
          f"{pct(via, .5) - pct(direct, .5):.3f} ms (target <= 0.3 ms); p90 {pct(direct, .9):.3f} / {pct(via, .9):.3f} ms")

    # 3. uncached throughput
    unique = tmp / "unique.txt"
    unique.write_text("".join(f"u{i}.t{tag}.example.test A\n" for i in range(400_000)))
    run = dnsperf(port, unique, args.duration)
    shed = run.get("REFUSED", 0)
    print(f"uncached forwarding: {run.get('NOERROR', 0) / run['seconds']:,.0f} qps answered from upstream "
          f"({run['Queries per second']:,.0f} qps in all, {shed:.0f} shed with REFUSED, "
          f"{run.get('Queries lost', 0):.0f} lost of {run.get('Queries sent', 0):.0f})")



def flood(args: argparse.Namespace, port: int, http: int, pid: int, tmp: Path, tag: int) -> None:
    # 4. flood of unique names, cluster names probed meanwhile
    before = probe(port, [CLUSTER[0].split()[0]] * 500)
    pss0 = pss_kb(pid)
    halves = [tmp / "flood1.txt", tmp / "flood2.txt"]
    for half, path in enumerate(halves):
        with open(path, "w") as f:
            for i in range(half * args.flood // 2, (half + 1) * args.flood // 2):
                f.write(f"f{i}.x{tag}.example.test A\n")
    during: list[float] = []
    asked = [0]
    stop = threading.Event()

    def probing() -> None:
        while not stop.is_set():
            during.extend(probe(port, [CLUSTER[0].split()[0]] * 20, timeout=1.0))
            asked[0] += 20
            time.sleep(0.01)

    thread = threading.Thread(target=probing, daemon=True)
    thread.start()
    started = time.monotonic()
    pss, runs = [], []
    for path in halves:
        runs.append(dnsperf(port, path, args.flood_seconds / 2, once=True, rate=args.flood_rate))
        pss.append(pss_kb(pid))
    stop.set()
    thread.join()
    entries = metric(http, "coredns_cache_entries")
    sent = sum(r.get("Queries sent", 0) for r in runs)
    lost = sum(r.get("Queries lost", 0) for r in runs)
    qps = ", ".join(f"{r['Queries per second']:,.0f}" for r in runs)
    offered = f"offered at most {args.flood_rate:,}/s" if args.flood_rate else "as fast as dnsd answers"
    forwarded = sum(r.get("NOERROR", 0) for r in runs)
    shed = sum(r.get("REFUSED", 0) for r in runs)
    print(f"flood: {sent:,.0f} of {args.flood:,} unique names sent in {time.monotonic() - started:.0f} s ({qps} qps "
          f"per half, {offered}): {forwarded:,.0f} answered from upstream, {shed:,.0f} shed (REFUSED), {lost:.0f} "
          f"lost; dnsd counted {metric(http, 'dnsd_forward_shed_total'):,.0f} shed; cache entries {entries:,.0f} "
          f"(bound {args.cache_size:,}); dnsd PSS {pss0 / 1024:.0f} MB before, {pss[0] / 1024:.0f} MB after half, "
          f"{pss[1] / 1024:.0f} MB after all")
    print(f"cluster-name latency: before p50 {pct(before, .5):.3f} ms p99 {pct(before, .99):.3f} ms; during flood "
          f"p50 {pct(during, .5):.3f} ms p99 {pct(during, .99):.3f} ms p99.9 {pct(during, .999):.3f} ms "
          f"({len(during)} answered of {asked[0]} asked)")


if __name__ == "__main__":
    sys.exit(main())
