#!/usr/bin/env python3
"""dnsd at cluster scale: initial sync, memory, time to apply a change, event-to-answer under load.

    bench/scale [--services 10000] [--endpoints 100000] [--updates-per-second 100] [--duration 10] [--workers 1]

About 25 s with the defaults (a 2-CPU machine). Needs dnsperf and taskset; dnsd is the working tree's.

1. Cluster (seeded): N Services over 50 namespaces, every other one headless (30% of those
   StatefulSet-like, with hostnames); every Service has EndpointSlices (<= 100 endpoints each, with
   nodeName/zone/targetRef like the controller writes, ~2% not ready), ``--endpoints`` in total,
   skewed: most Services have a few pods, 1% hundreds. Served by ``tests/k8s_api.FakeKubeAPI`` from
   this process (its own thread, loopback); dnsd is a subprocess.
2. Sync: ``python -m dnsd serve --kubeconfig ...``; process start -> /health (imports), -> /ready, and
   -> the first correct answer for a name that needs both lists; dnsd's ``<origin>: synced N objects in
   X s`` lines; the programming time spent building the index; VmRSS/VmHWM of every dnsd process;
   dnsd_records.
3. One change, idle: a Service's clusterIP, then one pod of a headless Service's slice replaced. For
   each: dnsd_programming_duration_seconds delta (the batch that applied it) and event-to-answer: from
   the fake's update() returning to the first UDP answer with exactly the new data, polled every 1 ms
   (cap 1 s) by a separate prober process (CLOCK_MONOTONIC is shared between processes).
4. Under load: after a warm-up pass (dnsd keeps rendered answers; a server that has been running has
   them), dnsperf sends a fixed rate (``--qps``) of queries for existing names (a hot set: ClusterIP A
   and SRV, small headless A, pod names) while ``--updates-per-second`` updates run for ``--duration``
   s, alternating a clusterIP change and a pod replacement in a random Service's slice (each Service
   changed once at most). Updates whose effect shows in DNS are probed (ClusterIP Services' endpoints
   are not in DNS: applied, not probed). Reported: event-to-answer p50/p99/max and how many were
   checked, dnsperf's QPS, lost queries, non-NOERROR answers and latency, CPU of each party.
5. A summary table with the targets, and everything (per-update samples too) in bench/out/scale.json.

Pinning (2 CPUs): with ``--workers 1`` dnsd runs on CPU 0 and everything else (this process with the
fake API, the prober, dnsperf) on CPU 1, so the fake API's CPU does not count against dnsd; with as
many workers as CPUs nothing is pinned. Other processes' CPU use is measured and shown.

This file is both the library behind ``bench/scale`` and, with ``_probe``, the prober process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import http.client
import json
import math
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import free_port  # bench/ is on sys.path (bench/scale puts it there)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_SLICE = 100  # the EndpointSlice controller's default maxEndpointsPerSlice
ZONE = "cluster.local"
TARGETS = {"sync_s": 10.0, "rss_mb": 200.0, "apply_ms": 5.0, "e2a_p99_ms": 100.0}
NAMESPACE_WORDS = (
    "shop", "payments", "auth", "search", "catalog", "billing", "orders", "inventory", "shipping", "media",
    "analytics", "monitoring", "logging", "messaging", "identity", "pricing", "reviews", "recommend", "ads", "platform",
)
SERVICE_WORDS = ("api", "web", "cart", "user", "order", "search", "auth", "stock", "notify", "gateway", "cache", "queue",
                 "stream", "config", "session", "media", "mail", "report", "ledger", "profile", "feed", "image")
SERVICE_PORTS = (("http", 80, 8080), ("grpc", 9090, 9090), ("metrics", 9100, 9100), ("admin", 8081, 8081))
SYNCED_LINE = re.compile(r"^(\S+ \S+) \S+ \S+: (\S+): synced (\d+) objects in ([\d.]+) s")
A_TYPE = 1


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cluster

@dataclass
class Pod:
    ip: str
    ready: bool
    name: str
    uid: str
    node: str
    zone: str
    hostname: str = ""  # StatefulSet pods: published as <hostname>.<svc>.<ns>.svc.<zone>

    def endpoint(self, ns: str) -> dict[str, Any]:
        """The EndpointSlice endpoint, shaped like the controller writes it."""
        ep: dict[str, Any] = {
            "addresses": [self.ip],
            "conditions": {"ready": self.ready, "serving": self.ready, "terminating": False},
            "nodeName": self.node,
            "targetRef": {"kind": "Pod", "namespace": ns, "name": self.name, "uid": self.uid},
            "zone": self.zone,
        }
        if self.hostname:
            ep["hostname"] = self.hostname
        return ep

    def dns_name(self, svc: Svc) -> str:
        label = self.hostname or self.ip.replace(".", "-")
        return f"{label}.{svc.fqdn}"


@dataclass
class Slice:
    name: str
    pods: list[Pod]


@dataclass
class Svc:
    namespace: str
    name: str
    uid: str
    cluster_ip: str | None  # None: headless
    ports: list[tuple[str, int, int]]  # (name, port, targetPort)
    statefulset: bool = False
    slices: list[Slice] = field(default_factory=list)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    def pods(self) -> Iterator[Pod]:
        for s in self.slices:
            yield from s.pods


class IPs:
    """Unique addresses: the initial ones drawn at random from the low half of a range, new ones
    (updates) counted up in the high half, so an update can never reuse a live address."""

    def __init__(self, base: str, bits: int, count: int, rng: random.Random) -> None:
        self.base = struct.unpack("!I", socket.inet_aton(base))[0]
        self.half = 1 << (bits - 1)
        if count > self.half - 2:
            raise ValueError(f"{count} addresses do not fit in {base}/{32 - bits}")
        self.initial = [self._ip(n) for n in rng.sample(range(1, self.half - 1), count)]
        self.next_new = self.half + 1

    def _ip(self, offset: int) -> str:
        return socket.inet_ntoa(struct.pack("!I", self.base + offset))

    def new(self) -> str:
        ip = self._ip(self.next_new)
        self.next_new += 1
        return ip


class Cluster:
    """The synthetic cluster (deterministic for a seed) and the objects the fake API serves."""

    def __init__(self, services: int, endpoints: int, namespaces: int, seed: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.namespaces = [NAMESPACE_WORDS[i] if i < len(NAMESPACE_WORDS) else f"team-{i:02d}" for i in range(namespaces)]
        self.svc_ips = IPs("10.96.0.0", 20, services, rng)  # inside the usual 10.96.0.0/12
        self.pod_ips = IPs("10.128.0.0", 22, endpoints, rng)  # inside a 10.128.0.0/10 pod range
        self.nodes = [f"node-{i:03d}" for i in range(max(3, endpoints // 60))]
        self.services: list[Svc] = []
        svc_ip = iter(self.svc_ips.initial)
        for i in range(services):
            ns = self.namespaces[i % namespaces]
            name = f"{rng.choice(SERVICE_WORDS)}-{rng.choice(SERVICE_WORDS)}-{i}"  # the index keeps names unique
            headless = i % 2 == 1  # half headless, spread over every namespace
            ports = rng.sample(SERVICE_PORTS, rng.randint(1, 2))
            self.services.append(Svc(ns, name, self._uid(), None if headless else next(svc_ip), ports,
                                     statefulset=headless and rng.random() < 0.3))
        # Skewed sizes, every Service >= 1 endpoint when there are enough: most small, a few big.
        sizes = _apportion(endpoints, [_weight(rng) for _ in self.services], 1)
        pod_ip = iter(self.pod_ips.initial)
        for svc, size in zip(self.services, sizes, strict=True):
            pods = [self._pod(svc, j, next(pod_ip)) for j in range(size)]
            # Every Service has at least one slice (an empty one for no endpoints, as the controller makes).
            chunks = [pods[k:k + MAX_SLICE] for k in range(0, len(pods), MAX_SLICE)] or [[]]
            svc.slices = [Slice(f"{svc.name}-{self._suffix()}", chunk) for chunk in chunks]

    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _suffix(self) -> str:
        return "".join(self.rng.choices("bcdfghjklmnpqrstvwxz2456789", k=5))

    def _pod(self, svc: Svc, ordinal: int, ip: str, hostname: str | None = None) -> Pod:
        rng = self.rng
        if svc.statefulset:
            name = hostname or f"{svc.name}-{ordinal}"
        else:
            name = f"{svc.name}-{rng.getrandbits(32):08x}-{self._suffix()}"
        node = rng.randrange(len(self.nodes))
        return Pod(ip, rng.random() >= 0.02, name, self._uid(), self.nodes[node], f"zone-{'abc'[node % 3]}",
                   hostname=name if svc.statefulset else "")

    # -- Kubernetes objects (the fake API's builders, plus what real objects carry) --------------
    def service_object(self, svc: Svc) -> dict[str, Any]:
        from k8s_api import service

        obj = service(svc.namespace, svc.name, cluster_ip=svc.cluster_ip,
                      ports=[{"name": n, "port": p, "protocol": "TCP", "targetPort": t} for n, p, t in svc.ports],
                      labels={"app.kubernetes.io/name": svc.name, "app.kubernetes.io/part-of": svc.namespace},
                      selector={"app.kubernetes.io/name": svc.name})
        obj["metadata"]["uid"] = svc.uid  # fixed, so slices can name their owner
        return obj

    def slice_object(self, svc: Svc, sl: Slice) -> dict[str, Any]:
        from k8s_api import endpoint_slice

        obj = endpoint_slice(svc.namespace, sl.name, svc.name, endpoints=(),
                             ports=[(n, t, "TCP") for n, _, t in svc.ports],
                             labels={"app.kubernetes.io/name": svc.name})
        # The builder deep-copies each endpoint through JSON (~10 us each, 1 s per 100k): ours are fresh dicts.
        obj["endpoints"] = [p.endpoint(svc.namespace) for p in sl.pods] or None
        obj["metadata"]["generateName"] = f"{svc.name}-"
        obj["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": svc.name, "uid": svc.uid,
                                               "controller": True, "blockOwnerDeletion": True}]
        return obj

    def objects(self) -> Iterator[dict[str, Any]]:
        from k8s_api import namespace

        for ns in self.namespaces:
            yield namespace(ns)
        for svc in self.services:
            yield self.service_object(svc)
            for sl in svc.slices:
                yield self.slice_object(svc, sl)

    # -- changes ---------------------------------------------------------------------------------
    def change_cluster_ip(self, svc: Svc) -> tuple[dict[str, Any], Probe]:
        svc.cluster_ip = self.svc_ips.new()
        return self.service_object(svc), Probe("service", svc.fqdn, A_TYPE, (svc.cluster_ip,))

    def change_endpoint(self, svc: Svc) -> tuple[dict[str, Any], Probe | None]:
        """A pod replaced: one endpoint of one slice gets a new pod (new IP, same hostname if any).
        Only a headless Service's endpoints show in DNS; for a ClusterIP Service there is nothing to probe."""
        sl = self.rng.choice([s for s in svc.slices if s.pods])
        j = self.rng.randrange(len(sl.pods))
        old = sl.pods[j]
        new = self._pod(svc, j, self.pod_ips.new(), hostname=old.hostname or None)
        new.ready = True
        sl.pods[j] = new
        probe = Probe("endpoint", new.dns_name(svc), A_TYPE, (new.ip,)) if svc.headless else None
        return self.slice_object(svc, sl), probe

    def stats(self) -> dict[str, int]:
        pods = [p for s in self.services for p in s.pods()]
        return {
            "namespaces": len(self.namespaces),
            "services": len(self.services),
            "headless": sum(s.headless for s in self.services),
            "statefulset_like": sum(s.statefulset for s in self.services),
            "endpointslices": sum(len(s.slices) for s in self.services),
            "endpoints": len(pods),
            "ready_endpoints": sum(p.ready for p in pods),
            "largest_service": max((sum(len(sl.pods) for sl in s.slices) for s in self.services), default=0),
        }

    def query_lines(self, count: int, avoid: set[str]) -> list[str]:
        """dnsperf lines, all of names that exist for the whole run (``avoid``: names an update removes)."""
        rng = random.Random(self.rng.random())
        clusterip = [s for s in self.services if not s.headless]
        # A answers of at most 20 addresses fit in 512 bytes without EDNS: no truncation, no TCP retries.
        small = [s for s in self.services if s.headless and 1 <= sum(p.ready for p in s.pods()) <= 20]
        pods = [p.dns_name(s) for s in small for p in s.pods() if p.ready]
        pods = [n for n in pods if n not in avoid]
        if not clusterip or not small or not pods:
            raise ValueError("the cluster is too small for the query mix")
        # A hot set, as in real traffic (and so a short warm-up fills every worker's answer table).
        clusterip, small, pods = rng.sample(clusterip, min(2000, len(clusterip))), rng.sample(small, min(500, len(small))), \
            rng.sample(pods, min(1000, len(pods)))
        lines = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.6:
                lines.append(f"{rng.choice(clusterip).fqdn} A")
            elif roll < 0.7:
                svc = rng.choice(clusterip)
                lines.append(f"_{rng.choice(svc.ports)[0]}._tcp.{svc.fqdn} SRV")
            elif roll < 0.85:
                lines.append(f"{rng.choice(small).fqdn} A")
            else:
                lines.append(f"{rng.choice(pods)} A")
        return lines


