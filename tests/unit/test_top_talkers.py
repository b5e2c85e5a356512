"""Top talkers in fixed memory: Space-Saving summaries (observe/sketch.py), one process's counting
(observe/talkers.py), and the sliding windows the main process keeps."""

from __future__ import annotations

import random
import sys
from collections import Counter

import pytest

from dnsd.dns.names import name_wire
from dnsd.observe import talkers as talkers_module
from dnsd.observe.sketch import Windows, exact, merged, top
from dnsd.observe.talkers import BUDGET, CAPACITY, FOLD, KINDS, Talkers


def zipf_stream(n: int, distinct: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (rank ** s) for rank in range(1, distinct + 1)]
    return [f"k{i}" for i in rng.choices(range(distinct), weights, k=n)]


def summarise(stream: list[str], capacity: int, chunk: int) -> dict[str, tuple[int, int]]:
    """As a process does: exact counts of a chunk at a time, folded into the summary."""
    summary: dict[str, tuple[int, int]] = {}
    for i in range(0, len(stream), chunk):
        summary = merged(summary, exact(Counter(stream[i:i + chunk])), capacity)
    return summary


@pytest.mark.parametrize(("s", "seed"), [(1.0, 1), (1.2, 2), (0.9, 3)])
def test_the_true_top_ten_of_a_zipf_load_is_found_within_the_promised_bounds(s: float, seed: int) -> None:
    stream = zipf_stream(200_000, 50_000, s, seed)
    truth = Counter(stream)
    summary = summarise(stream, CAPACITY, FOLD)
    assert len(summary) <= CAPACITY
    for key, (count, error) in summary.items():
        assert count - error <= truth[key] <= count  # every estimate brackets the truth
        assert error <= len(stream) / CAPACITY * 2  # the error bound: a share of the stream (merges add up)
    found = [item.key for item in top(summary, 10)]
    true_top = [key for key, _ in truth.most_common(10)]
    assert set(found) == set(true_top)


def test_merging_two_summaries_keeps_the_bounds_of_both_streams() -> None:
    a_stream, b_stream = zipf_stream(50_000, 5_000, 1.1, 4), zipf_stream(50_000, 5_000, 1.1, 5)
    a, b = summarise(a_stream, 64, 500), summarise(b_stream, 64, 500)
    both, truth = merged(a, b, 64), Counter(a_stream + b_stream)
    for key, (count, error) in both.items():
        assert count - error <= truth[key] <= count
    assert {i.key for i in top(both, 5)} == {k for k, _ in truth.most_common(5)}


def test_a_process_counts_clients_names_nxdomain_and_forwards() -> None:
    talkers = Talkers()
    query = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name_wire("web.shop.svc.cluster.local") + b"\x00\x01\x00\x01"
    upper = query.replace(b"web", b"WeB")  # 0x20: one name, whatever the case asked
    ok, nx = b"\x00\x01\x81\x80", b"\x00\x01\x81\x83"
    talkers.count([(query, ("10.0.0.1", 5), ok, 0.0), (upper, ("10.0.0.2", 6), nx, 0.0)], 1)
    talkers.count([(query, ("10.0.0.1", 7), ok, 0.0)], 8)  # a sampled batch: each stands for 8
    talkers.sent_upstream("example.com")
    delta = talkers.drain()
    assert delta["queries"] == 2 + 8
    summaries = delta["summaries"]
    assert summaries["clients"] == {"10.0.0.1": (1 + 8, 0), "10.0.0.2": (1, 0)}
    assert summaries["names"] == {"web.shop.svc.cluster.local": (2 + 8, 0)}
    assert summaries["nxdomain"] == {"web.shop.svc.cluster.local": (1, 0)}
    assert summaries["forwarded"] == {"example.com": (1, 0)}
    assert talkers.drain()["queries"] == 0  # drained: the next report carries only what is new


def test_a_busy_process_samples_batches_to_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(talkers_module.time, "monotonic", lambda: clock[0])
    talkers = Talkers()
    assert all(talkers.take(64) == 1 for _ in range(BUDGET // 64))  # under the budget: every query, weight 1
    # A second at 10x the budget: the next second counts one batch in 10, each query weighing 10.
    for _ in range(10 * BUDGET // 64 - BUDGET // 64):
        talkers.take(64)
    clock[0] += 1.0
    weights = [talkers.take(64) for _ in range(100)]
    assert set(weights) == {0, 10} and weights.count(10) == 10
    # Quiet again: exact from the second after.
    clock[0] += 1.0
    talkers.take(64)
    clock[0] += 1.0
    assert talkers.take(64) == 1


def test_windows_slide() -> None:
    windows = Windows(KINDS, 8)
    windows.add({"clients": exact({"a": 5})}, 5, now=1000.0)
    windows.add({"clients": exact({"b": 3, "a": 1})}, 4, now=1045.0)
    report = windows.report(1050.0, 10)["windows"]
    assert report["1m"]["queries"] == 9 and report["1m"]["clients"][0] == {"key": "a", "count": 6, "error": 0}
    later = windows.report(1075.0, 10)["windows"]  # the first slot (1000-1010 s) left the minute
    assert later["1m"]["clients"] == [{"key": "b", "count": 3, "error": 0}, {"key": "a", "count": 1, "error": 0}]
    assert later["15m"]["queries"] == 9  # still in the quarter hour
    assert windows.report(1000.0 + 16 * 60, 10)["windows"]["15m"]["queries"] == 0


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it refers to (dicts, lists, tuples, strings)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def test_memory_stays_flat_however_many_distinct_clients_and_names() -> None:
    """Distinct clients and names through one process's counting and the main process's windows: what is
    held does not grow with the number of distinct keys (bench/top_talkers does 1M of each)."""
    talkers, windows = Talkers(), Windows(KINDS, CAPACITY)
    reply = b"\x00\x01\x81\x83"
    header = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"

    def feed(start: int, count: int) -> int:
        for base in range(start, start + count, 1000):
            batch = [(header + b"\x07n%06d\x07example\x00\x00\x01\x00\x01" % i,
                      (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 53), reply, 0.0) for i in range(base, base + 1000)]
            talkers.count(batch, 1)
            if base % 20_000 == 0:  # a report: the delta goes into the windows
                delta = talkers.drain()
                windows.add(delta["summaries"], delta["queries"], now=1000.0 + base / 20_000)
        return deep_size(talkers) + deep_size(windows)

    small = feed(0, 30_000)
    large = feed(30_000, 270_000)
    assert large < small * 1.5 and large < 4 << 20  # 10x the distinct keys, about the same memory
