"""Helpers for the benchmarks: owned processes, CPU accounting, free ports, one-off DNS queries."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ensure_packages(binaries: dict[str, str]) -> None:
    """Install the Debian packages of missing binaries ({binary: package}); apt-get update only if needed."""
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)}: install them (apt-get install -y {' '.join(missing)})")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (servers bind both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class Procs:
    """Every process the benchmark starts, each in its own session, so it can end exactly those (and their children)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env, start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the process group we created, SIGKILL it after ``grace`` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also reaps leftover children (e.g. dnsd workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, grace=2.0)


def group_stats(pgid: int) -> dict[int, list[str]]:
    """pid -> the fields of /proc/PID/stat after the command, for the live processes of one process group."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # fields[2] is field 5 of stat(5): the process group
            found[int(entry.name)] = fields
    return found


def group_cpu_seconds(pgid: int) -> float:
    """user+system CPU of the live processes in one process group (a server and its workers/threads)."""
    return sum(int(fields[11]) + int(fields[12]) for fields in group_stats(pgid).values()) / CLK_TCK  # utime, stime


def group_pss_kb(pgid: int) -> int:
    """PSS of the live processes in one process group, as the project measures memory."""
    total = 0
    for pid in group_stats(pgid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            continue
    return total


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds over all CPUs since boot.

    busy is user+nice+system (irq/softirq left out: on loopback that is mostly our own packets);
    steal is time the hypervisor gave our vCPUs to someone else.
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return (fields[0] + fields[1] + fields[2]) / CLK_TCK, steal / CLK_TCK


def per_cpu_busy() -> dict[int, int]:
    """cpu -> busy jiffies since boot, irq/softirq included (a core full of packet work is full)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            fields = [int(v) for v in values[:8]]
            out[int(name[3:])] = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return out


def busy_seconds(before: dict[int, int], after: dict[int, int], cpus: list[int]) -> float:
    return sum(after[c] - before[c] for c in cpus if c in before and c in after) / CLK_TCK


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def udp_drops(port: int) -> int:
    """Kernel receive-buffer drops summed over the UDP sockets bound to ``port`` (all SO_REUSEPORT siblings)."""
    total = 0
    with contextlib.suppress(OSError), open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port:
                total += int(parts[-1])
    return total


@dataclass(frozen=True)
class Reply:
    rcode: str
    answers: tuple[str, ...]  # sorted "TYPE rdata" of the answer section (order-insensitive)
    tc: bool
    size: int

    def summary(self) -> str:
        return f"{self.rcode}/{len(self.answers)} answers{' TC' if self.tc else ''}"


def query(port: int, name: str, qtype: str, timeout: float = 1.0, tries: int = 2) -> Reply | None:
    """One UDP query without EDNS (as dnsperf sends them); None on timeout."""
    request = DNSRecord.question(name, qtype)
    for _ in range(tries):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(request.pack(), ("127.0.0.1", port))
                while True:
                    data, _ = sock.recvfrom(65535)
                    reply = DNSRecord.parse(data)
                    if reply.header.id == request.header.id:
                        break
            except (TimeoutError, ConnectionError):
                continue
        answers = tuple(sorted(f"{QTYPE.get(rr.rtype)} {str(rr.rdata).lower()}" for rr in reply.rr))
        return Reply(str(RCODE.get(reply.header.rcode)), answers, bool(reply.header.tc), len(data))
    return None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
               log_path: Path | None = None) -> float:
    """Poll ``predicate()`` until true; fail early if ``proc`` exits. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"{what}: exited with {proc.returncode} before answering\n{tail}")
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not answering after {timeout:.0f}s")