def _weight(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.6:
        return rng.uniform(1, 4)
    if roll < 0.9:
        return rng.uniform(5, 25)
    return rng.uniform(30, 150) if roll < 0.99 else rng.uniform(200, 600)


def _apportion(total: int, weights: list[float], minimum: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder), each share >= ``minimum`` if possible."""
    base = min(minimum, total // len(weights)) if weights else 0
    rest = total - base * len(weights)
    raw = [rest * w / sum(weights) for w in weights]
    shares = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)[: rest - sum(shares)]:
        shares[i] += 1
    return [s + base for s in shares]


# ---------------------------------------------------------------- DNS on the wire (tiny, for the prober)

def dns_query(qid: int, name: str, qtype: int) -> bytes:
    qname = b"".join(bytes((len(p),)) + p for p in name.encode().split(b".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n


def dns_reply(data: bytes) -> tuple[int, int, set[str]]:
    """(id, rcode, A addresses in the answer section); dnslib would cost ~10x more per poll."""
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
        sock.send(dns_query(qid, name, qtype))
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionError):
            while time.monotonic() < deadline:
                rid, rcode, found = dns_reply(sock.recv(65535))
                if rid == qid:
                    return rcode, found
    return None


# ---------------------------------------------------------------- the prober (a separate process)

@dataclass
class Probe:
    kind: str  # "service" (clusterIP) | "endpoint"
    name: str
    qtype: int
    expect: tuple[str, ...]  # the A answer that shows the change, exactly


@dataclass(eq=False)  # identity: two probes of one name are still two probes
class _Pending:
    job: dict[str, Any]
    query: bytes  # with ID 0; each poll gets its own ID
    expect: set[str]
    t0: float
    next_send: float = 0.0
    inflight: int | None = None
    sent_at: float = 0.0
    polls: int = 0


def probe_main(port: int, interval: float, cap: float) -> int:
    """Read jobs (JSON lines: id, name, qtype, expect, t0 = time.monotonic() of the event) on stdin;
    poll each name every ``interval`` s until the answer is exactly ``expect`` or ``cap`` s passed;
    write one JSON line per job: latency from t0 to the matching answer (CLOCK_MONOTONIC is system-wide)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us (Ctrl-C reaches the whole group)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    os.set_blocking(stdin.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "dns")
    sel.register(stdin, selectors.EVENT_READ, "jobs")
    pending: list[_Pending] = []
    by_qid: dict[int, _Pending] = {}
    qid = 0
    buffered = b""
    closing = False
    out = sys.stdout

    def finish(p: _Pending, latency: float | None, rcode: int | None = None) -> None:
        pending.remove(p)
        out.write(json.dumps({**p.job, "latency": latency, "polls": p.polls, "rcode": rcode}) + "\n")
        out.flush()

    while pending or not closing:
        now = time.monotonic()
        for p in list(pending):
            if now - p.t0 > cap:
                finish(p, None)
            elif (p.inflight is None or now - p.sent_at > 0.1) and now >= p.next_send:  # 100 ms: lost, resend
                qid = (qid + 1) & 0xFFFF
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    sock.send(struct.pack("!H", qid) + p.query[2:])
                by_qid[qid] = p
                p.inflight, p.sent_at, p.polls = qid, now, p.polls + 1
        waits = [p.next_send - now for p in pending if p.inflight is None]
        timeout = None if not pending else min([interval, *waits])
        for key, _ in sel.select(None if timeout is None else max(0.0, timeout)):
            if key.data == "jobs":
                chunk = stdin.read(65536)
                if chunk is None:  # spurious wake-up: nothing to read after all
                    continue
                if not chunk:
                    closing = True
                    sel.unregister(stdin)
                    continue
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip() == b"END":
                        closing = True
                    elif line.strip():
                        job = json.loads(line)
                        pending.append(_Pending(job, dns_query(0, job["name"], job["qtype"]), set(job["expect"]), job["t0"]))
                continue
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, ConnectionError):
                    break
                got = time.monotonic()
                rid, rcode, found = dns_reply(data)
                p = by_qid.pop(rid, None)
                if p is None or p not in pending or p.inflight != rid:
                    continue  # a late answer to a poll we already gave up on
                if found == p.expect:
                    finish(p, got - p.t0, rcode)
                else:
                    p.inflight, p.next_send = None, p.sent_at + interval
    return 0


