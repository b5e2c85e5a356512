"""Several worker processes: a dead worker is replaced and gets the current data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import answers, wait_for

Z = "cluster.local"


def children(pid: int) -> list[int]:
    """Children started by any of ``pid``'s threads."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue  # the thread ended meanwhile
    return kids


def workers_of(pid: int) -> list[int]:
    """Worker processes: dnsd's children once its zygote (which forks the first ones) is gone."""
    kids = children(pid)
    return [w for kid in kids for w in children(kid)] + [kid for kid in kids if not children(kid)]


def test_killed_worker_is_replaced_with_current_data(start_dnsd, manifest_dir: Path) -> None:
    path = manifest_dir / "s.yaml"
    path.write_text("kind: Service\nmetadata: {name: a, namespace: w}\nspec: {clusterIP: 10.96.0.1}\n")
    server = start_dnsd("--manifests", str(manifest_dir), workers=3)  # the main process and two lean workers
    before = wait_for(lambda: len(workers_of(server.proc.pid)) >= 2 and workers_of(server.proc.pid), timeout=10)
    os.kill(before[0], signal.SIGKILL)
    path.write_text("kind: Service\nmetadata: {name: a, namespace: w}\nspec: {clusterIP: 10.96.0.2}\n")
    wait_for(lambda: before[0] not in workers_of(server.proc.pid) and len(workers_of(server.proc.pid)) >= 2, timeout=15)
    assert "worker 1 exited" in server.log()
    # Every worker (whichever the kernel picks per query) must serve the data changed meanwhile.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = {tuple(answers(server.query(f"a.w.svc.{Z}"))) for _ in range(30)}
        if got == {(f"a.w.svc.{Z}. A 10.96.0.2",)}:
            break
        time.sleep(0.1)
    assert got == {(f"a.w.svc.{Z}. A 10.96.0.2",)}
    # The new worker is started fresh, not forked (the zygote is gone once the first workers run),
    # and counts its TCP connections in the same shared file as the others.
    assert any("dnsd.process.spawn" in Path(f"/proc/{pid}/cmdline").read_text() for pid in workers_of(server.proc.pid))
    for _ in range(10):
        assert answers(server.query(f"a.w.svc.{Z}", tcp=True)) == [f"a.w.svc.{Z}. A 10.96.0.2"]
    assert server.stop() == 0


def test_tcp_counts_are_shared_with_a_fresh_process_and_locked_across_processes(tmp_path: Path) -> None:
    import pickle

    from dnsd.process.ipc import SharedCounts

    counts = SharedCounts(str(tmp_path / "tcp-connections"), 3)
    code = ("import pickle, sys, time\n"
            "counts = pickle.load(sys.stdin.buffer)\n"
            "print('locking', flush=True)\n"
            "started = time.monotonic()\n"
            "with counts.get_lock():\n"
            "    counts[2] += 5\n"
            "print(sum(counts), round(time.monotonic() - started, 2))\n")
    with counts.get_lock():  # held: the other process waits for it
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        child.stdin.buffer.write(pickle.dumps(counts))
        child.stdin.close()
        assert child.stdout.readline() == "locking\n"
        time.sleep(0.5)
        assert counts[2] == 0
    total, waited = child.stdout.read().split()
    assert child.wait(10) == 0
    assert counts[2] == 5 and int(total) == 5 and float(waited) >= 0.4


# == how many workers by default ================================================================


def test_default_workers_follow_cpu_affinity(start_dnsd) -> None:
    # A process allowed one CPU runs one process, whatever the machine's CPU count.
    server = start_dnsd(workers=None, cpus={min(os.sched_getaffinity(0))})
    assert answers(server.query(f"web.default.svc.{Z}")) == [f"web.default.svc.{Z}. A 10.96.0.10"]
    assert workers_of(server.proc.pid) == []
    assert "workers" not in server.log()
    assert server.stop() == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_default_workers_use_every_allowed_cpu(start_dnsd) -> None:
    server = start_dnsd(workers=None, cpus=set(sorted(os.sched_getaffinity(0))[:2]))
    # Two workers: the main process and one forked worker.
    wait_for(lambda: len(workers_of(server.proc.pid)) == 1 and "with 2 workers" in server.log(), timeout=10)
    assert server.stop() == 0


def test_workers_share_one_index_file_in_the_shared_dir(start_dnsd, tmp_path: Path) -> None:
    # Left by a dnsd killed earlier (in a pod the volume outlives a restarted container): removed.
    stale = tmp_path / "dnsd-4194999-abc"
    stale.mkdir()
    (stale / "data.mdb").write_bytes(b"x" * 1000)
    server = start_dnsd("--shared-dir", str(tmp_path), workers=2)
    assert answers(server.query(f"web.default.svc.{Z}")) == [f"web.default.svc.{Z}. A 10.96.0.10"]
    files = wait_for(lambda: list(tmp_path.glob("dnsd-*/data.mdb")), timeout=10)
    assert len(files) == 1  # one copy of the records, whatever the number of workers
    assert not stale.exists()
    assert server.stop() == 0
    assert not list(tmp_path.iterdir()), "the shared file is removed on exit"


def test_lean_workers_do_not_import_the_kubernetes_client() -> None:
    # What a worker runs is dnsd.process.worker. The zygote is forked before the sources import the API
    # client (~17 MB), so a worker has it only if dnsd.process.worker pulls it in: it must not.
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import dnsd.process.worker"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if "|" in line}
    assert "dnsd.process.worker" in imported
    assert not {m for m in imported if m.startswith(("kubernetes", "urllib3", "dnsd.cluster.sources"))}


def test_the_zygote_holds_no_module_only_the_main_process_runs() -> None:
    """What dnsd imports before it forks the zygote is what every worker shares: a module only the main
    process runs there (the Prometheus client, the HTTP server) would be copied on write by the main
    process and kept by the zygote and the workers besides (~2 MB with 4 workers, docs/performance.md)."""
    code = ("import sys\n"
            "import dnsd.cli, dnsd.process.main, dnsd.process.worker, dnsd.upstream.forwarder\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'http', 'email')\n"
            "             or m in ('dnsd.observe.exporter', 'dnsd.observe.http', 'urllib.request')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_worker_imports_nothing_the_main_process_lacks_before_the_fork() -> None:
    """A module a worker imports only after the fork is paid again, privately, by every worker
    (encodings.idna with unicodedata is ~1 MB each): the main process has imported everything
    dnsd.process.worker runs before the zygote forks."""
    code = ("import sys\n"
            "import dnsd.process.main\n"
            "before = set(sys.modules)\n"
            "import dnsd.process.worker\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


