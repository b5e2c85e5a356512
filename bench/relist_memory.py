#!/usr/bin/env python3
"""dnsd's memory through forced relists: PSS steady, peak during each relist, and after.

    bench/relist_memory.py [--services 10000] [--endpoints 100000] [--workers 1] [--relists 3]
                           [--dnsd-root DIR]

The cluster is bench/scale's (scale_lib.Cluster), served by the fake API (tests/k8s_api.py). After
the first sync settles, the API is "restarted" with its history compacted --relists times: every
watch gets 410 and relists, with nothing changed. PSS is summed over every dnsd process
(/proc/PID/smaps_rollup), sampled every 50 ms during each relist for the peak. Goals (issue 10):
after any number of relists within 5% of steady state; peak <= 1.25x steady state.
--dnsd-root runs dnsd from another checkout (e.g. `git archive main | tar -x -C /tmp/main`) to
compare. About 60-90 s with the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Procs, free_port, log  # noqa: E402
from k8s_api import FakeKubeAPI  # noqa: E402
from scale_lib import Cluster, Metrics, group_pids, http_get  # noqa: E402


def pss_mb(pgid: int, field: str = "Pss") -> float:
    """``field`` of /proc/PID/smaps_rollup (Pss, Pss_Anon, Pss_File) summed over the group, in MB."""
    total = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def split(pgid: int) -> str:
    return f"anonymous {pss_mb(pgid, 'Pss_Anon'):.1f} MB, file-backed {pss_mb(pgid, 'Pss_File'):.1f} MB"


def wait(predicate, timeout: float, what: str, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/relist_memory.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--relists", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--paginated", action="store_true", help="the API refuses streamed lists (watch-list)")
    parser.add_argument("--dnsd-root", type=Path, default=ROOT, help="the checkout to run dnsd from (default this one)")
    args = parser.parse_args()
    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed)
    objs = list(cluster.objects())
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-relist-"))
    with FakeKubeAPI(bookmark_interval=5.0, backlog=100_000, watch_list=not args.paginated) as api:
        api.load(objs)
        del objs
        log(f"{args.services} Services, {args.endpoints} endpoints loaded into the fake API")
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        port, http = free_port(), free_port()
        log_path = tmp / "dnsd.log"
        env = {**os.environ, "PYTHONPATH": str(args.dnsd_root)}
        dnsd = procs.start([sys.executable, "-m", "dnsd", "serve", "--kubeconfig", str(kubeconfig), "--port", str(port),
                            "--http-address", f"127.0.0.1:{http}", "--workers", str(args.workers), "--upstream", "none"],
                           log_path, cwd=args.dnsd_root, env=env)
        try:
            def ready() -> bool:
                got = http_get(http, "/ready", timeout=1)
                return got is not None and got[0] == 200

            wait(ready, 120, "dnsd /ready")
            wait(lambda: Metrics.scrape(http).services >= args.services, 60, "every Service in every worker")
            time.sleep(3)  # workers' reports and any trailing batch
            steady = pss_mb(dnsd.pid)
            print(f"steady: PSS {steady:.1f} MB over {len(group_pids(dnsd.pid))} processes "
                  f"({args.workers} worker(s), dnsd from {args.dnsd_root}; {split(dnsd.pid)})", flush=True)
            peak, after = steady, steady
            for k in range(1, args.relists + 1):
                samples: list[float] = []
                done = threading.Event()

                def sample(samples: list[float] = samples, done: threading.Event = done) -> None:
                    while not done.is_set():
                        samples.append(pss_mb(dnsd.pid))
                        time.sleep(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                api.restart()  # compaction: every resumed watch gets 410
                wait(lambda k=k: log_path.read_text(errors="replace").count("relisting after 410") >= 3 * k,
                     60, f"relist {k} begun")
                wait(lambda k=k: log_path.read_text(errors="replace").count(": synced ") >= 3 * (k + 1),
                     120, f"relist {k} done")
                time.sleep(3)  # workers apply what they were sent
                done.set()
                sampler.join()
                after = pss_mb(dnsd.pid)
                peak = max(peak, *samples, after)
                print(f"relist {k}: peak during {max(samples):.1f} MB ({max(samples) / steady:.2f}x steady), "
                      f"after {after:.1f} MB ({(after / steady - 1) * 100:+.1f}%; {split(dnsd.pid)})", flush=True)
        finally:
            procs.stop_all()
    print(f"after {args.relists} relists: {after:.1f} MB vs steady {steady:.1f} MB ({(after / steady - 1) * 100:+.1f}%,"
          f" goal within 5%); peak {peak:.1f} MB ({peak / steady:.2f}x, goal <= 1.25x)")
    log(f"dnsd log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
