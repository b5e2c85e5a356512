"""dnsd's memory through forced relists: PSS steady, peak during each relist, and after.

    python3 -m bench.relist_memory [--services 10000] [--endpoints 100000] [--workers 1] [--relists 3]
                                   [--dnsd-root DIR]

The cluster is bench/scale's (scale_cluster.Cluster), served by the fake API (tests/fakes/kube_api). After
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

from bench.common import Procs, free_port, group_pids, group_pss_kb, log, wait_until
from bench.scale_cluster import Cluster, add_cluster_options
from bench.scale_dnsd import Metrics, ready
from tests.fakes.kube_api import FakeKubeAPI

ROOT = Path(__file__).resolve().parent.parent


def pss_mb(pgid: int, field: str = "Pss") -> float:
    """``field`` of /proc/PID/smaps_rollup (Pss, Pss_Anon, Pss_File) summed over the group, in MB."""
    return group_pss_kb(pgid, field) / 1024


def split(pgid: int) -> str:
    return f"anonymous {pss_mb(pgid, 'Pss_Anon'):.1f} MB, file-backed {pss_mb(pgid, 'Pss_File'):.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.relist_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_options(parser)
    parser.add_argument("--workers", type=int, default=1, help="dnsd --workers (default 1)")
    parser.add_argument("--relists", type=int, default=3, help="forced relists (default 3)")
    parser.add_argument("--paginated", action="store_true", help="the API refuses streamed lists (watch-list)")
    parser.add_argument("--dnsd-root", type=Path, default=ROOT, help="the checkout to run dnsd from (default this one)")
    args = parser.parse_args()
    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed, args.shape, args.headless)
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
            wait_until(lambda: ready(http), 120, "dnsd /ready")
            wait_until(lambda: Metrics.scrape(http).services >= args.services, 60, "every Service in every worker")
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
                wait_until(lambda k=k: log_path.read_text(errors="replace").count("relisting after 410") >= 3 * k,
                     60, f"relist {k} begun")
                wait_until(lambda k=k: log_path.read_text(errors="replace").count(": synced ") >= 3 * (k + 1),
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