class Prober:
    """The prober process, fed from this one; results gathered by a reader thread."""

    def __init__(self, procs: Procs, port: int, interval: float, cap: float, log_dir: Path) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "_probe", "--port", str(port),
                "--interval", str(interval), "--cap", str(cap)]
        self.proc = procs.start(argv, log_dir / "prober.err", stdin=True, stdout=True)
        self.results: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._ids = 0
        self._reader = threading.Thread(target=self._read, name="prober-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.results.append(json.loads(line))
                self._cond.notify_all()

    def submit(self, probe: Probe, t0: float, **extra: Any) -> int:
        assert self.proc.stdin is not None
        self._ids += 1
        job = {"id": self._ids, "kind": probe.kind, "name": probe.name, "qtype": probe.qtype,
               "expect": list(probe.expect), "t0": t0, **extra}
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        return self._ids

    def wait(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The first ``count`` results (fewer if ``timeout`` passes)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.results) >= count, timeout)
            return list(self.results[:count])


# ---------------------------------------------------------------- processes

class Procs:
    """Every process we start, each in its own session, ended by process group (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None, stdin: bool = False,
              stdout: bool = False) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if stdout else err, stderr=err, cwd=ROOT, env=env,
                                    start_new_session=True)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group: dnsd's workers and resource tracker too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, or a leader that ignored SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, grace=3.0)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(path: str) -> float:
    """utime + stime of /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat; 0 if gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def group_cpu(pgid: int) -> float:
    return sum(cpu_seconds(f"/proc/{pid}/stat") for pid in group_pids(pgid))


def system_busy() -> float:
    """user + nice + system CPU seconds of the whole machine."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / CLK_TCK


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


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


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


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log_path: Path | None = None, interval: float = 0.02) -> float:
    """Poll until true; fail early if ``proc`` exits. Returns time.monotonic() when it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"{what}: dnsd exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:g} s")
        time.sleep(interval)


# ---------------------------------------------------------------- the measurements

def pct(values: list[float], q: float) -> float:
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)] if ranked else math.nan


