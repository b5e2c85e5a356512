"""Hostile traffic: dnsd next to Knot DNS under the same programs (issue 11's figures).

    python3 -m bench.hostile [--seconds 8] [--flood-rate 50000] [--servers dnsd,knot] [--mutations 20000]

Serves the example cluster (zones/) plus a headless Service of 200 endpoints (Knot gets the same records
from ``dnsd records``) on 127.0.0.1, one server at a time, one worker each, and measures, every load
bounded in time:

1. throughput, dnsperf closed loop: one cached positive name, then unique names (NXDOMAIN): the ratio;
2. a random-subdomain flood: bench/udpprobe.c sends a new name under shop.svc.cluster.local with every
   query at --flood-rate while a second udpprobe asks web.default.svc.cluster.local 50 times a second:
   the share of those answered within 50 ms, their p50/p99, and memory (PSS summed over the server's
   processes) before, at the peak, and after;
3. overload: udpprobe at twice the server's positive throughput from (1): p99 of the answered queries
   and the share answered (the rest was dropped);
4. amplification over the fuzz corpus (bench/fuzz_query.py's seeds, then --mutations mutations) over
   UDP: the largest reply/query ratio, and all reply bytes over all query bytes.

The machine is shared: the figures carry the load average at the start of each run.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import math
import os
import random
import re
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import common
from bench.common import Procs, log, wire_query
from bench.fuzz_query import BIG, dataplane, mutate, seeds
from bench.qps import knot_config, split_zones

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LEGIT = "web.default.svc.cluster.local"
FLOOD_SUFFIX = "shop.svc.cluster.local"


LEGIT_QUERY = wire_query(0, LEGIT)


def dnsperf_qps(port: int, queries: Path, seconds: float) -> float:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", f"{seconds:g}",
           "-c", "4", "-q", "200", "-T", "1", "-t", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"dnsperf: {out[-1500:]}")
    return float(found.group(1))


def udpprobe(binary: Path, port: int, queries: str, rate: float, seconds: float, out: Path,
             sockets: int = 4) -> subprocess.Popen[str]:
    return subprocess.Popen([str(binary), str(port), queries, str(int(rate)), f"{seconds:g}", str(out), str(sockets)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def probe_result(proc: subprocess.Popen[str], out: Path, seconds: float) -> tuple[int, int, list[float]]:
    """(sent, answered, sorted latencies in ms with inf for the unanswered)."""
    text, _ = proc.communicate(timeout=seconds + 30)
    found = re.search(r"sent (\d+) answered (\d+)", text)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"udpprobe: {text[-1500:]}")
    values = array.array("f")
    values.frombytes(out.read_bytes())
    return int(found[1]), int(found[2]), sorted(math.inf if v < 0 else float(v) for v in values)


def legit_probe(port: int, seconds: float, rate: float, out: list[float]) -> None:
    """The legitimate client: one query at a time, ``rate`` per second, latency in ms (inf: no answer in 1 s).

    A sleeping Python thread rather than a second udpprobe, which would busy-poll a core of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(1.0)
        started = time.monotonic()
        for i in range(int(seconds * rate)):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            qid = (i % 65535 + 1).to_bytes(2, "big")
            sent = time.monotonic()
            sock.send(qid + LEGIT_QUERY[2:])
            latency = math.inf
            try:
                while True:
                    if sock.recv(512)[:2] == qid:
                        latency = (time.monotonic() - sent) * 1000
                        break
            except TimeoutError:
                pass
            out.append(latency)


def quantile(ranked: list[float], q: float) -> float:
    return ranked[min(len(ranked) - 1, int(q * len(ranked)))] if ranked else math.nan


