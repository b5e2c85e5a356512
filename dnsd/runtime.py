"""The interpreter under every serving process: event loop, garbage collector, heap.

One copy of each setting, used by the main process and by every worker alike.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time
from collections.abc import Callable


def use_uvloop() -> None:
    """uvloop's event loop when it is installed (Linux): its socket callbacks cost less per query."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Freeze what exists now out of the collector's sight (and, before a fork, keep its pages shared),
    and collect the young generation less often than every 700 allocations: list parsing allocates
    millions, and 10k objects take ~1-3 ms to collect, short enough not to pause queries."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only; musl and others lack it
    except (AttributeError, OSError):
        return None


_TRIM = _malloc_trim()


def release_heap() -> None:
    """Give the heap's free memory back to the OS (glibc keeps it otherwise)."""
    if _TRIM is not None:
        _TRIM(0)


class HeapTrim:
    """A full collection and ``release_heap`` every ``every`` ticks (a tick is about a second) in a
    process that answers: only a collection of the highest generation empties CPython's free lists
    (the tuples queries are parsed and rendered with). The next one waits at least ``every`` ticks,
    or 1,000 times as long as this one took, so it never takes over 0.1% of the time.

    When one takes over ``freeze_after`` seconds, what survived it is frozen: every change leaves its
    records behind as young objects that grow old, and a full collection walks every unfrozen one
    while queries and changes wait (after the whole cluster changed once, the whole heap). Frozen,
    the next one walks only what came since. Garbage is gone first, and frozen data that later dies
    is still freed by its reference count (records are acyclic); only a cycle alive at that moment
    (a query in flight) would never be collected, so a server whose collections stay short never freezes."""

    def __init__(self, every: int = 10, freeze_after: float = 0.01) -> None:
        self.every = every
        self.freeze_after = freeze_after
        self.ticks = 0
        self.due = every

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks >= self.due:
            started = time.perf_counter()
            gc.collect()
            release_heap()
            took = time.perf_counter() - started
            if took > self.freeze_after:
                gc.freeze()
            self.due = self.ticks + max(self.every, round(took * 1000))


__all__ = ["HeapTrim", "release_heap", "tune_gc", "use_uvloop"]
