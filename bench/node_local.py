"""Node-local mode: the node cache's throughput for cached cluster names against unbound set up as a
node cache with the same upstream, and the queries lost over rolling handovers under load.

A cluster DNS (dnsd, ``--services`` Services from a manifest, TTL 5) listens on 127.0.0.1. In front
of it, one at a time and alike: dnsd ``--cluster-dns`` on 127.0.0.2 (one worker), and unbound on
127.0.0.3 (one thread, ``forward-zone`` cluster.local and in-addr.arpa to the cluster DNS with
``forward-tcp-upstream``, prefetch on), both pinned to the second CPU, dnsperf to the first. Each is
warmed with one pass over the names, then measured for ``--duration`` s, ``--rounds`` times in turn.

Handovers: a node cache under a steady stream (tests/stream.py: UDP, TCP per query and one pipelined
TCP connection, ``--rate`` queries/s in all) is replaced ``--handovers`` times the way the DaemonSet
does it: a new dnsd on the same address and port, then SIGTERM to the old one once the new one
serves. Every query the stream sent is counted: answered, lost, wrong.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Procs, ask, ensure_packages, free_port, log, set_log_tag, wait_until
from tests.stream import Stream

CLUSTER, NODE, UNBOUND = "127.0.0.1", "127.0.0.2", "127.0.0.3"


def manifests(directory: Path, services: int) -> list[str]:
    docs, names = [], []
    for i in range(services):
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\n"
                    f"spec: {{clusterIP: 10.96.{i // 250}.{i % 250 + 1}, ports: [{{name: http, port: 80}}]}}\n")
        names.append(f"s{i}.bench.svc.cluster.local")
    (directory / "services.yaml").write_text("---\n".join(docs))
    return names


def dnsd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dnsd", "serve", "--workers", "1", "--http-address", "", *args]


def unbound_conf(directory: Path, port: int, cluster_port: int) -> Path:
    conf = directory / "unbound.conf"
    forward = "".join(f'forward-zone:\n  name: "{zone}"\n  forward-addr: {CLUSTER}@{cluster_port}\n'
                      f"  forward-tcp-upstream: yes\n" for zone in ("cluster.local.", "in-addr.arpa."))
    conf.write_text(f"""server:
  interface: {UNBOUND}@{port}
  port: {port}
  num-threads: 1
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  prefetch: yes
  local-zone: "in-addr.arpa." nodefault
  domain-insecure: "cluster.local."
{forward}""")
    return conf


def dnsperf(address: str, port: int, queries: Path, seconds: float, once: bool = False) -> float:
    cmd = ["taskset", "-c", "0", "dnsperf", "-s", address, "-p", str(port), "-d", str(queries), "-q", "100",
           "-c", "4", "-t", "2", *(["-n", "1"] if once else ["-l", f"{seconds:g}"])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120).stdout
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not found:
        raise RuntimeError(out[-1500:])
    if lost and int(lost.group(1)):
        log(f"{address}: dnsperf lost {lost.group(1)} queries")
    return float(found.group(1))


def throughput(args: argparse.Namespace, procs: Procs, tmp: Path, names: list[str], cluster_port: int) -> None:
    queries = tmp / "queries.txt"
    queries.write_text("".join(f"{n} A\n" for n in names))
    node_port, unbound_port = free_port(NODE), free_port(UNBOUND)
    servers = {
        "dnsd --cluster-dns": (NODE, node_port, ["taskset", "-c", "1", *dnsd(
            "--address", NODE, "--port", str(node_port), "--cluster-dns", f"{CLUSTER}:{cluster_port}",
            "--upstream", "none")]),
        "unbound": (UNBOUND, unbound_port, ["taskset", "-c", "1", "unbound", "-d", "-c",
                                            str(unbound_conf(tmp, unbound_port, cluster_port))]),
    }
    results: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, (address, port, argv) in servers.items():
            proc = procs.start(argv, tmp / f"{name.split()[0]}.log")
            wait_until(lambda a=address, p=port: ask_at(a, p, names[0]), 20, name, proc)
            dnsperf(address, port, queries, 30, once=True)  # every name cached
            results[name].append(dnsperf(address, port, queries, args.duration))
            procs.stop(proc)
    for name, runs in results.items():
        print(f"{name:>20}: {max(runs):9,.0f} qps cached cluster names (runs {', '.join(f'{r:,.0f}' for r in runs)})")
    print(f"dnsd / unbound: {max(results['dnsd --cluster-dns']) / max(results['unbound']):.2f}")


def ask_at(address: str, port: int, name: str) -> bool:
    import dns.message
    import dns.query

    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), address, port=port, timeout=0.5)
    except Exception:
        return False
    return bool(reply.answer)


def handovers(args: argparse.Namespace, procs: Procs, tmp: Path, names: list[str], cluster_port: int) -> None:
    port = free_port(NODE)
    argv = dnsd("--address", NODE, "--port", str(port), "--cluster-dns", f"{CLUSTER}:{cluster_port}",
                "--upstream", "none", "--tcp-idle-timeout", "2")
    old = procs.start(argv, tmp / "node-0.log")
    wait_until(lambda: ask_at(NODE, port, names[0]), 20, "node cache", old)
    rate = args.rate
    stream = Stream(NODE, port, names[0], udp=rate * 0.9, tcp=rate * 0.02, pipelined=rate * 0.08).start()
    started = time.monotonic()
    for n in range(1, args.handovers + 1):
        time.sleep(0.5)
        new = procs.start(argv, tmp / f"node-{n}.log")
        wait_until(lambda n=n: "dnsd serving" in (tmp / f"node-{n}.log").read_text(), 20, f"node cache {n}", new)
        old.send_signal(signal.SIGTERM)
        if old.wait(30) != 0:
            raise RuntimeError(f"node cache {n - 1} exited with {old.returncode}")
        procs.running.remove(old)
        old = new
    took = time.monotonic() - started
    counts = stream.stop()
    total = stream.totals()
    print(f"{args.handovers} handovers in {took:.0f} s under {rate:,} queries/s: {total}")
    for kind, c in counts.items():
        print(f"{kind:>10}: {c}")
    procs.stop(old)


def main() -> int:
    set_log_tag("node_local")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each dnsperf run (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server, taking turns (default 2)")
    parser.add_argument("--services", type=int, default=1000, help="cluster names (default 1000)")
    parser.add_argument("--handovers", type=int, default=20, help="(default 20; 0: skip)")
    parser.add_argument("--rate", type=int, default=2000, help="queries/s during the handovers (default 2000)")
    parser.add_argument("--skip-qps", action="store_true", help="only the handovers")
    args = parser.parse_args()
    ensure_packages({"dnsperf": "dnsperf", "unbound": "unbound", "taskset": "util-linux"})
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-node-local-"))
    try:
        (tmp / "cluster").mkdir()
        names = manifests(tmp / "cluster", args.services)
        cluster_port = free_port(CLUSTER)
        cluster = procs.start(dnsd("--manifests", str(tmp / "cluster"), "--address", CLUSTER, "--port",
                                   str(cluster_port), "--upstream", "none"), tmp / "cluster.log")
        wait_until(lambda: ask(cluster_port, names[-1]) is not None, 30, "cluster DNS", cluster)
        if not args.skip_qps:
            throughput(args, procs, tmp, names, cluster_port)
        if args.handovers:
            handovers(args, procs, tmp, names, cluster_port)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
