"""How many workers, the share of the reply tables each gets, and how often a serving process collects: pure settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnsd.config import Config, cgroup_cpu_limit, usable_cpus


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("max 100000\n", None),  # no limit
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),  # 1.5 CPUs: a second worker still gets half a core
    ("50000 100000\n", 1),
    ("", None), ("garbage\n", None), ("0 100000\n", None), ("100000 0\n", None),
])
def test_cgroup_cpu_limit(cpu_max: str, cpus: int | None) -> None:
    assert cgroup_cpu_limit(cpu_max) == cpus


def test_usable_cpus_is_capped_by_the_cgroup_limit(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("100000 100000\n")
    assert usable_cpus(str(limit)) == 1
    limit.write_text("max 100000\n")
    assert usable_cpus(str(limit)) == affinity
    assert usable_cpus(str(tmp_path / "absent")) == affinity


def test_the_reply_table_budget_is_split_between_the_workers() -> None:
    # Each worker keeps only the names steered to it: one budget covers them at any worker count.
    assert Config(workers=1, cache_size=200_000, cache_bytes=32 << 20).table_share == (200_000, 32 << 20)
    assert Config(workers=4, cache_size=200_000, cache_bytes=32 << 20).table_share == (50_000, 8 << 20)
    assert Config(workers=64, cache_size=10, cache_bytes=2 << 20).table_share == (1, 1 << 20)  # never below 1 MB


def test_answering_processes_collect_fully_every_few_seconds_never_over_a_thousandth(monkeypatch) -> None:
    import gc

    from dnsd import runtime

    full, trims = [], []
    clock = iter(range(0, 10**6, 5))  # each collection "takes" 5 ms
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: next(clock) / 1000)
    monkeypatch.setattr(runtime, "release_heap", lambda: trims.append(1))
    frozen: list[int] = []  # not the test process's own heap: only that HeapTrim freezes
    monkeypatch.setattr(runtime.gc, "freeze", lambda: frozen.append(len(full)))

    def seen(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(seen)
    gc.disable()  # only the collections HeapTrim asks for
    try:
        trim = runtime.HeapTrim(every=10)
        for _ in range(9):
            trim.tick()
        assert not full and not trims  # not before the tenth second
        trim.tick()
        assert len(full) == 1 and len(trims) == 1
        assert not frozen  # 5 ms: short, nothing to freeze
        for _ in range(9):
            trim.tick()
        assert len(full) == 1  # 5 ms took it: the next waits 10 s, not 5 s
        trim.tick()
        assert len(full) == 2
    finally:
        gc.enable()
        gc.callbacks.remove(seen)
    slow = runtime.HeapTrim(every=10)
    clock = iter(range(0, 10**6, 50))  # 50 ms: the next one waits 50 ticks (0.1%)
    for _ in range(10):
        slow.tick()
    assert slow.due == 60
    assert frozen == [2]  # and what survived it is frozen, so the next one walks only what is newer

