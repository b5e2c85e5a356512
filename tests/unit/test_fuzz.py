"""Fuzz and property tests of the query path (in-process: the Responder that every listener calls).

Every input gets a reply or a drop: no exception, no catch-all SERVFAIL, a reply with the query's ID
and QR set, never over the UDP cap. Valid queries get their question back byte for byte, and the
fast path's bytes are the strict path's. The long runs are bench/fuzz_query.py's.
"""

from __future__ import annotations

import os
import random
import string
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import dns.message
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.common import wire_query
from bench.fuzz_query import check, dataplane, mutate, seeds
from dnsd.cluster.model import Port, Service
from dnsd.cluster.store import Expect, Replace, Synced
from dnsd.dns.const import MIN_PAYLOAD, TCP_LIMIT
from dnsd.process.dataplane import Dataplane

ROOT = Path(__file__).resolve().parents[2]
DP = dataplane()
RESPONDER = DP.responder
NAMES = [*sorted({name for name, _, _ in DP.index.records()}), "nope.shop.svc.cluster.local", "shop.svc.cluster.local",
         "cluster.local", "example.com", "9.9.9.9.in-addr.arpa"]
TYPES = (1, 2, 5, 6, 12, 16, 28, 33, 255, 0, 41, 251, 252, 99, 65, 97, 65535)
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20)


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """Well-formed queries: a served or missing name (any case, maybe with labels in front), any type,
    any flags but QR and opcode, with or without EDNS (any payload, well-formed options)."""
    labels = draw(st.lists(LABEL, max_size=3)) + draw(st.sampled_from(NAMES)).split(".")
    rng = random.Random(draw(st.integers(0, 2**32)))
    name = b"".join(bytes((len(lb),)) + "".join(rng.choice((c.lower(), c.upper())) for c in lb).encode()
                    for lb in labels if lb) + b"\x00"
    qtype = draw(st.sampled_from(TYPES) | st.integers(0, 65535))
    flags = draw(st.integers(0, 0xFFFF)) & 0x07FF  # QR clear, opcode QUERY
    edns = draw(st.booleans())
    msg = struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, 1, 0, 0, int(edns)) + name + struct.pack("!HH", qtype, 1)
    if edns:
        pairs = draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=16)), max_size=3))
        options = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in pairs)
        payload = draw(st.integers(0, 0xFFFF))
        msg += b"\x00\x00\x29" + struct.pack("!HBBHH", payload, 0, 0, draw(st.integers(0, 0xFFFF)), len(options)) + options
    return msg


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes_get_a_reply_or_a_drop(data: bytes) -> None:
    check(RESPONDER, data)


@SETTINGS
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=300))
def test_any_body_behind_a_query_header(header: bytes, body: bytes) -> None:
    """Random bytes behind a header that claims one question: the parser's deep paths, not just the first check."""
    check(RESPONDER, header[:2] + bytes((header[2] & 0x07, header[3])) + b"\x00\x01" + header[6:] + body)


@SETTINGS
@given(queries())
# Found by this test: ANY over TCP once got UDP's minimal ANY from the table (a name with two RRsets).
@example(b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03BIg\x07DEFAULt\x03sVc\x07cLuSteR\x05LoCAL\x00\x00\xff\x00\x01")
def test_valid_queries_echo_their_question(query: bytes) -> None:
    check(RESPONDER, query)
    qend = query.index(0, 12) + 5
    for limit in (MIN_PAYLOAD, TCP_LIMIT):
        full = RESPONDER.full(query, limit, {})
        assert full is not None
        assert full[12:qend] == query[12:qend], "the question, byte for byte"
        assert full[4:6] == b"\x00\x01"
        fast = RESPONDER.fast(query, limit, {})
        if fast is not None:
            assert fast == full
        reply = dns.message.from_wire(full)  # a real client parses it
        assert reply.id == int.from_bytes(query[:2], "big")
        assert (reply.edns >= 0) == (query[11] == 1)


@SETTINGS
@given(queries(), st.randoms(use_true_random=False))
def test_mutated_queries(query: bytes, rng: random.Random) -> None:
    check(RESPONDER, mutate(rng, query, [query]))


def test_ten_thousand_seeded_mutations() -> None:
    """The bench's mutation loop, bounded: 10,000 packets in a few seconds."""
    corpus = seeds(DP)
    rng = random.Random(2)
    for _ in range(10_000):
        check(RESPONDER, mutate(rng, rng.choice(corpus), corpus))
    assert RESPONDER.failures == 0


def test_atheris_briefly(tmp_path: Path) -> None:
    """The coverage-guided target runs (CI: a few thousand inputs; bench/fuzz_query.py: as long as you like)."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz_query.py"), "atheris", "-runs=4000", "-seed=1", "-max_len=600"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "FUZZ_CORPUS": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Done 4000 runs" in result.stderr or "DONE" in result.stderr, result.stderr[-2000:]


def _allocated_by(run: Callable[[], object]) -> int:
    """Bytes that ``run`` left allocated (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before


def test_table_size_estimate() -> None:
    """The byte bound counts what entries really take (tracemalloc), within 25%."""
    dp = Dataplane(["cluster.local"], 5, None)
    services = tuple(Service("ns", f"s{i}", "ClusterIP", (f"10.96.{i // 250}.{i % 250 + 1}",),
                             (Port("http", 80, "tcp"), Port("grpc", 9090, "tcp"))) for i in range(2000))
    dp.apply([Expect("t"), Replace("file:t", services), Synced("t")])
    queries = [wire_query(1, name, qtype) for i in range(2000)
               for name, qtype in ((f"s{i}.ns.svc.cluster.local", 1), (f"_http._tcp.s{i}.ns.svc.cluster.local", 33))]
    measured = _allocated_by(lambda: [dp.responder.answer(query) for query in queries])
    assert len(dp.responder._table) == len(queries)
    estimated = dp.responder.table_bytes
    print(f"table: {measured / len(queries):.0f} bytes/entry measured, {estimated / len(queries):.0f} estimated")
    assert 0.75 < measured / estimated < 1.25, (measured, estimated)


def test_negative_size_estimate() -> None:
    """Kept negatives (asked twice) are counted as they really take (tracemalloc), within 25%."""
    dp = Dataplane(["cluster.local"], 5, None)
    dp.apply([Expect("t"), Replace("file:t", ()), Synced("t")])
    queries = [wire_query(1, name, qtype) for i in range(4000)
               for name, qtype in ((f"name-{i}.shop.svc.cluster.local.svc.cluster.local", 1), (f"n{i}.ns.svc.cluster.local", 28))]
    for query in queries:
        dp.responder.answer(query)  # asked once: noted only
    measured = _allocated_by(lambda: [dp.responder.answer(query) for query in queries])
    assert len(dp.responder._negatives) == len(queries)
    estimated = dp.responder.table_bytes
    print(f"negatives: {measured / len(queries):.0f} bytes/entry measured, {estimated / len(queries):.0f} estimated")
    assert 0.75 < measured / estimated < 1.25, (measured, estimated)
