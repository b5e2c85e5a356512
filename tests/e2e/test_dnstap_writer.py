"""The dnstap writer against the reference reader, golang-dnstap's ``dnstap`` CLI (Debian's
golang-github-dnstap-golang-dnstap-cli, installed by .ci/run), on a unix socket and on loopback TCP:
every message type decoded field by field, a collector absent then appearing, one that goes away and
comes back, one that stops reading (the caller never blocks), and stop() flushing."""

from __future__ import annotations

import datetime as dtm
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from dnsd.observe.dnstap import BATCH, Dnstap
from tests.dnstap_reader import Reader
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("dnstap") is None,
                                reason="the dnstap reader is missing (apt-get install golang-github-dnstap-golang-dnstap-cli)")

@pytest.fixture
def readers(tmp_path: Path) -> Iterator[list[Reader]]:
    """Readers a test started, killed at its end whatever happened."""
    started: list[Reader] = []
    yield started
    for reader in started:
        reader.kill()


@pytest.fixture
def taps() -> Iterator[list[Dnstap]]:
    started: list[Dnstap] = []
    yield started
    for tap in started:
        tap.stop(0.2)


def start_reader(readers: list[Reader], target: str, workdir: Path) -> Reader:
    reader = Reader(target, workdir)
    readers.append(reader)
    return reader


def start_tap(taps: list[Dnstap], target: str, **kwargs: Any) -> Dnstap:
    tap = Dnstap(target, **kwargs)
    taps.append(tap)
    tap.start()
    return tap


def wire(name: str, rdtype: str, qid: int) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0)
    q.id = qid
    return q.to_wire()


def when(seconds: float) -> dtm.datetime:
    """As the reader prints a time (UTC, naive, PyYAML keeps microseconds)."""
    return dtm.datetime.fromtimestamp(seconds, dtm.UTC).replace(tzinfo=None)


def targets(tmp_path: Path) -> dict[str, str]:
    return {"unix": f"unix:{tmp_path}/dnstap.sock", "tcp4": f"tcp:127.0.0.1:{free_port()}",
            "tcp6": f"tcp:[::1]:{free_port('::1')}"}


