"""bench/scale's prober: a separate process that polls changed names until dnsd answers with the new
data, and reports event-to-answer for each (CLOCK_MONOTONIC is shared between processes).

    python3 -m bench.scale_probe --port PORT --interval S --cap S     (started by bench/scale)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Procs, a_reply, wire_query

ROOT = Path(__file__).resolve().parent.parent


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
                        pending.append(_Pending(job, wire_query(0, job["name"], job["qtype"]), set(job["expect"]), job["t0"]))
                continue
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, ConnectionError):
                    break
                got = time.monotonic()
                rid, rcode, found = a_reply(data)
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
        argv = [sys.executable, "-m", "bench.scale_probe", "--port", str(port), "--interval", str(interval),
                "--cap", str(cap)]
        self.proc = procs.start(argv, log_dir / "prober.err", cwd=ROOT, stdin=True, stdout=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.scale_probe")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--cap", type=float, required=True)
    args = parser.parse_args(argv)
    return probe_main(args.port, args.interval, args.cap)


if __name__ == "__main__":
    sys.exit(main())
