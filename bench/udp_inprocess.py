#!/usr/bin/env python3
"""Per-datagram cost of the UDP listener in-process: ``readable()`` over a loopback socket, batches of 64.

    python bench/udp_inprocess.py [--tree DIR] [--passes 5] [--batch 64]

bench/inprocess.py's cluster and query mix (``--tree``'s dnsd), answered the way ``dnsd serve`` does
(loadbalance and top talkers on, no upstream): a client socket sends a batch of queries, then one ``readable()`` call
is timed (receive, answer, send), then the replies are read back untimed. The query mix is walked
three times first, so the reply table holds what a long-running server's would. Prints the best
pass's ns per datagram, the kernel's share included: an A/B of two trees without dnsperf's noise.

    flock /work/bench.lock sh -c 'python bench/udp_inprocess.py --tree /tmp/base; python bench/udp_inprocess.py'
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inprocess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="datagrams waiting per readable() call (default 64)")
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--no-top-talkers", action="store_true", help="as dnsd serve --no-top-talkers")
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
    best, answered = min(one_pass() for _ in range(args.passes))
    print(f"{Path(dnsd.__file__).parent.parent}: {best / len(queries):,.0f} ns/datagram (best of {args.passes} passes "
          f"over {len(queries):,} queries, {args.batch} a batch; {answered:,} answered); load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