def amplification(port: int, packets: list[bytes]) -> tuple[float, float, int]:
    """Send each packet once over UDP (64 at a time, each from its own socket); (max ratio, total ratio, replies)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    for sock in socks:
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
    worst = total_in = total_out = replies = 0
    try:
        for start in range(0, len(packets), len(socks)):
            batch = packets[start : start + len(socks)]
            for sock, packet in zip(socks, batch, strict=False):
                sock.send(packet)
            deadline = time.monotonic() + 0.03
            got: dict[int, int] = {}
            while time.monotonic() < deadline and len(got) < len(batch):
                for i, sock in enumerate(socks[: len(batch)]):
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        reply = sock.recv(65535)
                        if reply[:2] == batch[i][:2]:  # not a late reply to an earlier batch
                            got[i] = len(reply)
                time.sleep(0.0005)
            for i, size in got.items():
                ratio = size / len(batch[i])
                worst = max(worst, ratio)
                total_in += len(batch[i])
                total_out += size
                replies += 1
            for sock in socks:  # late replies must not count for the next batch
                try:
                    while True:
                        sock.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    pass
    finally:
        for sock in socks:
            sock.close()
    return worst, total_out / max(1, total_in), replies


def slow_readers(port: int, pgid: int, count: int) -> tuple[float, float, float, int]:
    """``count`` TCP clients each pipeline 20 queries for a 3 KB answer and never read. PSS (MB) before,
    while they are connected, and 3 s after they closed; and how many were refused (over the limit)."""
    before = common.group_pss_kb(pgid)
    query = wire_query(0, "big.default.svc.cluster.local")
    framed = (len(query).to_bytes(2, "big") + query) * 20
    socks, refused = [], 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(framed)
            socks.append(sock)
        except OSError:
            refused += 1
            sock.close()
    time.sleep(2)
    during = common.group_pss_kb(pgid)
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, as a crashed client
        sock.close()
    time.sleep(3)
    return before / 1024, during / 1024, common.group_pss_kb(pgid) / 1024, refused


def answering(port: int) -> bool:
    reply = common.query(port, LEGIT, "A", timeout=0.5, tries=1)
    return reply is not None and reply.rcode == "NOERROR"


def measure(name: str, argv: list[str], port: int, procs: Procs, tmp: Path, args: argparse.Namespace,
            files: dict[str, Path], corpus: list[bytes], env: dict[str, str] | None) -> dict[str, object]:
    log_path = tmp / f"{name}.log"
    proc = procs.start(argv, log_path, cwd=ROOT, env=env)
    figures: dict[str, object] = {"server": name}
    try:
        common.wait_until(lambda: answering(port), 60, name, proc, log_path)
        for _ in range(3):
            dnsperf_qps(port, files["positive"], 1)  # warm: caches, allocator pools
        figures["load"] = os.getloadavg()[0]
        positive = dnsperf_qps(port, files["positive"], args.seconds)
        unique = dnsperf_qps(port, files["unique"], args.seconds)
        figures.update(positive_qps=positive, unique_nx_qps=unique, nx_ratio=unique / positive)
        log(f"{name}: cached positive {positive:,.0f} qps, unique-name NXDOMAIN {unique:,.0f} qps ({unique / positive:.0%})")

        time.sleep(1)
        steady = common.group_pss_kb(proc.pid)
        flood_out = tmp / f"{name}.flood.f32"
        flood = udpprobe(files["udpprobe"], port, f"random:{FLOOD_SUFFIX}", args.flood_rate, args.seconds, flood_out)
        lat: list[float] = []
        probe = threading.Thread(target=legit_probe, args=(port, args.seconds, 50, lat))
        probe.start()
        peak = steady
        while flood.poll() is None or probe.is_alive():
            peak = max(peak, common.group_pss_kb(proc.pid))
            time.sleep(0.25)
        sent, answered, _ = probe_result(flood, flood_out, args.seconds)
        psent = len(lat)
        lat.sort()
        time.sleep(1)
        after = common.group_pss_kb(proc.pid)
        within = sum(1 for x in lat if x <= 50) / max(1, psent)
        figures.update(flood_sent=sent, flood_answered=answered, legit_within_50ms=within, legit_p50_ms=quantile(lat, 0.5),
                       legit_p99_ms=quantile(lat, 0.99), pss_steady_mb=steady / 1024, pss_peak_mb=peak / 1024,
                       pss_after_mb=after / 1024)
        log(f"{name}: flood {sent / args.seconds:,.0f}/s unique names, {answered / max(1, sent):.0%} answered; legit "
            f"{within:.1%} within 50 ms, p50 {quantile(lat, 0.5):.2f} ms, p99 {quantile(lat, 0.99):.2f} ms; PSS "
            f"{steady / 1024:.1f} MB steady, {peak / 1024:.1f} peak (+{(peak - steady) / 1024:.1f}), {after / 1024:.1f} after")

        time.sleep(1)
        rate = 2 * positive
        over_out = tmp / f"{name}.over.f32"
        over = udpprobe(files["udpprobe"], port, str(files["mix"]), rate, args.seconds, over_out)
        osent, oanswered, olat = probe_result(over, over_out, args.seconds)
        answered_lat = [x for x in olat if x != math.inf]
        figures.update(overload_rate=rate, overload_sent=osent, overload_answered=oanswered / max(1, osent),
                       overload_p99_answered_ms=quantile(answered_lat, 0.99),
                       overload_p50_answered_ms=quantile(answered_lat, 0.5))
        log(f"{name}: overload at {rate:,.0f}/s ({osent / args.seconds:,.0f}/s sent): {oanswered / max(1, osent):.0%} "
            f"answered, p50 {quantile(answered_lat, 0.5):.2f} ms, p99 {quantile(answered_lat, 0.99):.2f} ms of answered")

        time.sleep(1)
        worst, total, replies = amplification(port, corpus)
        figures.update(amplification_max=worst, amplification_total=total, amplification_replies=replies)
        log(f"{name}: amplification over {len(corpus):,} corpus packets ({replies:,} replies): max {worst:.1f}x, "
            f"all bytes {total:.2f}x")
        time.sleep(1)
        before, during, after_close, refused = slow_readers(port, proc.pid, args.tcp_clients)
        figures.update(tcp_pss_before=before, tcp_pss_during=during, tcp_pss_after=after_close, tcp_refused=refused)
        log(f"{name}: {args.tcp_clients} TCP clients that never read: PSS {before:.1f} MB before, {during:.1f} while "
            f"connected, {after_close:.1f} after they closed; {refused} refused")
        figures["alive"] = proc.poll() is None
        text = log_path.read_text(errors="replace")
        figures["tracebacks"] = text.count("Traceback")
        return figures
    finally:
        procs.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load (default 8)")
    parser.add_argument("--flood-rate", type=float, default=50_000, help="unique names per second (default 50000)")
    parser.add_argument("--servers", default="dnsd,knot")
    parser.add_argument("--mutations", type=int, default=20_000, help="mutated corpus packets for amplification")
    parser.add_argument("--tcp-clients", type=int, default=1000, help="TCP clients that never read (default 1000)")
    args = parser.parse_args()
    common.ensure_packages({"dnsperf": "dnsperf", "knotd": "knot", "gcc": "gcc"})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.tcp_clients + 512)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-hostile-"))
    procs = Procs()
    try:
        files = {"udpprobe": tmp / "udpprobe"}
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(files["udpprobe"]), str(BENCH / "udpprobe.c")], check=True)
        manifests = tmp / "manifests"
        manifests.mkdir()
        for path in (ROOT / "zones").glob("*.yaml"):
            (manifests / path.name).write_text(path.read_text())
        (manifests / "big.json").write_text(BIG)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        records = subprocess.run([sys.executable, "-m", "dnsd", "records", "--manifests", str(manifests)], cwd=ROOT,
                                 env=env, capture_output=True, text=True, check=True).stdout.splitlines()
        (tmp / "zones").mkdir()
        zones = split_zones(records, tmp / "zones")
        names = sorted({line.split()[0].rstrip(".") for line in records if line.split()[3] == "A"})
        files["positive"] = tmp / "positive.txt"
        files["positive"].write_text(f"{LEGIT} A\n")
        files["legit"] = files["positive"]
        files["mix"] = tmp / "mix.txt"
        files["mix"].write_text("".join(f"{n} A\n" for n in names if not n.startswith("big.")))
        rng = random.Random(11)
        files["unique"] = tmp / "unique.txt"
        files["unique"].write_text("".join(f"{rng.getrandbits(64):016x}.{FLOOD_SUFFIX} A\n" for _ in range(400_000)))
        dp = dataplane()
        base = seeds(dp)
        rng = random.Random(3)
        corpus = base + [mutate(rng, rng.choice(base), base) for _ in range(args.mutations)]

        results = []
        for name in args.servers.split(","):
            port = common.free_port()
            if name == "dnsd":
                argv = [sys.executable, "-m", "dnsd", "serve", "--manifests", str(manifests), "--port", str(port),
                        "--address", "127.0.0.1", "--workers", "1", "--http-address", "", "--upstream", "none"]
            else:
                argv = ["knotd", "-c", str(knot_config(tmp, port, zones))]
            results.append(measure(name, argv, port, procs, tmp, args, files, corpus, env))
        print()
        print(f"{'':44}" + "".join(f"{r['server']:>14}" for r in results) + "   target (dnsd)")
        rows = [
            ("load average at start", "load", "{:.1f}", ""),
            ("cached positive, qps", "positive_qps", "{:,.0f}", ""),
            ("unique-name NXDOMAIN, qps", "unique_nx_qps", "{:,.0f}", ""),
            ("  NXDOMAIN / positive", "nx_ratio", "{:.0%}", ">= 50%"),
            (f"flood sent/s (target {args.flood_rate:,.0f})", "flood_sent", "{:,.0f}", ""),
            ("flood answered", "flood_answered", "{:,.0f}", ""),
            ("legit within 50 ms during the flood", "legit_within_50ms", "{:.1%}", ">= 99%"),
            ("legit p50 / p99 ms", ("legit_p50_ms", "legit_p99_ms"), "{:.2f}", ""),
            ("PSS steady MB", "pss_steady_mb", "{:.1f}", ""),
            ("PSS peak - steady MB", ("pss_peak_mb", "pss_steady_mb"), "{:+.1f}", "<= +32"),
            ("PSS after MB", "pss_after_mb", "{:.1f}", ""),
            ("overload rate (2x positive)", "overload_rate", "{:,.0f}", ""),
            ("  answered", "overload_answered", "{:.0%}", ""),
            ("  p99 of answered, ms", "overload_p99_answered_ms", "{:.2f}", "<= 100"),
            ("amplification max (fuzz corpus)", "amplification_max", "{:.1f}x", "<= 5x"),
            ("amplification, all bytes", "amplification_total", "{:.2f}x", ""),
            ("TCP never-readers: PSS before MB", "tcp_pss_before", "{:.1f}", ""),
            ("  while connected MB", "tcp_pss_during", "{:.1f}", ""),
            ("  after they closed MB", "tcp_pss_after", "{:.1f}", "~ before"),
            ("  refused", "tcp_refused", "{}", ""),
            ("tracebacks in the log", "tracebacks", "{}", "0"),
        ]
        for label, key, fmt, target in rows:
            cells = []
            for r in results:
                if isinstance(key, tuple) and fmt == "{:+.1f}":
                    cells.append(fmt.format(r[key[0]] - r[key[1]]))  # type: ignore[operator]
                elif isinstance(key, tuple):
                    cells.append(" / ".join(fmt.format(r[k]) for k in key))
                elif key in ("flood_sent", "flood_answered"):
                    cells.append(fmt.format(r[key] / args.seconds) + "/s")  # type: ignore[operator]
                else:
                    cells.append(fmt.format(r[key]))
            print(f"{label:44}" + "".join(f"{c:>14}" for c in cells) + f"   {target}")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
