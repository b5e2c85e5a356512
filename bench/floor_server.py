#!/usr/bin/env python3
"""The interpreter's floor for a UDP hit path: what any Python server can reach here. Not part of dnsd.

    python3 bench/floor_server.py --manifests DIR --queries queries.txt --port 5300

Every query of ``--queries`` (bench/qps's ``NAME TYPE`` lines) is answered once at start by dnsd's
own Responder over ``--manifests``, and kept by its wire bytes after the ID. Serving is then one
``recvmmsg``, one dict lookup and one concatenation per datagram, and one ``sendmmsg``, through
dnsd's ``net/mmsg.py``: no counts, no EDNS, no case folding, no ACL, no event loop (``epoll`` and a
loop around it). Any other query (the bench's readiness probes) is answered by the Responder.
``bench/qps --servers dnsd,knot,floor`` puts it beside dnsd and Knot, so the ratio that no Python
server passes on this machine shows in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnslib import QTYPE  # noqa: E402

from bench.common import wire_query  # noqa: E402
from dnsd.cluster.sources.manifests import load_file  # noqa: E402
from dnsd.cluster.store import Expect, Replace, Synced  # noqa: E402
from dnsd.net import mmsg  # noqa: E402
from dnsd.net.listeners import UDP_RCVBUF, UDP_SNDBUF  # noqa: E402
from dnsd.process.dataplane import Dataplane  # noqa: E402

BATCH = 64  # as dnsd's UDP listener
READ = 513


def question(name: str, qtype: str) -> bytes:
    """A query's bytes after its ID, as dnsperf sends it: RD, one question, class IN, no EDNS."""
    return wire_query(0, name, getattr(QTYPE, qtype))[2:]


def replies(manifests: Path, queries: Path) -> tuple[dict[bytes, bytes], Any]:
    """Each distinct query's reply after its ID, as dnsd answers it, and the Responder."""
    dp = Dataplane(["cluster.local"], 5, "127.0.0.1")
    ops: list = [Expect("floor")]
    for path in sorted(p for p in manifests.rglob("*") if p.suffix in (".json", ".yaml", ".yml")):
        result = load_file(path)
        if result is not None:
            ops.append(Replace(f"file:{path}", result.objects))
    ops.append(Synced("floor"))
    dp.apply(ops)
    table: dict[bytes, bytes] = {}
    for line in queries.read_text().splitlines():
        if not line.strip():
            continue
        name, qtype = line.split()
        tail = question(name, qtype)
        if tail not in table:
            reply = dp.responder.answer(b"\x00\x00" + tail, 512, {})
            if isinstance(reply, bytes):
                table[tail] = reply[2:]
    return table, dp.responder


def slow(responder: Any, query: bytes) -> bytes:
    """A query outside the table, as dnsd answers it (b"": dropped)."""
    reply = responder.answer(query, 512, {})
    return reply if isinstance(reply, bytes) else b""


def serve(table: dict[bytes, bytes], responder: Any, address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_SNDBUF)
    sock.bind((address, port))
    sock.setblocking(False)
    batch = mmsg.Batch(sock, BATCH, READ)
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    get, receive, reply_all, flush = table.get, batch.receive, batch.reply_all, batch.flush
    while True:
        poller.poll()
        while datagrams := receive():
            reply_all([data[:2] + tail if (tail := get(data[2:])) else slow(responder, data) for data in datagrams])
            flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=Path, required=True, help="the cluster's manifests (bench/qps writes them)")
    parser.add_argument("--queries", type=Path, required=True, help="NAME TYPE lines: the only queries answered")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5300)
    args = parser.parse_args()
    if not mmsg.available():
        parser.error("recvmmsg/sendmmsg are not available here")
    table, responder = replies(args.manifests, args.queries)
    print(f"floor: {len(table)} replies kept", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(table, responder, args.address, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
