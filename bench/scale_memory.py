"""bench/scale --workers 1,2,4: dnsd's memory (PSS) at several worker counts, synced, queried, relisted."""

from __future__ import annotations

import argparse
import contextlib
import gc
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import Procs, ask, free_port, log, wait_until
from bench.scale_cluster import Cluster, every_name
from bench.scale_dnsd import SYNCED_LINE, pss, ready, serve_command
from tests.fakes.kube_api import FakeKubeAPI

ROOT = Path(__file__).resolve().parent.parent


def memory_runs(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any]) -> None:
    """For each worker count: sync, query every name ``--passes`` times, PSS; three forced relists, again."""
    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed, args.shape, args.headless)
    objs = list(cluster.objects())
    names = tmp / "every-name.txt"
    lines = every_name(cluster)
    names.write_text("\n".join(lines) + "\n")
    services = tmp / "service-names.txt"
    services.write_text("".join(f"{svc.fqdn} A\n" for svc in cluster.services))
    probe_svc = next(s for s in reversed(cluster.services) if s.headless and any(p.ready for p in s.pods()))
    probe_pod = next(p for p in probe_svc.pods() if p.ready)
    result["cluster"] = {**cluster.stats(), "objects": len(objs), "names_queried": len(lines)}
    log(f"cluster: {len(cluster.services)} Services, {result['cluster']['endpoints']} endpoints; "
        f"{len(lines)} names, each queried {args.passes} times per phase")
    api = FakeKubeAPI(backlog=50_000, bookmark_interval=5.0, log_limit=1_000_000)
    api.start()
    runs = result["memory_runs"] = []
    try:
        api.load(objs)
        del objs
        gc.collect()
        gc.freeze()
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        for workers in args.worker_counts:
            port, http_port = free_port(), free_port()
            dnsd_log = tmp / f"dnsd-{workers}.log"
            argv, env = serve_command(kubeconfig, port, http_port, workers)
            dnsd = procs.start(argv, dnsd_log, cwd=ROOT, env=env)
            started = time.monotonic()
            wait_until(lambda port=http_port: ready(port), args.sync_timeout, "dnsd /ready", dnsd, dnsd_log, interval=0.02)
            ready_s = time.monotonic() - started

            def query_all(path: Path = names, passes: int = args.passes, workers: int = workers, port: int = port) -> None:
                # Many sockets: SO_REUSEPORT spreads them over the workers, so each one's table fills too.
                run = procs.start(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(path), "-n",
                                   str(passes), "-l", "90", "-q", "200", "-c", str(max(16, 8 * workers))],
                                  tmp / f"every-name-{workers}.txt", cwd=ROOT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(100)
                procs.stop(run, grace=1)

            time.sleep(1.5)
            synced = pss(dnsd.pid)  # no query yet: imports, records and index, no rendered reply
            query_all(services, 1)  # the first figure: every Service name asked once
            time.sleep(1.5)
            services_once = pss(dnsd.pid)
            query_all()
            time.sleep(1.5)  # heap trimming and worker reports settle
            queried = pss(dnsd.pid)
            for _ in range(3):
                count = sum(1 for line in dnsd_log.read_text(errors="replace").splitlines() if SYNCED_LINE.match(line))
                api.restart()  # every watch gets 410: dnsd lists everything again
                wait_until(lambda n=count, path=dnsd_log: sum(
                    1 for line in path.read_text(errors="replace").splitlines() if SYNCED_LINE.match(line)) >= n + 2,
                    60, "a relist of both resources", dnsd, dnsd_log, interval=0.2)
            got = ask(port, probe_pod.dns_name(probe_svc))
            query_all()
            time.sleep(1.5)
            relisted = pss(dnsd.pid)
            run = {"workers": workers, "ready_s": round(ready_s, 2), "answers_after_relists": got is not None,
                   "synced": synced, "total_pss_synced_mb": round(sum(p["pss_mb"] for p in synced), 1),
                   "services_once": services_once, "after_queries": queried, "after_relists": relisted,
                   "total_pss_services_once_mb": round(sum(p["pss_mb"] for p in services_once), 1),
                   "total_pss_after_queries_mb": round(sum(p["pss_mb"] for p in queried), 1),
                   "total_pss_after_relists_mb": round(sum(p["pss_mb"] for p in relisted), 1)}
            runs.append(run)
            log(f"--workers {workers}: PSS {run['total_pss_synced_mb']:.0f} MB synced, "
                f"{run['total_pss_services_once_mb']:.0f} MB after every Service name once, "
                f"{run['total_pss_after_queries_mb']:.0f} MB after every name {args.passes} times, "
                f"{run['total_pss_after_relists_mb']:.0f} MB after 3 relists; per process (PSS/RSS): "
                + ", ".join(f"{p['role']} {p['pss_mb']:.0f}/{p['rss_mb']:.0f}" for p in relisted))
            procs.stop(dnsd)
    finally:
        api.stop()


def memory_rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    runs = r.get("memory_runs", [])
    if not runs:
        return []
    rows: list[tuple[str, str, str, bool | None]] = []
    one = next((run for run in runs if run["workers"] == 1), None)
    for phase, key in (("synced, nothing asked yet", "total_pss_synced_mb"),
                       ("every Service name once", "total_pss_services_once_mb"),
                       ("every name, --passes times", "total_pss_after_queries_mb"),
                       ("after 3 relists and every name again", "total_pss_after_relists_mb")):
        base = one[key] if one else None
        for run in runs:
            total = run[key]
            if run["workers"] == 1:
                target, ok = "<= 100 MB", total <= 100
            elif base:
                target, ok = f"<= {1.3 * base:.0f} MB (1.3x)", total <= 1.3 * base
            else:
                target, ok = "", None
            rows.append((f"total PSS, {phase}: --workers {run['workers']}", f"{total:.0f} MB", target, ok))
    for run in runs:
        per = ", ".join(f"{p['role']} {p['pss_mb']:.0f}/{p['rss_mb']:.0f}" for p in run["after_relists"])
        rows.append((f"  --workers {run['workers']} per process PSS/RSS MB at the end: {per}", "", "", None))
    return rows
