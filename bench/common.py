"""Helpers for the benchmarks: logging, owned processes, CPU and memory from /proc, free ports, HTTP
and one-off DNS queries (dnslib, or a small wire codec cheap enough for tight polling), polling,
splitting a total in proportion."""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

CLK_TCK = os.sysconf("SC_CLK_TCK")
A_TYPE = 1
_log_tag = "bench"


def set_log_tag(tag: str) -> None:
    """What ``log`` lines start with (``[bench]`` unless a benchmark names itself)."""
    global _log_tag
    _log_tag = tag


def log(message: str) -> None:
    print(f"[{_log_tag}] {message}", file=sys.stderr, flush=True)


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

    def start(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
              *, stdin: bool = False, stdout: bool = False) -> subprocess.Popen[bytes]:
        """Output to ``log_path``; ``stdin``/``stdout``: pipes to talk to the process instead (stderr still logged)."""
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if stdout else out, stderr=out, cwd=cwd, env=env,
                                    start_new_session=True)
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
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self, grace: float = 2.0) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, grace=grace)


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


def group_pids(pgid: int) -> list[int]:
    """The live processes of one process group, in pid order."""
    return sorted(group_stats(pgid))


def group_cpu_seconds(pgid: int) -> float:
    """user+system CPU of the live processes in one process group (a server and its workers/threads)."""
    return sum(int(fields[11]) + int(fields[12]) for fields in group_stats(pgid).values()) / CLK_TCK  # utime, stime


def stat_cpu_seconds(path: str) -> float:
    """utime + stime of /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat; 0 if gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, ...); empty if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    return {name: int(kb) for name, kb in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}


def group_pss_kb(pgid: int, field: str = "Pss") -> int:
    """PSS (or another smaps_rollup ``field``) of the live processes in one process group, as the project
    measures memory."""
    return sum(smaps_rollup(pid).get(field, 0) for pid in group_stats(pgid))


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


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of a GET on 127.0.0.1, or None if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def quantile(ranked: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank); NaN when there are none."""
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)] if ranked else math.nan


def dnsperf_latencies(lines: Iterable[str], skip: int = 0) -> tuple[list[float], int]:
    """(latencies in ms, timeouts) from the per-query lines of ``dnsperf -v`` ("> ..."), after the first ``skip``
    (they come in completion order)."""
    latencies: list[float] = []
    timeouts = seen = 0
    for line in lines:
        if not line.startswith("> "):
            continue
        seen += 1
        if seen <= skip:
            continue
        parts = line.split()
        if parts[1] == "T":
            timeouts += 1
        elif parts[1] != "I":  # I: still in flight when the run ended
            latencies.append(float(parts[-1]) * 1000)
    return latencies, timeouts


def apportion(total: int, weights: list[float], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder), each share >= ``minimum`` if possible."""
    if not weights:
        return []
    base = min(minimum, total // len(weights))
    rest = total - base * len(weights)
    whole = sum(weights)  # once: summed per share it was quadratic (40 s at 100k Services)
    raw = [rest * w / whole for w in weights]
    shares = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in order[: rest - sum(shares)]:
        shares[i] += 1
    return [s + base for s in shares]


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


# -- DNS on the wire, without dnslib (~10x cheaper per query: for polling many times a second)

def wire_query(qid: int, name: str, qtype: int = A_TYPE) -> bytes:
    """A query with RD set and one question, ``name`` ``qtype`` IN."""
    qname = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if label) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n


def a_reply(data: bytes) -> tuple[int, int, set[str]]:
    """(id, rcode, A addresses in the answer section) of a reply."""
    qid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", data)
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    found: set[str] = set()
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _, _, length = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        if rtype == A_TYPE and length == 4:
            found.add(socket.inet_ntoa(data[pos:pos + 4]))
        pos += length
    return qid, flags & 0xF, found


def ask(port: int, name: str, qtype: int = A_TYPE, timeout: float = 0.5) -> tuple[int, set[str]] | None:
    """One blocking query: (rcode, A addresses), or None on timeout."""
    qid = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(wire_query(qid, name, qtype))
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionError):
            while time.monotonic() < deadline:
                rid, rcode, found = a_reply(sock.recv(65535))
                if rid == qid:
                    return rcode, found
    return None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
               log_path: Path | None = None, interval: float = 0.2) -> float:
    """Poll ``predicate()`` every ``interval`` s until true; fail early if ``proc`` exits (with the tail of
    ``log_path``). Returns time.monotonic() when it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{what}: exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
