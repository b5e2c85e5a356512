"""Warm ExternalName answers against cluster names: dnsd's rate for aliases whose target is a cluster
name (the CNAME and the target's A, from the reply table) and for aliases whose target is outside the
cluster (asked once through the forwarder of a scripted loopback upstream, then from the forward
cache), next to the cluster names' own rate, same run.

    bench/external_name [--services 200] [--duration 5] [--rounds 3]

dnsd (one worker) on CPU 0, dnsperf (``-c 4 -q 200 -T 1``) on CPU 1, the two query files taking turns.
Target (issue 19): aliases at >= 80% of the cluster-name rate. Needs dnsperf and taskset.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Procs, ask, ensure_packages, free_port, log, wait_until
from tests.fakes.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def cluster(services: int) -> str:
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"]
    for i in range(services):
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: b}}\n"
                    f"spec: {{clusterIP: 10.96.{i // 250}.{i % 250 + 1}}}\n")
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: a{i}, namespace: b}}\n"
                    f"spec: {{type: ExternalName, externalName: s{i}.b.svc.cluster.local}}\n")
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: f{i}, namespace: b}}\n"
                    f"spec: {{type: ExternalName, externalName: t{i}.example.test}}\n")
    return "---\n".join(docs)


def qps(port: int, queries: Path, seconds: float) -> float:
    out = subprocess.run(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                          "-l", str(seconds), "-c", "4", "-q", "200", "-T", "1"], capture_output=True, text=True).stdout
    found = re.search(r"Queries per second:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"dnsperf printed no rate:\n{out}")
    return float(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200, help="ClusterIP Services, each with one alias")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of each dnsperf run")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the two query files")
    args = parser.parse_args()
    ensure_packages({"dnsperf": "dnsperf", "taskset": "util-linux"})
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="dnsd-extname-") as tmp:
        d = Path(tmp)
        (d / "cluster.yaml").write_text(cluster(args.services))
        files = {"cluster names": d / "cluster.txt", "aliases": d / "alias.txt", "forwarded aliases": d / "fwd.txt"}
        files["cluster names"].write_text("".join(f"s{i}.b.svc.cluster.local A\n" for i in range(args.services)))
        files["aliases"].write_text("".join(f"a{i}.b.svc.cluster.local A\n" for i in range(args.services)))
        files["forwarded aliases"].write_text("".join(f"f{i}.b.svc.cluster.local A\n" for i in range(args.services)))
        upstream = FakeUpstream().__enter__()  # answers every name (TTL 300): only the first ask reaches it
        port = free_port()
        argv = ["taskset", "-c", "0", sys.executable, "-m", "dnsd", "serve", "--port", str(port), "--manifests",
                str(d / "cluster.yaml"), "--upstream", upstream.server, "--workers", "1", "--http-address", ""]
        proc = procs.start(argv, d / "dnsd.log", cwd=ROOT)
        try:
            wait_until(lambda: ask(port, "a0.b.svc.cluster.local") is not None, 20, "dnsd", proc, d / "dnsd.log")
            rates: dict[str, list[float]] = {name: [] for name in files}
            for _ in range(args.rounds):
                for name, path in files.items():
                    rates[name].append(qps(port, path, args.duration))
                    log(f"{name}: {rates[name][-1]:,.0f} qps")
        finally:
            procs.stop_all()
            upstream.__exit__()
    best = {name: max(values) for name, values in rates.items()}
    runs = {name: ", ".join(f"{v:,.0f}" for v in values) for name, values in rates.items()}
    base = best["cluster names"]
    print(f"cluster names {base:,.0f} qps (runs {runs['cluster names']})")
    for name in ("aliases", "forwarded aliases"):
        print(f"{name} {best[name]:,.0f} qps (runs {runs[name]}): {best[name] / base:.0%} of cluster names "
              "(target >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
