"""dnstap: what the hit path pays per call, and how many frames/s the writer thread sustains.

    python3 -m bench.dnstap_enqueue [--calls 1000000] [--repeat 5] [--seconds 5] [--reader binary|yaml]

1. Caller side, no writer running (best of --repeat rounds of --calls calls, a realistic query of
   47 bytes and reply of 63): ns per client_query and client_response call while the queue has room
   (timed in chunks of 4,096 calls, the queue emptied between them, as a writer keeps it short; the
   median chunk, best of the rounds), and while it is full (the drop path), each also as ns over an
   empty method of the same signature.
2. Encoding alone: us per CLIENT_RESPONSE message through the writer's encoder (protobuf + frame).
3. Writer to a live reader: golang-dnstap's ``dnstap -u SOCK`` (``--reader binary`` writes the frames to
   /dev/null, the cheapest reader; ``yaml`` formats them as the tests read them, to /dev/null too). For
   --seconds the main thread keeps the queue between a quarter and three quarters full (so nothing is
   dropped and the writer never waits), then: frames/s sent, the writer thread's CPU per frame (from
   /proc: what it takes from the event loop's core and GIL), and ns per call on the caller's side
   while the writer runs beside it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rrset

from bench.common import ensure_packages, log, set_log_tag
from dnsd.observe.dnstap import CLIENT_RESPONSE, CONTENT_TYPE, Dnstap, encoder
from dnsd.observe.framestream import Sender

CLIENT = ("10.244.1.20", 41000)


def messages() -> tuple[bytes, bytes]:
    q = dns.message.make_query("web.default.svc.cluster.local", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("web.default.svc.cluster.local.", 5, "IN", "A", "10.96.0.10"))
    return q.to_wire(), r.to_wire()


class Empty:
    """The same signatures doing nothing: the floor a Python method call costs."""

    def client_query(self, query: bytes, client: tuple[str, int], tcp: bool, when: float) -> None:
        pass

    def client_response(self, query: bytes, response: bytes, client: tuple[str, int], tcp: bool, query_time: float,
                        response_time: float) -> None:
        pass


CHUNK = 4096  # calls timed between two drains of the queue: as when a writer keeps it short


def ns_per_call(tap: Dnstap | Empty, kind: str, calls: int, query: bytes, response: bytes) -> float:
    """ns per call: the median over chunks of CHUNK calls (a chunk in which the OS scheduled us out on a
    busy machine does not move it); the queue is emptied between chunks, untimed."""
    per_chunk = []
    for _ in range(max(1, calls // CHUNK)):
        if kind == "client_query":
            cq = tap.client_query
            start = time.perf_counter_ns()
            for _ in range(CHUNK):
                cq(query, CLIENT, False, 1.0)
        else:
            cr = tap.client_response
            start = time.perf_counter_ns()
            for _ in range(CHUNK):
                cr(query, response, CLIENT, False, 1.0, 2.0)
        per_chunk.append((time.perf_counter_ns() - start) / CHUNK)
        if isinstance(tap, Dnstap) and tap.queue_size > 1:
            tap._queue.clear()
    return statistics.median(per_chunk)


def best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def caller_side(calls: int, repeat: int, query: bytes, response: bytes) -> None:
    for kind in ("client_query", "client_response"):
        caller_kind(kind, calls, repeat, query, response)


def caller_kind(kind: str, calls: int, repeat: int, query: bytes, response: bytes) -> None:
    def room() -> float:
        tap = Dnstap("unix:/nonexistent", queue_size=CHUNK + 1)  # never started: drained by ns_per_call
        return ns_per_call(tap, kind, calls, query, response)

    def full() -> float:
        tap = Dnstap("unix:/nonexistent", queue_size=1)
        tap.client_query(query, CLIENT, False, 1.0)
        return ns_per_call(tap, kind, calls, query, response)

    empty = best(repeat, lambda: ns_per_call(Empty(), kind, calls, query, response))
    r, f = best(repeat, room), best(repeat, full)
    print(f"{kind:16s} queued {r:6.0f} ns/call ({r - empty:+.0f} over an empty method)   "
          f"dropped (queue full) {f:6.0f} ns/call ({f - empty:+.0f})")


def encoding(repeat: int, query: bytes, response: bytes) -> None:
    encode = encoder(b"node-1", b"dnsd")
    item = (CLIENT_RESPONSE, query, response, CLIENT, None, False, 1.0, 2.0)
    n = 200_000
    a, b = socket.socketpair()  # Sender.frame only encodes; the socket is never written
    with a, b:
        sender = Sender(a, CONTENT_TYPE)

        def run() -> float:
            start = time.perf_counter_ns()
            for _ in range(n):
                sender.frame(encode(item))
            return (time.perf_counter_ns() - start) / n / 1000

        print(f"encoding         {best(repeat, run):6.2f} us per CLIENT_RESPONSE frame (protobuf + Frame Streams header)")


def thread_cpu(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def writer(seconds: float, reader_format: str, query: bytes, response: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="dnstap-bench-") as tmp:
        sock = f"{tmp}/dnstap.sock"
        cmd = ["dnstap", "-u", sock, "-w", "/dev/null"] + (["-y"] if reader_format == "yaml" else [])
        reader = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.01)
            size = 8192
            tap = Dnstap(f"unix:{sock}", identity=b"node-1", queue_size=size)
            tap.start()
            while not tap.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            if not tap.connected:
                raise SystemExit("the writer did not connect to the reader")
            assert tap._thread is not None and tap._thread.native_id is not None
            tid = tap._thread.native_id
            cr = tap.client_response
            pushed, push_ns = 0, 0
            sent0, cpu0, start = tap.sent, thread_cpu(tid), time.monotonic()
            end = start + seconds
            while time.monotonic() < end:
                if tap.queued < size // 4:
                    t = time.perf_counter_ns()
                    for _ in range(size // 2):
                        cr(query, response, CLIENT, False, 1.0, 2.0)
                    push_ns += time.perf_counter_ns() - t
                    pushed += size // 2
                else:
                    time.sleep(0.0005)
            elapsed, frames, cpu = time.monotonic() - start, tap.sent - sent0, thread_cpu(tid) - cpu0
            tap.stop(5.0)
        finally:
            reader.terminate()
            reader.wait(10)
    print(f"writer           {frames / elapsed:8.0f} frames/s to `{' '.join(cmd[:2])} ... "
          f"{'-y' if reader_format == 'yaml' else '-w /dev/null'}` over {elapsed:.1f} s; "
          f"writer thread CPU {cpu / max(frames, 1) * 1e6:.2f} us/frame; caller {push_ns / max(pushed, 1):.0f} ns/call "
          f"beside it; dropped {tap.dropped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reader", choices=["binary", "yaml"], default="binary")
    args = parser.parse_args()
    set_log_tag("dnstap")
    ensure_packages({"dnstap": "golang-github-dnstap-golang-dnstap-cli"})
    query, response = messages()
    log(f"query {len(query)} bytes, response {len(response)} bytes; load average {os.getloadavg()[0]:.1f}")
    caller_side(args.calls, args.repeat, query, response)
    encoding(args.repeat, query, response)
    writer(args.seconds, args.reader, query, response)


if __name__ == "__main__":
    main()