@pytest.mark.parametrize("kind", ["unix", "tcp4", "tcp6"])
def test_every_message_type_decodes(kind: str, tmp_path: Path, readers: list[Reader], taps: list[Dnstap]) -> None:
    target = targets(tmp_path)[kind]
    reader = start_reader(readers, target, tmp_path)
    tap = start_tap(taps, target, identity=b"dnsd-test-0", version=b"dnsd 0.1.0")

    cq = wire("web.default.svc.cluster.local", "A", 4101)
    cr_msg = dns.message.make_response(dns.message.from_wire(cq))
    cr_msg.answer.append(dns.rrset.from_text("web.default.svc.cluster.local.", 5, "IN", "A", "10.96.0.10"))
    cr = cr_msg.to_wire()
    fq = wire("nothing.example.com", "AAAA", 4102)
    fr_msg = dns.message.make_response(dns.message.from_wire(fq))
    fr_msg.set_rcode(dns.rcode.NXDOMAIN)
    fr = fr_msg.to_wire()

    t0 = 1_700_000_000.25  # quarters: exact in binary, so the printed times compare exactly
    tap.client_query(cq, ("10.244.1.20", 41000), False, t0)
    tap.client_response(cq, cr, ("2001:db8::20", 41001), True, t0, t0 + 0.5, local=("2001:db8::53", 53))
    tap.forwarder_query(fq, ("192.0.2.53", 53), False, t0 + 0.25, local=("192.0.2.1", 33000))
    tap.forwarder_response(fq, fr, ("2001:db8::35", 853), True, t0 + 0.25, t0 + 0.75)
    docs = reader.messages(4)
    tap.stop(2.0)
    assert (tap.sent, tap.dropped) == (4, 0)

    for doc in docs:
        assert (doc["type"], doc["identity"], doc["version"]) == ("MESSAGE", "dnsd-test-0", "dnsd 0.1.0")
    m = [doc["message"] for doc in docs]

    assert m[0]["type"] == "CLIENT_QUERY"
    assert (m[0]["socket_family"], m[0]["socket_protocol"]) == ("INET", "UDP")
    assert (m[0]["query_address"], m[0]["query_port"]) == ("10.244.1.20", 41000)
    assert "response_address" not in m[0] and "response_message" not in m[0] and "response_time" not in m[0]
    assert m[0]["query_time"] == when(t0)
    assert ";; opcode: QUERY, status: NOERROR, id: 4101" in m[0]["query_message"]
    assert ";web.default.svc.cluster.local.\tIN\t A" in m[0]["query_message"]

    assert m[1]["type"] == "CLIENT_RESPONSE"
    assert (m[1]["socket_family"], m[1]["socket_protocol"]) == ("INET6", "TCP")
    assert (m[1]["query_address"], m[1]["query_port"]) == ("2001:db8::20", 41001)
    assert (m[1]["response_address"], m[1]["response_port"]) == ("2001:db8::53", 53)
    assert (m[1]["query_time"], m[1]["response_time"]) == (when(t0), when(t0 + 0.5))
    assert "id: 4101" in m[1]["query_message"] and "flags: qr" not in m[1]["query_message"]
    assert ";; flags: qr rd; QUERY: 1, ANSWER: 1" in m[1]["response_message"]
    assert "web.default.svc.cluster.local.\t5\tIN\tA\t10.96.0.10" in m[1]["response_message"]

    assert m[2]["type"] == "FORWARDER_QUERY"
    assert (m[2]["socket_family"], m[2]["socket_protocol"]) == ("INET", "UDP")
    assert (m[2]["response_address"], m[2]["response_port"]) == ("192.0.2.53", 53)  # the upstream
    assert (m[2]["query_address"], m[2]["query_port"]) == ("192.0.2.1", 33000)  # dnsd's own socket
    assert m[2]["query_time"] == when(t0 + 0.25) and "response_time" not in m[2]
    assert ";nothing.example.com.\tIN\t AAAA" in m[2]["query_message"] and "id: 4102" in m[2]["query_message"]

    assert m[3]["type"] == "FORWARDER_RESPONSE"
    assert (m[3]["socket_family"], m[3]["socket_protocol"]) == ("INET6", "TCP")
    assert (m[3]["response_address"], m[3]["response_port"]) == ("2001:db8::35", 853)
    assert "query_address" not in m[3]
    assert (m[3]["query_time"], m[3]["response_time"]) == (when(t0 + 0.25), when(t0 + 0.75))
    assert ";; opcode: QUERY, status: NXDOMAIN, id: 4102" in m[3]["response_message"]


def test_collector_absent_then_appearing(tmp_path: Path, readers: list[Reader], taps: list[Dnstap]) -> None:
    target = f"unix:{tmp_path}/late.sock"
    tap = start_tap(taps, target)
    for qid in range(1, 6):
        tap.client_query(wire("a.example", "A", qid), ("127.0.0.1", 5000), False, time.time())
    wait_for(lambda: tap.dropped == 5, timeout=5)  # dropped at the next failed attempt, not kept for later
    assert not tap.connected

    reader = start_reader(readers, target, tmp_path)
    wait_for(lambda: tap.connected, timeout=10)  # the backoff is 0.1 s doubling: a few attempts so far
    for qid in range(6, 9):
        tap.client_query(wire("a.example", "A", qid), ("127.0.0.1", 5000), False, time.time())
    tap.stop(2.0)
    reader.messages(3)
    assert reader.query_ids() == [6, 7, 8]
    assert (tap.sent, tap.dropped) == (3, 5)


def test_reconnects_when_the_collector_comes_back(tmp_path: Path, readers: list[Reader], taps: list[Dnstap]) -> None:
    target = f"tcp:127.0.0.1:{free_port()}"
    first = start_reader(readers, target, tmp_path)
    tap = start_tap(taps, target)
    wait_for(lambda: tap.connected, timeout=10)
    tap.client_query(wire("a.example", "A", 1), ("127.0.0.1", 5000), False, time.time())
    first.messages(1)

    first.kill()
    wait_for(lambda: not tap.connected, timeout=5)  # seen while idle: the reader's end closed
    for qid in (2, 3):
        tap.client_query(wire("a.example", "A", qid), ("127.0.0.1", 5000), False, time.time())
    wait_for(lambda: tap.dropped == 2, timeout=5)

    second = start_reader(readers, target, tmp_path)
    wait_for(lambda: tap.connected, timeout=10)
    for qid in (4, 5):
        tap.client_query(wire("a.example", "A", qid), ("127.0.0.1", 5000), False, time.time())
    tap.stop(2.0)
    second.messages(2)
    assert second.query_ids() == [4, 5]
    assert (tap.sent, tap.dropped) == (3, 2)


