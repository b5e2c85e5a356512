"""Top talkers' memory and cost with 1M distinct clients and 1M distinct names (observe/talkers.py).

    bench/top_talkers [--distinct 1000000]

Feeds one process's counting (Talkers) with batches of answered queries, each from a new client
address and for a new name, NXDOMAIN (the worst case: every key is new, every list folds), handing
a delta to the main process's windows once a second of traffic (every 100k queries) as workers do.
Prints the memory held (tracemalloc, after a full collection) at 10%, 50% and 100% of the keys, and
the cost per query of counting, for distinct keys and for a few repeated ones.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from dnsd.observe.sketch import Windows
from dnsd.observe.talkers import CAPACITY, KINDS, Talkers

HEADER = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
NXDOMAIN = b"\x00\x01\x81\x83"


def batch(start: int, size: int = 64) -> list[tuple[bytes, tuple[str, int], bytes, float]]:
    return [(HEADER + b"\x08n%07d\x07example\x00\x00\x01\x00\x01" % i,
             (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 53), NXDOMAIN, 0.0) for i in range(start, start + size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distinct", type=int, default=1_000_000)
    args = parser.parse_args()
    talkers, windows = Talkers(), Windows(KINDS, CAPACITY)
    marks = {args.distinct // 10, args.distinct // 2, args.distinct}
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    counted = 0
    for start in range(0, args.distinct, 64):
        talkers.count(batch(start), 1)
        counted += 64
        if counted % 100_032 < 64:  # about every 100k queries: a report
            delta = talkers.drain()
            windows.add(delta["summaries"], delta["queries"], time.time())
        if any(start < m <= start + 64 for m in marks):
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - baseline
            print(f"{start + 64:>9,} distinct clients and names: {held / 1024:,.0f} KiB held")
    tracemalloc.stop()

    talkers = Talkers()
    batches = [batch(i * 64) for i in range(args.distinct // 64 // 10)]
    started = time.perf_counter()
    for b in batches:
        talkers.count(b, 1)
    distinct = (time.perf_counter() - started) / (len(batches) * 64)
    same = [batch(0)] * len(batches)
    started = time.perf_counter()
    for b in same:
        talkers.count(b, 1)
    repeated = (time.perf_counter() - started) / (len(same) * 64)
    print(f"counting: {distinct * 1e9:,.0f} ns per query with every key new, {repeated * 1e9:,.0f} ns with 64 repeated")


if __name__ == "__main__":
    main()
