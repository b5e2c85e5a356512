#!/usr/bin/env python3
"""Per-query cost of ``Responder.answer`` in-process, no sockets: an A/B of two source trees without
the noise of dnsperf and a shared machine's scheduling.

    python bench/inprocess.py [--tree DIR] [--autopath] [--loadbalance] [--passes 7]

Loads bench/qps's generated cluster (1,000 Services, 10,000 endpoints, seed 1) from ``--tree``'s
``dnsd`` (default: this checkout), answers bench/qps's query mix once to warm the reply table,
then times ``--passes`` passes over it and prints the best pass's ns per query (and the table-hit
share). ``--autopath`` builds the resolver as ``--autopath --autopath-search example.org`` with no
upstream. Run two trees one after the other, e.g. a ``git archive`` of the base commit:

    flock /work/bench.lock sh -c 'python bench/inprocess.py --tree /tmp/base; python bench/inprocess.py'
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def setup(tree: Path, *, autopath: bool = False, loadbalance: bool = False, count: int = 100_000) -> tuple[Any, list[bytes]]:
    """``tree``'s Responder loaded with bench/qps's cluster, and bench/qps's query mix as query datagrams."""
    tree = tree.resolve()
    sys.path[:0] = [str(tree), str(tree / "bench")]
    import gen_cluster
    from dnslib import QTYPE

    from dnsd.cluster.sources.manifests import load_file
    from dnsd.cluster.store import Expect, Replace, Synced
    from dnsd.process.dataplane import Dataplane
    from dnsd.zone.resolver import resolve

    resolver: Any = resolve
    if autopath:
        from dnsd.zone.searchpath import Autopath

        resolver = Autopath(["cluster.local"], ("example.org",))
    cluster = gen_cluster.generate(1000, 10_000, seed=1)
    options = {"loadbalance": True} if loadbalance else {}  # trees before loadbalance lack the option
    dp = Dataplane(["cluster.local"], 5, "127.0.0.1", resolver=resolver, **options)
    with tempfile.TemporaryDirectory() as tmp:
        ops: list = [Expect("bench")]
        for path in gen_cluster.write_manifests(cluster, Path(tmp), seed=1):
            result = load_file(path)
            assert result is not None
            ops.append(Replace(f"file:{path}", result.objects))
        ops.append(Synced("bench"))
        dp.apply(ops)
    rng = random.Random(1)
    queries = []
    for line in gen_cluster.queries(cluster, count, seed=1):
        name, qtype = line.split()
        wire = b"".join(bytes((len(lb),)) + lb.encode() for lb in name.rstrip(".").split(".")) + b"\x00"
        queries.append(rng.randbytes(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire
                       + getattr(QTYPE, qtype).to_bytes(2, "big") + b"\x00\x01")
    return dp.responder, queries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--autopath", action="store_true")
    parser.add_argument("--loadbalance", action="store_true", help="rotate A/AAAA records, as dnsd serve does by default")
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args()
    responder, queries = setup(args.tree, autopath=args.autopath, loadbalance=args.loadbalance, count=args.queries)
    import dnsd

    answer, counts = responder.answer, {}
    for q in queries:  # warm: every positive answer rendered into the table
        answer(q, 512, counts)
    hits = sum(responder.fast(q, 512, {}) is not None for q in queries)
    best = float("inf")
    for _ in range(args.passes):
        start = time.perf_counter_ns()
        for q in queries:
            answer(q, 512, counts)
        best = min(best, (time.perf_counter_ns() - start) / len(queries))
    where = f"{Path(dnsd.__file__).parent.parent}{' --autopath' if args.autopath else ''}"
    print(f"{where}: {best:,.0f} ns/query (best of {args.passes} passes over "
          f"{len(queries):,} queries; {hits / len(queries):.0%} from the reply table); load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
