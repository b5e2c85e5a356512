"""Several worker processes: a dead worker is replaced and gets the current data."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import answers, wait_for

Z = "cluster.local"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def workers_of(pid: int) -> list[int]:
    """Worker processes: multiprocessing's spawned children (its resource tracker runs another module)."""
    return [c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_killed_worker_is_replaced_with_current_data(start_dnsd, manifest_dir: Path) -> None:
    path = manifest_dir / "s.yaml"
    path.write_text("kind: Service\nmetadata: {name: a, namespace: w}\nspec: {clusterIP: 10.96.0.1}\n")
    server = start_dnsd("--manifests", str(manifest_dir), workers=2)
    before = wait_for(lambda: len(workers_of(server.proc.pid)) >= 2 and workers_of(server.proc.pid), timeout=10)
    os.kill(before[0], signal.SIGKILL)
    path.write_text("kind: Service\nmetadata: {name: a, namespace: w}\nspec: {clusterIP: 10.96.0.2}\n")
    wait_for(lambda: before[0] not in workers_of(server.proc.pid) and len(workers_of(server.proc.pid)) >= 2, timeout=15)
    assert "worker 0 exited" in server.log()
    # Every worker (whichever the kernel picks per query) must serve the data changed meanwhile.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = {tuple(answers(server.query(f"a.w.svc.{Z}"))) for _ in range(30)}
        if got == {(f"a.w.svc.{Z}. A 10.96.0.2",)}:
            break
        time.sleep(0.1)
    assert got == {(f"a.w.svc.{Z}. A 10.96.0.2",)}
    assert server.stop() == 0