def test_a_reader_that_stops_reading_never_blocks_the_caller(tmp_path: Path, readers: list[Reader],
                                                             taps: list[Dnstap]) -> None:
    target = f"unix:{tmp_path}/slow.sock"
    reader = start_reader(readers, target, tmp_path)
    tap = start_tap(taps, target, queue_size=1000)
    wait_for(lambda: tap.connected, timeout=10)
    reader.pause()  # SIGSTOP: the socket buffers fill, then the writer's send blocks, then the queue

    query = wire("web.default.svc.cluster.local", "A", 7)
    response = dns.message.make_response(dns.message.from_wire(query)).to_wire()
    n, slowest = 100_000, 0.0
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        tap.client_response(query, response, ("127.0.0.1", 5000), False, 1.0, 2.0)
        slowest = max(slowest, time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    # A call that blocked on the reader would last until resume() below; these bounds only allow for a
    # busy machine (the writer thread holding the GIL for a switch interval, the OS scheduling us out).
    assert elapsed < 10, f"{n} calls took {elapsed:.2f}s"
    assert slowest < 1.0, f"one call took {slowest:.3f}s"
    assert tap.queued <= 1000 and tap.dropped > n // 2
    in_flight = n - tap.sent - tap.dropped - tap.queued  # the batch the blocked writer holds
    assert 0 <= in_flight <= BATCH

    reader.resume()
    tap.stop(5.0)
    assert tap.sent + tap.dropped == n and tap.queued == 0
    wait_for(lambda: reader.count() == tap.sent, timeout=20)
    assert tap.sent > 0


def test_stop_flushes_what_is_queued(tmp_path: Path, readers: list[Reader], taps: list[Dnstap]) -> None:
    target = f"unix:{tmp_path}/flush.sock"
    reader = start_reader(readers, target, tmp_path)
    tap = start_tap(taps, target, queue_size=4000)
    wait_for(lambda: tap.connected, timeout=10)
    n = 3000
    queries = [wire("a.example", "A", qid) for qid in range(n)]
    reader.pause()  # the writer blocks once the socket buffers are full, so most of the n stay queued
    for query in queries:
        tap.client_query(query, ("127.0.0.1", 5000), False, time.time())
    wait_for(lambda: tap.sent > 0, timeout=5)
    time.sleep(0.1)
    assert tap.queued > n // 3, tap.queued
    threading.Timer(0.3, reader.resume).start()  # the reader comes back while stop() waits
    start = time.monotonic()
    tap.stop(5.0)
    assert time.monotonic() - start < 5.0
    assert (tap.sent, tap.dropped, tap.queued, tap.connected) == (n, 0, 0, False)
    wait_for(lambda: reader.count() == n, timeout=20)
    assert reader.query_ids() == list(range(n))
    wait_for(lambda: "closed connection" in reader.err.read_text(), timeout=5)  # STOP/FINISH, then close


def test_unreachable_targets_are_retried_quietly(tmp_path: Path, taps: list[Dnstap]) -> None:
    """No reader at all: nothing blocks, every message is a counted drop, stop() returns at once."""
    tap = start_tap(taps, f"unix:{tmp_path}/nobody.sock")
    for qid in range(100):
        tap.forwarder_query(wire("a.example", "A", qid), ("127.0.0.1", 53), False, time.time())
    wait_for(lambda: tap.dropped == 100, timeout=5)
    start = time.monotonic()
    tap.stop(1.0)
    assert time.monotonic() - start < 1.0 and tap.sent == 0
    assert not os.path.exists(f"{tmp_path}/nobody.sock")
