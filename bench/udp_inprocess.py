#!/usr/bin/env python3
"""Per-datagram cost of the UDP listener in-process: ``readable()`` over a loopback socket, batches of 64.

    python bench/udp_inprocess.py [--tree DIR] [--passes 5] [--batch 64] [--parts]

bench/inprocess.py's cluster and query mix (``--tree``'s dnsd), answered the way ``dnsd serve`` does
(loadbalance and top talkers on, no upstream): a client socket sends a batch of queries, then one ``readable()`` call
is timed (receive, answer, send), then the replies are read back untimed. The query mix is walked
three times first, so the reply table holds what a long-running server's would. Prints the best
pass's ns per datagram, the kernel's share included: an A/B of two trees without dnsperf's noise.
``--parts`` times the listener's steps apart instead (``Batch.receive``, ``fast_many``, ``reply_all``,
``flush``; the table hits only), each step's best pass in ns per datagram: the Python work without the
kernel's (receive and flush include their system call).

    flock /work/bench.lock sh -c 'python bench/udp_inprocess.py --tree /tmp/base; python bench/udp_inprocess.py'
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inprocess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="datagrams waiting per readable() call (default 64)")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--no-top-talkers", action="store_true", help="as dnsd serve --no-top-talkers")
    parser.add_argument("--parts", action="store_true", help="time receive, fast_many, reply_all and flush apart")
    args = parser.parse_args()
    responder, queries = inprocess.setup(args.tree, loadbalance=True, count=args.queries)
    import dnsd
    from dnsd.net.udp import UdpListener
    from dnsd.observe.metrics import Listener

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    client.connect(server.getsockname())
    client.setblocking(False)
    tap = None
    if not args.no_top_talkers:  # dnsd serve's default: top talkers on, drained once a second
        from dnsd.observe.talkers import Talkers
        from dnsd.observe.tap import Tap

        tap = Tap(Talkers(), None)
    listener = UdpListener(server, responder, Listener("udp", "1", "dns://127.0.0.1"), tap=tap)
    send, recv = client.send, client.recv
    batches = [queries[i : i + args.batch] for i in range(0, len(queries), args.batch)]

    def one_pass() -> tuple[int, int]:
        spent = answered = 0
        drained = time.monotonic()
        for batch in batches:
            if tap is not None and time.monotonic() - drained >= 1.0:  # the report's drain, timed too
                start = time.perf_counter_ns()
                tap.drain()
                spent += time.perf_counter_ns() - start
                drained = time.monotonic()
            for query in batch:
                send(query)
            start = time.perf_counter_ns()
            listener.readable()
            spent += time.perf_counter_ns() - start
            while True:
                try:
                    recv(4096)
                except BlockingIOError:
                    break
                answered += 1
        return spent, answered

    for _ in range(3):
        one_pass()
    if args.parts:
        return parts(listener, responder, batches, send, recv, args)
    best, answered = min(one_pass() for _ in range(args.passes))
    print(f"{Path(dnsd.__file__).parent.parent}: {best / len(queries):,.0f} ns/datagram (best of {args.passes} passes "
          f"over {len(queries):,} queries, {args.batch} a batch; {answered:,} answered); load {os.getloadavg()[0]:.2f}")
    return 0


def parts(listener: Any, responder: Any, batches: list[list[bytes]], send: Any, recv: Any,
          args: argparse.Namespace) -> int:
    """Each step of a batch timed apart, over the queries the table answers (after the warm-up passes)."""
    batch, counts = listener.batch, listener.listener.counts
    hits = [[q for q, r in zip(b, responder.fast_many(b, {}), strict=True) if r] for b in batches]
    total = sum(len(b) for b in hits)
    steps = ("receive", "fast_many", "reply_all", "flush")
    best = dict.fromkeys(steps, float("inf"))
    clock = time.perf_counter_ns
    for _ in range(args.passes):
        spent = dict.fromkeys(steps, 0)
        for queries in hits:
            for query in queries:
                send(query)
            t0 = clock()
            datagrams = batch.receive()
            t1 = clock()
            replies = responder.fast_many(datagrams, counts)
            t2 = clock()
            batch.reply_all(replies)
            t3 = clock()
            batch.flush()
            t4 = clock()
            for step, ns in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[step] += ns
            for _ in queries:
                recv(4096)
        best = {step: min(best[step], spent[step] / total) for step in steps}
    print(f"{args.tree}: " + ", ".join(f"{step} {ns:,.0f}" for step, ns in best.items())
          + f" ns/datagram (best of {args.passes} passes over {total:,} table hits, {args.batch} a batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
