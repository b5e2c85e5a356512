"""What bench/scale reads of dnsd: its /metrics, its processes' memory, its ``synced`` log lines."""

from __future__ import annotations

import compileall
import datetime
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import group_pids, http_get, smaps_rollup

ROOT = Path(__file__).resolve().parent.parent
SYNCED_LINE = re.compile(r"^(\S+ \S+) \S+ \S+: (\S+): synced (\d+) objects in ([\d.]+) s")


def serve_command(kubeconfig: Path, port: int, http_port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of this tree's ``dnsd serve`` on the fake API: 127.0.0.1, no upstream. Its modules
    are byte-compiled first, as an installed dnsd's are (pip does it): else every start compiles them."""
    compileall.compile_dir(ROOT / "dnsd", quiet=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "dnsd", "serve", "--kubeconfig", str(kubeconfig), "--port", str(port),
            "--address", "127.0.0.1", "--workers", str(workers), "--http-address", f"127.0.0.1:{http_port}",
            "--upstream", "none"]
    return argv, env


def ready(http_port: int) -> bool:
    """dnsd's /ready answers 200."""
    got = http_get(http_port, "/ready", timeout=1)
    return got is not None and got[0] == 200


def _has_children(pid: int) -> bool:
    try:
        return any(task.joinpath("children").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False


def memory(pgid: int) -> list[dict[str, Any]]:
    """VmRSS and VmHWM (peak RSS) of every process in the group, with a role from its command line."""
    out = []
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        values = {k: int(v.split()[0]) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)}
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        if pid == pgid:
            role = "dnsd" if "spawn" not in cmdline else "?"
        elif "resource_tracker" in cmdline:
            role = "resource_tracker"
        elif ppid == pgid and _has_children(pid):
            role = "zygote"  # forked from dnsd at start; forks the first workers, then exits
        elif ppid == pgid or "spawn_main" in cmdline or "multiprocessing" in cmdline:
            role = "worker"
        else:
            role = "other"
        out.append({"pid": pid, "role": role, "rss_mb": round(values.get("VmRSS", 0.0), 1),
                    "peak_rss_mb": round(values.get("VmHWM", 0.0), 1)})
    return out


@dataclass
class Metrics:
    records: float = math.nan
    services: float = math.nan
    prog_count: float = 0.0
    prog_sum: float = 0.0
    prog_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    @classmethod
    def scrape(cls, port: int) -> Metrics:
        got = http_get(port, "/metrics", timeout=10)
        if got is None or got[0] != 200:
            raise RuntimeError("cannot scrape /metrics")
        m = cls()
        for line in got[1].splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.rpartition(" ")
            if key == "dnsd_records":
                m.records = float(value)
            elif key == "dnsd_services":
                m.services = float(value)
            elif key == "dnsd_programming_duration_seconds_count":
                m.prog_count = float(value)
            elif key == "dnsd_programming_duration_seconds_sum":
                m.prog_sum = float(value)
            elif key.startswith("dnsd_programming_duration_seconds_bucket"):
                le = re.search(r'le="([^"]+)"', key)
                if le:
                    m.prog_buckets[float(le.group(1))] = float(value)
        return m

    def since(self, before: Metrics) -> dict[str, Any]:
        """The batches applied between two scrapes: count, total, mean and the bucket holding the max / p99."""
        count = self.prog_count - before.prog_count
        total = self.prog_sum - before.prog_sum
        buckets = sorted((le, n - before.prog_buckets.get(le, 0.0)) for le, n in self.prog_buckets.items())

        def bound(q: float) -> float | None:
            return next((le for le, n in buckets if n >= q * count), None) if count else None

        return {"batches": int(count), "sum_ms": total * 1000, "mean_ms": total / count * 1000 if count else math.nan,
                "p99_le_ms": _ms(bound(0.99)), "max_le_ms": _ms(bound(1.0))}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def synced_lines(log_path: Path, started_wall: float) -> dict[str, dict[str, float]]:
    """dnsd's ``<origin>: synced N objects in X s`` lines, with when they were logged (s after start)."""
    out: dict[str, dict[str, float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = SYNCED_LINE.match(line)
        if m and m.group(2) not in out:
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[m.group(2)] = {"objects": int(m.group(3)), "seconds": float(m.group(4)), "logged_at_s": at - started_wall}
    return out


def pss(pgid: int) -> list[dict[str, Any]]:
    """PSS and RSS (MB) of every process in dnsd's group, from /proc/PID/smaps_rollup."""
    out = []
    for p in memory(pgid):
        rollup = smaps_rollup(p["pid"])
        if not rollup:
            continue  # exited meanwhile
        values = {k: kb / 1024 for k, kb in rollup.items()}
        # Anon is the heap; File the mapped code and the shared index file (shared pages split between their mappers)
        out.append({"pid": p["pid"], "role": p["role"], "pss_mb": round(values.get("Pss", 0.0), 1),
                    "rss_mb": round(values.get("Rss", 0.0), 1), "pss_anon_mb": round(values.get("Pss_Anon", 0.0), 1),
                    "pss_file_mb": round(values.get("Pss_File", 0.0) + values.get("Pss_Shmem", 0.0), 1)})
    return out