def synced_lines(log_path: Path, started_wall: float) -> dict[str, dict[str, float]]:
    """dnsd's ``<origin>: synced N objects in X s`` lines, with when they were logged (s after start)."""
    out: dict[str, dict[str, float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        m = SYNCED_LINE.match(line)
        if m and m.group(2) not in out:
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out[m.group(2)] = {"objects": int(m.group(3)), "seconds": float(m.group(4)), "logged_at_s": at - started_wall}
    return out


def fake_list_stats(api: Any) -> dict[str, dict[str, float]]:
    """What the fake API spent serving list pages, per resource (its own handler time, not the transfer)."""
    out: dict[str, dict[str, float]] = {}
    for r in api.requests(verb="list"):
        s = out.setdefault(r.resource, {"pages": 0, "server_s": 0.0})
        s["pages"] += 1
        s["server_s"] = round(s["server_s"] + (r.duration or 0.0), 3)
    return out


def start_profile(procs: Procs, path: Path, pid: int, tmp: Path) -> subprocess.Popen[bytes]:
    """py-spy (not a project dependency: ``pip install py-spy``) sampling dnsd from its start until it answers."""
    if shutil.which("py-spy") is None:
        raise RuntimeError("--profile needs py-spy on the PATH (pip install py-spy)")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")  # raw: collapsed stacks, greppable
    path.parent.mkdir(parents=True, exist_ok=True)
    return procs.start(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads", "--subprocesses",
                        "--format", fmt, "--output", str(path.resolve())], tmp / "py-spy.log")


def stop_profile(procs: Procs, spy: subprocess.Popen[bytes], path: Path) -> None:
    os.kill(spy.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(30)
    procs.stop(spy, grace=1)
    log(f"profile of the sync in {path}")


def other_load(ours: Callable[[], float], window: float = 0.5) -> float:
    """Cores used by processes that are not ours over ``window`` s (the machine is shared)."""
    busy0, ours0 = system_busy(), ours()
    time.sleep(window)
    return max(0.0, (system_busy() - busy0 - (ours() - ours0)) / window)


def run_dnsperf(procs: Procs, pin: list[str], port: int, queries: Path, seconds: float, rate: int,
                out: Path) -> subprocess.Popen[bytes]:
    # Open loop at a fixed rate; -q gives 200 ms worth of slots so a stalled server does not pause the schedule.
    argv = [*pin, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", f"{seconds:g}",
            "-Q", str(rate), "-q", str(max(100, rate // 5)), "-c", "4", "-T", "1", "-t", "1", "-v"]
    return procs.start(argv, out, stdout=False)


def dnsperf_result(out: Path) -> dict[str, Any]:
    text = out.read_text(errors="replace")

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else math.nan

    codes = dict((code, int(n)) for code, n in re.findall(r"\b([A-Z]+) (\d+) \(", text.split("Response codes:", 1)[-1]
                                                          .split("\n", 1)[0]))
    latencies, timeouts = [], 0
    for line in text.splitlines():
        if line.startswith("> "):
            parts = line.split()
            if parts[1] == "T":
                timeouts += 1
            elif parts[1] != "I":
                latencies.append(float(parts[-1]) * 1000)
    completed = num(r"Queries completed:\s+(\d+)")
    return {
        "sent": int(num(r"Queries sent:\s+(\d+)")) if "Queries sent" in text else 0,
        "completed": int(completed) if completed == completed else 0,
        "lost": int(num(r"Queries lost:\s+(\d+)")) if "Queries lost" in text else 0,
        "timeouts": timeouts,
        "rcodes": codes,
        "errors": sum(n for code, n in codes.items() if code != "NOERROR"),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "latency_p50_ms": pct(latencies, 0.5), "latency_p99_ms": pct(latencies, 0.99),
        "latency_max_ms": max(latencies, default=math.nan),
    }


@dataclass
class Plan:
    """Updates prepared before the timed phase, so the loop only calls the fake API."""

    objs: list[dict[str, Any]]
    probes: list[Probe | None]
    kinds: list[str]


def plan_updates(cluster: Cluster, count: int, used: set[tuple[str, str]], endpoints_of: str = "any") -> Plan:
    """Alternating clusterIP and endpoint changes of random Services (``endpoints_of`` "headless": only those,
    whose endpoints show in DNS). Each Service is changed at most once (``used`` is shared between plans), so
    a probe never waits for data that a later update already replaced."""
    rng = cluster.rng
    clusterip = [s for s in cluster.services if not s.headless]
    with_pods = [s for s in cluster.services if any(sl.pods for sl in s.slices)
                 and (s.headless or endpoints_of == "any")]
    rng.shuffle(clusterip)
    rng.shuffle(with_pods)
    plan = Plan([], [], [])
    for i in range(count):
        pool = clusterip if i % 2 == 0 or endpoints_of == "none" else with_pods
        while pool and (pool[-1].namespace, pool[-1].name) in used:
            pool.pop()
        if not pool:
            break
        svc = pool.pop()
        used.add((svc.namespace, svc.name))
        obj, probe = cluster.change_cluster_ip(svc) if pool is clusterip else cluster.change_endpoint(svc)
        plan.objs.append(obj)
        plan.probes.append(probe)
        plan.kinds.append("service" if pool is clusterip else ("endpoint" if probe else "endpoint (ClusterIP, not in DNS)"))
    return plan


def summarize_probes(results: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [r["latency"] * 1000 for r in results if r["latency"] is not None]
    out: dict[str, Any] = {"checked": len(results), "answered": len(lat), "timeouts_1s": len(results) - len(lat),
                           "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat, default=math.nan)}
    if len(lat) < len(results):
        # A missed probe counts as slower than everything else for p99 (it never showed within the cap).
        out["p99_ms"] = pct(lat + [math.inf] * (len(results) - len(lat)), 0.99)
    for kind in sorted({r["kind"] for r in results}):
        kl = [r["latency"] * 1000 for r in results if r["kind"] == kind and r["latency"] is not None]
        out[kind] = {"checked": sum(r["kind"] == kind for r in results), "p50_ms": pct(kl, 0.5),
                     "p99_ms": pct(kl, 0.99), "max_ms": max(kl, default=math.nan)}
    return out


def measure(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from k8s_api import FakeKubeAPI

    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2 and args.workers < len(cpus)
    dnsd_pin: list[str] = []
    if pinned:
        # dnsd (its one process) on the first CPU; this process (the fake API's thread included, as threads
        # and children inherit the mask), the prober and dnsperf on the others.
        dnsd_pin = ["taskset", "-c", str(cpus[0])]
        os.sched_setaffinity(0, cpus[1:])
    result["meta"]["pinning"] = (f"dnsd on CPU {cpus[0]}; fake API, prober and dnsperf on CPU {','.join(map(str, cpus[1:]))}"
                                 if pinned else "none")
    log(f"pinning: {result['meta']['pinning']}")

    # -- 1. the cluster, in the fake API ---------------------------------------------------------
    t = time.monotonic()
    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed)
    stats = cluster.stats()
    objs = list(cluster.objects())
    gen_s = time.monotonic() - t
    api = FakeKubeAPI(backlog=50_000, bookmark_interval=5.0, log_limit=1_000_000)
    api.start()
    try:
        _with_api(args, procs, tmp, result, api, cluster, stats, objs, gen_s, dnsd_pin)
    finally:
        api.stop()


def _with_api(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any], api: Any, cluster: Cluster,
              stats: dict[str, int], objs: list[dict[str, Any]], gen_s: float, dnsd_pin: list[str]) -> None:
    t = time.monotonic()
    api.load(objs)
    load_s = time.monotonic() - t
    result["cluster"] = {**stats, "objects": len(objs), "generate_s": round(gen_s, 2), "fake_load_s": round(load_s, 2)}
    log(f"cluster: {stats['services']} Services ({stats['headless']} headless) in {stats['namespaces']} namespaces, "
        f"{stats['endpoints']} endpoints in {stats['endpointslices']} EndpointSlices; built in {gen_s:.1f} s, "
        f"loaded into the fake API in {load_s:.1f} s")
    # Everything is prepared now, so nothing heavy runs in the timed parts: the name that tells the sync is
    # done (a headless endpoint's own name needs both lists), the updates (the model then holds their
    # result), the queries (names that exist all along: new pods' names are left out).
    sync_svc = next(s for s in reversed(cluster.services) if s.headless and any(p.ready for p in s.pods()))
    sync_pod = next(p for p in sync_svc.pods() if p.ready)
    sync_probe = Probe("sync", sync_pod.dns_name(sync_svc), A_TYPE, (sync_pod.ip,))
    used = {(sync_svc.namespace, sync_svc.name)}
    one_service = plan_updates(cluster, 1, used, endpoints_of="none")
    one_slice = plan_updates(cluster, 2, used, endpoints_of="headless")  # [clusterIP, endpoint]: the 2nd is ours
    plan = plan_updates(cluster, int(args.updates_per_second * args.duration), used)
    avoid = {p.name for p in (*plan.probes, *one_slice.probes) if p is not None}
    queries = tmp / "queries.txt"
    queries.write_text("\n".join(cluster.query_lines(10_000, avoid)) + "\n")
    del objs
    # The fake API shares this process's GIL: a full collection over millions of generated objects
    # would pause it for hundreds of ms in the middle of a measurement. Freeze them out of the GC.
    gc.collect()
    gc.freeze()
    kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")

    # -- 2. dnsd: sync, memory, records ---------------------------------------------------------
    port, http_port = free_port(), free_port()
    dnsd_log = tmp / "dnsd.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [*dnsd_pin, sys.executable, "-m", "dnsd", "serve", "--kubeconfig", str(kubeconfig), "--port", str(port),
            "--address", "127.0.0.1", "--workers", str(args.workers), "--http-address", f"127.0.0.1:{http_port}",
            "--upstream", "none"]
    fake_thread = f"/proc/self/task/{api._thread.native_id}/stat"  # the fake API's loop thread
    fake_cpu0, own_cpu0, busy0 = cpu_seconds(fake_thread), cpu_seconds("/proc/self/stat"), system_busy()
    api.reset_stats()
    started_wall, started = time.time(), time.monotonic()
    dnsd = procs.start(argv, dnsd_log, env=env)
    log(f"dnsd started (pid {dnsd.pid}, DNS port {port}, HTTP port {http_port})")
    spy = start_profile(procs, args.profile, dnsd.pid, tmp) if args.profile else None

    def ready() -> bool:
        got = http_get(http_port, "/ready", timeout=1)
        return got is not None and got[0] == 200

    health_at = wait_for(lambda: http_get(http_port, "/health", timeout=1) is not None, args.sync_timeout,
                         "dnsd /health", dnsd, dnsd_log)
    ready_at = wait_for(ready, args.sync_timeout, "dnsd /ready", dnsd, dnsd_log)
    dnsd_cpu_sync = group_cpu(dnsd.pid)
    fake_cpu_sync = cpu_seconds(fake_thread) - fake_cpu0
    others_sync = (system_busy() - busy0 - dnsd_cpu_sync - (cpu_seconds("/proc/self/stat") - own_cpu0)) / (ready_at - started)
    # /ready is the store's view; with --workers N the workers build their own index after it: also time the
    # first correct answer for a name that needs both lists.
    answers_at = wait_for(lambda: (ask(port, sync_probe.name) or (0, set()))[1] == set(sync_probe.expect),
                          args.sync_timeout, "dnsd answering", dnsd, dnsd_log, interval=0.005)
    if spy is not None:
        stop_profile(procs, spy, args.profile)
    # With workers the figures reach the supervisor once a second, and a worker may still be building its
    # index: wait until every Service is counted and two reports agree (so is the memory then).
    scraped: list[Metrics] = []

    def settled() -> bool:
        scraped.append(Metrics.scrape(http_port))
        last, prev = scraped[-1], scraped[-2] if len(scraped) > 1 else None
        return (last.services >= len(cluster.services) and prev is not None and last.records == prev.records
                and last.prog_count == prev.prog_count)

    wait_for(settled, 30, "dnsd_services and dnsd_records to settle", dnsd, dnsd_log,
             interval=1.1 if args.workers > 1 else 0.2)
    after_sync = scraped[-1]
    mem_sync = memory(dnsd.pid)
    origins = synced_lines(dnsd_log, started_wall)
    result["sync"] = {
        "start_to_health_s": round(health_at - started, 3),
        "start_to_ready_s": round(ready_at - started, 3),
        "start_to_answers_s": round(answers_at - started, 3),
        "origins": origins,
        # The main process builds the one index (with --workers N, in the shared file).
        "index_build": {"batches": int(after_sync.prog_count), "sum_s": round(after_sync.prog_sum, 3)},
        "dnsd_cpu_s": round(dnsd_cpu_sync, 2),
        "fake_api_cpu_s": round(fake_cpu_sync, 2),
        "other_processes_cores": round(max(0.0, others_sync), 2),
        "fake_api_lists": fake_list_stats(api),
    }
    result["memory_after_sync"] = {"total_rss_mb": round(sum(p["rss_mb"] for p in mem_sync), 1), "processes": mem_sync}
    result["records"] = int(after_sync.records)
    result["services"] = int(after_sync.services)
    log(f"ready {ready_at - started:.2f} s after start (HTTP up at {health_at - started:.2f} s, answering at "
        f"{answers_at - started:.2f} s); " + ", ".join(f"{o} {v['objects']} in {v['seconds']:.2f} s"
                                                       for o, v in origins.items()))
    per_process = ", ".join(f"{p['role']} {p['rss_mb']:.0f}" for p in mem_sync)
    log(f"RSS {result['memory_after_sync']['total_rss_mb']:.0f} MB ({per_process}); dnsd_records {result['records']}")

    # -- 3. one change -----------------------------------------------------------------------------
    prober = Prober(procs, port, args.probe_interval, args.probe_cap, tmp)
    # The prober's first poll also warms it up (imports, socket): give it a name that answers at once.
    prober.submit(sync_probe, time.monotonic())
    prober.wait(1, 10)
    one: dict[str, Any] = {}
    settle = 1.3 if args.workers > 1 else 0.0  # workers report their programming times once a second
    for label, obj, probe in (("service_cluster_ip", one_service.objs[0], one_service.probes[0]),
                              ("endpointslice", one_slice.objs[1], one_slice.probes[1])):
        assert probe is not None
        before = Metrics.scrape(http_port)
        expected = len(prober.results) + 1
        api.update(obj)
        t0 = time.monotonic()
        prober.submit(probe, t0)
        got = prober.wait(expected, args.probe_cap + 5)
        if len(got) < expected:
            raise RuntimeError("the prober did not report")
        res = got[-1]
        time.sleep(settle)
        delta: dict[str, Any] = {}

        def counted(delta: dict[str, Any] = delta, before: Metrics = before) -> bool:
            delta.update(Metrics.scrape(http_port).since(before))
            return delta["batches"] >= 1  # the main process applies (and times) it; workers only drop replies

        with contextlib.suppress(RuntimeError):
            wait_for(counted, 3, "the change in dnsd_programming_duration_seconds", interval=0.1)
        one[label] = {"applied": delta, "event_to_answer_ms": None if res["latency"] is None else res["latency"] * 1000,
                      "name": probe.name}
        log(f"one change ({label}): applied in {delta.get('mean_ms', math.nan):.2f} ms "
            f"({delta.get('batches')} batch(es)); event->answer {_fmt_ms(one[label]['event_to_answer_ms'])}")
    result["one_change"] = one

    # -- 4. updates under query load --------------------------------------------------------------
    gen_pin = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))))] if dnsd_pin else []
    # Warm-up, not measured: passes over the query file, so dnsd's rendered-answer table is as in a server
    # that has been running (a first query costs ~0.2 ms in the full path, a repeat ~0.01 ms). Workers each
    # have their own table and SO_REUSEPORT spreads by source port: 16 sockets and 3 passes reach them all.
    t = time.monotonic()
    warm = procs.start([*gen_pin, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-n", "3",
                        "-l", "15", "-q", "50", "-c", "16", "-t", "1"], tmp / "warmup.txt")
    with contextlib.suppress(subprocess.TimeoutExpired):
        warm.wait(30)
    procs.stop(warm, grace=1)
    result["warmup_s"] = round(time.monotonic() - t, 2)
    perf_out = tmp / "dnsperf.txt"
    before = Metrics.scrape(http_port)
    cpu0 = (group_cpu(dnsd.pid), cpu_seconds(fake_thread), system_busy(), time.monotonic(),
            cpu_seconds("/proc/self/stat"), cpu_seconds(f"/proc/{prober.proc.pid}/stat"))
    perf = run_dnsperf(procs, gen_pin, port, queries, args.duration + 1.0, args.qps, perf_out)
    time.sleep(0.5)  # dnsperf at its rate before the first update
    n = len(plan.objs)
    log(f"{n} updates over {args.duration:g} s ({args.updates_per_second:g}/s) with dnsperf at {args.qps} qps")
    first = len(prober.results)
    submitted, lag = 0, []
    t_start = time.monotonic()
    for i, (obj, probe) in enumerate(zip(plan.objs, plan.probes, strict=True)):
        due = t_start + i / args.updates_per_second
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        lag.append(time.monotonic() - due)
        api.update(obj)
        t0 = time.monotonic()
        if probe is not None:
            prober.submit(probe, t0, seq=i)
            submitted += 1
    updates_s = time.monotonic() - t_start
    results = prober.wait(first + submitted, args.probe_cap + 5)[first:]
    perf_cpu = cpu_seconds(f"/proc/{perf.pid}/stat")  # before it is reaped
    with contextlib.suppress(subprocess.TimeoutExpired):
        perf.wait(args.duration + 15)
    cpu1 = (group_cpu(dnsd.pid), cpu_seconds(fake_thread), system_busy(), time.monotonic(),
            cpu_seconds("/proc/self/stat"), cpu_seconds(f"/proc/{prober.proc.pid}/stat"))
    time.sleep(settle)
    load = Metrics.scrape(http_port).since(before)
    wall = cpu1[3] - cpu0[3]
    dnsd_cores, fake_cores = (cpu1[0] - cpu0[0]) / wall, (cpu1[1] - cpu0[1]) / wall
    mem_load = memory(dnsd.pid)
    result["under_load"] = {
        "updates": n, "updates_s": round(updates_s, 2), "achieved_updates_per_s": round(n / updates_s, 1),
        "schedule_lag_max_ms": round(max(lag, default=0.0) * 1000, 1),
        "kinds": {k: plan.kinds.count(k) for k in sorted(set(plan.kinds))},
        "event_to_answer": summarize_probes(results),
        "applied": load,
        "queries": dnsperf_result(perf_out),
        "cpu_cores": {"dnsd": round(dnsd_cores, 2), "fake_api": round(fake_cores, 2),
                      "bench_process": round((cpu1[4] - cpu0[4]) / wall, 2), "prober": round((cpu1[5] - cpu0[5]) / wall, 2),
                      "dnsperf_at_least": round(perf_cpu / wall, 2), "machine": round((cpu1[2] - cpu0[2]) / wall, 2),
                      # Other users of this shared machine (a test suite, another benchmark) during the phase.
                      "other_processes": round(max(0.0, (cpu1[2] - cpu0[2] - (cpu1[0] - cpu0[0]) - (cpu1[4] - cpu0[4])
                                                         - (cpu1[5] - cpu0[5]) - perf_cpu) / wall), 2)},
        # Per update, in order: when it was applied (s into the phase) and its event-to-answer (s; None: not seen).
        "samples": [[r["seq"], r["kind"], round(r["t0"] - t_start, 4), r["latency"]] for r in results],
        "memory": {"total_rss_mb": round(sum(p["rss_mb"] for p in mem_load), 1), "processes": mem_load},
    }
    e2a, q = result["under_load"]["event_to_answer"], result["under_load"]["queries"]
    log(f"event->answer: {e2a['checked']} checked, p50 {_fmt_ms(e2a['p50_ms'])} p99 {_fmt_ms(e2a['p99_ms'])} "
        f"max {_fmt_ms(e2a['max_ms'])}; queries {q['qps']:.0f} qps, {q['lost']} lost, {q['errors']} errors")
    procs.stop(prober.proc, grace=2)
    procs.stop(dnsd)
    if dnsd_log.exists():
        problems = [line for line in dnsd_log.read_text(errors="replace").splitlines()
                    if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        result["dnsd_log_problems"] = problems[:50]


# ---------------------------------------------------------------- memory at several worker counts

def pss(pgid: int) -> list[dict[str, Any]]:
    """PSS and RSS (MB) of every process in dnsd's group, from /proc/PID/smaps_rollup."""
    out = []
    for p in memory(pgid):
        try:
            rollup = Path(f"/proc/{p['pid']}/smaps_rollup").read_text()
        except OSError:
            continue
        values = {k: int(v) / 1024 for k, v in re.findall(r"^(Pss|Rss|Pss_Anon|Pss_File|Pss_Shmem):\s+(\d+) kB", rollup, re.M)}
        # Anon is the heap; File the mapped code and the shared index file (shared pages split between their mappers)
        out.append({"pid": p["pid"], "role": p["role"], "pss_mb": round(values.get("Pss", 0.0), 1),
                    "rss_mb": round(values.get("Rss", 0.0), 1), "pss_anon_mb": round(values.get("Pss_Anon", 0.0), 1),
                    "pss_file_mb": round(values.get("Pss_File", 0.0) + values.get("Pss_Shmem", 0.0), 1)})
    return out


def every_name(cluster: Cluster) -> list[str]:
    """dnsperf lines for every name a Service gives: its own, its SRV names, its ready pods' names."""
    lines = []
    for svc in cluster.services:
        lines.append(f"{svc.fqdn} A")
        lines += [f"_{name}._tcp.{svc.fqdn} SRV" for name, _, _ in svc.ports]
        if svc.headless:
            lines += [f"{p.dns_name(svc)} A" for p in svc.pods() if p.ready]
    return lines


def memory_runs(args: argparse.Namespace, procs: Procs, tmp: Path, result: dict[str, Any]) -> None:
    """For each worker count: sync, query every name ``--passes`` times, PSS; three forced relists, again."""
    sys.path.insert(0, str(ROOT / "tests"))
    from k8s_api import FakeKubeAPI

    cluster = Cluster(args.services, args.endpoints, args.namespaces, args.seed)
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
            env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            argv = [sys.executable, "-m", "dnsd", "serve", "--kubeconfig", str(kubeconfig), "--port", str(port),
                    "--address", "127.0.0.1", "--workers", str(workers), "--http-address", f"127.0.0.1:{http_port}",
                    "--upstream", "none"]
            dnsd = procs.start(argv, dnsd_log, env=env)
            started = time.monotonic()
            wait_for(lambda port=http_port: (http_get(port, "/ready", timeout=1) or (0,))[0] == 200,
                     args.sync_timeout, "dnsd /ready", dnsd, dnsd_log)
            ready_s = time.monotonic() - started

            def query_all(path: Path = names, passes: int = args.passes, workers: int = workers, port: int = port) -> None:
                # Many sockets: SO_REUSEPORT spreads them over the workers, so each one's table fills too.
                run = procs.start(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(path), "-n",
                                   str(passes), "-l", "90", "-q", "200", "-c", str(max(16, 8 * workers))],
                                  tmp / f"every-name-{workers}.txt")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(100)
                procs.stop(run, grace=1)

            time.sleep(1.5)
            synced = pss(dnsd.pid)  # no query yet: imports, records and index, no rendered reply
            query_all(services, 1)  # the issue's first figure: every Service name asked once
            time.sleep(1.5)
            services_once = pss(dnsd.pid)
            query_all()
            time.sleep(1.5)  # heap trimming and worker reports settle
            queried = pss(dnsd.pid)
            for _ in range(3):
                count = sum(1 for line in dnsd_log.read_text(errors="replace").splitlines() if SYNCED_LINE.match(line))
                api.restart()  # every watch gets 410: dnsd lists everything again
                wait_for(lambda n=count, path=dnsd_log: sum(
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


# ---------------------------------------------------------------- report

def _fmt_ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "> cap"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    c = r["cluster"]
    rows.append(("cluster", f"{c['services']} Services ({c['headless']} headless), {c['endpoints']} endpoints, "
                            f"{c['endpointslices']} slices", "", None))
    s = r.get("sync")
    if s:
        rows.append(("initial sync: process start -> /ready", f"{s['start_to_ready_s']:.2f} s",
                     f"< {TARGETS['sync_s']:g} s", s["start_to_ready_s"] < TARGETS["sync_s"]))
        rows.append(("  start -> HTTP up (imports, start-up)", f"{s['start_to_health_s']:.2f} s", "", None))
        for origin, v in s["origins"].items():
            rows.append((f"  {origin}: list+convert (log)", f"{v['objects']} objects in {v['seconds']:.2f} s", "", None))
        rows.append(("  index build (programming during sync)",
                     f"{s['index_build']['sum_s']:.2f} s in {s['index_build']['batches']} batches", "", None))
        rows.append(("  start -> first answer needing both lists", f"{s['start_to_answers_s']:.2f} s", "", None))
        rows.append(("  CPU: dnsd / fake API during sync", f"{s['dnsd_cpu_s']:.1f} s / {s['fake_api_cpu_s']:.1f} s", "", None))
    m = r.get("memory_after_sync")
    if m:
        per = ", ".join(f"{p['role']} {p['rss_mb']:.0f} (peak {p['peak_rss_mb']:.0f})" for p in m["processes"])
        rows.append(("RSS after sync (sum of dnsd processes)", f"{m['total_rss_mb']:.0f} MB", f"< {TARGETS['rss_mb']:g} MB",
                     m["total_rss_mb"] < TARGETS["rss_mb"]))
        rows.append(("  per process, MB", per, "", None))
    if "records" in r:
        rows.append(("dnsd_records / dnsd_services", f"{r['records']} / {r['services']}", "", None))
    for label, v in (r.get("one_change") or {}).items():
        applied = v["applied"].get("mean_ms", math.nan)
        ok = None if math.isnan(applied) else applied < TARGETS["apply_ms"]
        rows.append((f"one change applied: {label}", f"{_fmt_ms(applied)} ({v['applied'].get('batches')} batch)",
                     f"< {TARGETS['apply_ms']:g} ms", ok))
        rows.append((f"  event -> answer: {label}", _fmt_ms(v["event_to_answer_ms"]), "", None))
    u = r.get("under_load")
    if u:
        e = u["event_to_answer"]
        rows.append((f"event -> answer under load, p99 ({e['checked']} of {u['updates']} updates checked)",
                     _fmt_ms(e["p99_ms"]), f"< {TARGETS['e2a_p99_ms']:g} ms",
                     e["checked"] > 0 and e["p99_ms"] < TARGETS["e2a_p99_ms"]))
        rows.append(("  p50 / max / not seen within the cap",
                     f"{_fmt_ms(e['p50_ms'])} / {_fmt_ms(e['max_ms'])} / {e['timeouts_1s']}", "", None))
        for kind in ("service", "endpoint"):
            if kind in e:
                k = e[kind]
                rows.append((f"  {kind} changes: p50 / p99 / max ({k['checked']})",
                             f"{_fmt_ms(k['p50_ms'])} / {_fmt_ms(k['p99_ms'])} / {_fmt_ms(k['max_ms'])}", "", None))
        a = u["applied"]
        rows.append(("  applied under load: mean / p99 bucket / max bucket",
                     f"{_fmt_ms(a['mean_ms'])} / <= {_fmt_ms(a['p99_le_ms'])} / <= {_fmt_ms(a['max_le_ms'])} "
                     f"({a['batches']} batches)", "", None))
        rows.append(("  updates applied to the fake API", f"{u['updates']} in {u['updates_s']:.1f} s "
                                                          f"({u['achieved_updates_per_s']:.0f}/s)", "", None))
        q = u["queries"]
        rows.append(("query load during updates (dnsperf)", f"{q['qps']:.0f} qps, {q['lost']} lost, {q['errors']} errors",
                     "0 lost, 0 errors", q["lost"] == 0 and q["errors"] == 0))
        rows.append(("  query latency p50 / p99 / max", f"{_fmt_ms(q['latency_p50_ms'])} / {_fmt_ms(q['latency_p99_ms'])} "
                                                         f"/ {_fmt_ms(q['latency_max_ms'])}", "", None))
        cc = u["cpu_cores"]
        rows.append(("  CPU cores: dnsd / fake API / whole machine", f"{cc['dnsd']:.2f} / {cc['fake_api']:.2f} / "
                                                                     f"{cc['machine']:.2f}", "", None))
        others_sync = s["other_processes_cores"] if s else 0.0
        rows.append(("other processes on the machine: sync / load", f"{others_sync:.2f} / {cc['other_processes']:.2f} cores",
                     "~0 (shared machine)", max(others_sync, cc["other_processes"]) < 0.3))
        rows.append(("RSS after the updates", f"{u['memory']['total_rss_mb']:.0f} MB", f"< {TARGETS['rss_mb']:g} MB",
                     u["memory"]["total_rss_mb"] < TARGETS["rss_mb"]))
    return rows


def table(rows: list[tuple[str, str, str, bool | None]]) -> str:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{'figure':<{w0}}  {'value':<{w1}}  {'target':<{w2}}  ok", "-" * (w0 + w1 + w2 + 10)]
    for fig, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(f"{fig:<{w0}}  {value:<{w1}}  {target:<{w2}}  {mark}".rstrip())
    return "\n".join(lines)


def plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 4)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return ""

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "args": vars(args),
        "commit": git("rev-parse", "--short", "HEAD"), "dirty_dnsd": bool(git("status", "--porcelain", "dnsd")),
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
    }


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000, help="Services (half headless) (default 10000)")
    parser.add_argument("--endpoints", type=int, default=100_000, help="endpoints over all Services (default 100000)")
    parser.add_argument("--updates-per-second", type=float, default=100, help="update rate under load (default 100)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of updates under load (default 10)")
    parser.add_argument("--workers", default="1",
                        help="dnsd --workers (default 1); a list such as 1,2,4 (or 1, for one count) measures only "
                             "memory, for each count: total PSS after sync, after every name is queried --passes "
                             "times, and after three forced relists")
    parser.add_argument("--passes", type=int, default=3, help="memory runs: queries of every name per phase (default 3)")
    parser.add_argument("--qps", type=int, default=5000, help="dnsperf query rate during the updates (default 5000)")
    parser.add_argument("--namespaces", type=int, default=50, help="namespaces (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--probe-interval", type=float, default=0.001, help="seconds between polls of one name (default 0.001)")
    parser.add_argument("--probe-cap", type=float, default=1.0, help="give up on an update after this many s (default 1)")
    parser.add_argument("--sync-timeout", type=float, default=90, help="fail if dnsd is not ready after this many s")
    parser.add_argument("--wait-quiet", type=float, default=20,
                        help="wait up to this many s for other processes to go quiet first (default 20; 0: don't)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin dnsd and the load generators to CPUs")
    parser.add_argument("--json", type=Path, default=OUT / "scale.json",
                        help="where to write the results (default bench/out/scale.json)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy profile of dnsd from start to answering: .svg flame graph, .json speedscope, "
                             "else collapsed stacks (needs py-spy; perturbs the sync figures a little)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (dnsd log, dnsperf output, kubeconfig)")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w]
        args.memory = "," in args.workers
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a number or a comma-separated list of numbers")
    args.workers = args.worker_counts[0]
    if args.services < 4 or args.endpoints < 4 or args.updates_per_second <= 0 or args.duration <= 0 \
            or min(args.worker_counts) < 1 or args.passes < 1:
        parser.error("need --services >= 4, --endpoints >= 4, positive --updates-per-second/--duration, --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_probe"]:
        p = argparse.ArgumentParser()
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--interval", type=float, required=True)
        p.add_argument("--cap", type=float, required=True)
        a = p.parse_args(argv[1:])
        return probe_main(a.port, a.interval, a.cap)
    args = parse_args(argv)
    if shutil.which("dnsperf") is None or shutil.which("taskset") is None:
        log("needs dnsperf and taskset on the PATH (apt-get install dnsperf util-linux)")
        return 2
    procs = Procs()

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)  # cleanup runs on SIGTERM as on Ctrl-C
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-scale-"))
    result: dict[str, Any] = {"meta": meta(args)}
    started = time.monotonic()
    failed = False
    try:
        if args.wait_quiet > 0:
            deadline = time.monotonic() + args.wait_quiet
            while (load := other_load(lambda: cpu_seconds("/proc/self/stat"))) > 0.3 and time.monotonic() < deadline:
                pass
            result["meta"]["other_load_cores_at_start"] = round(load, 2)
            if load > 0.3:
                log(f"WARNING: other processes use {load:.1f} cores: the figures below are pessimistic")
        if args.memory:
            memory_runs(args, procs, tmp, result)
        else:
            measure(args, procs, tmp, result)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        result["error"] = "interrupted"
        failed = True
        return 130
    except Exception as exc:
        failed = True
        log(f"FAILED: {exc}")
        result["error"] = str(exc)
        return 1
    finally:
        procs.stop_all()
        result["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        if "cluster" in result:
            rows = []
            try:
                rows = memory_rows(result) if "memory_runs" in result else summary_rows(result)
                result["summary"] = [{"figure": f.strip(), "value": v, "target": t, "ok": ok} for f, v, t, ok in rows]
            finally:  # the raw figures are kept even if the summary has a bug
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(plain(result), indent=2) + "\n")
            print(table(rows))
            log(f"wrote {args.json} (run took {result['meta']['wall_s']:.0f} s)")
        if args.keep or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
