"""Restarts that lose no query: a new dnsd on the same address taking over from an old one (SO_REUSEPORT),
the lame duck after SIGTERM, and a SIGHUP reload, each under a steady stream over UDP and TCP
(tests/stream.py: a few hundred queries a second, each kind counted)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Dnsd, free_port, wait_for
from tests.stream import Stream, query

WEB = "web.default.svc.cluster.local"


@pytest.fixture
def servers() -> Iterator[list[Dnsd]]:
    started: list[Dnsd] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def start(servers: list[Dnsd], *args: str, port: int, workers: int = 1) -> Dnsd:
    server = Dnsd("--tcp-idle-timeout", "2", *args, port=port, workers=workers)
    servers.append(server)
    wait_for(lambda: "dnsd serving" in server.log() or server.proc.poll() is not None, timeout=30)
    assert server.proc.poll() is None, server.log()
    return server


MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@pytest.fixture
def migrate_req() -> Iterator[None]:
    """net.ipv4.tcp_migrate_req=1 for the test, as docs/node-local.md asks of a node (and its setup does):
    without it a handshake completing in the instant the old listener closes is reset, a gap the kernel
    closes and dnsd cannot (process/handover.py logs it). Left as it is where it cannot be written."""
    try:
        before = MIGRATE_REQ.read_text()
        MIGRATE_REQ.write_text("1")
    except OSError:
        yield
        return
    try:
        yield
    finally:
        MIGRATE_REQ.write_text(before)


def no_loss(stream: Stream) -> None:
    counts = stream.stop()
    summary = {kind: str(c) for kind, c in counts.items()}
    for c in counts.values():
        assert c.sent > 0, summary
        assert c.lost == 0 and c.wrong == 0 and c.twice == 0, summary
        assert c.answered == c.sent, summary


@pytest.mark.parametrize("workers", [1, 2])
def test_new_instance_takes_over_the_port(servers: list[Dnsd], workers: int, migrate_req: None) -> None:
    port = free_port()
    old = start(servers, port=port, workers=workers)
    stream = Stream(old.address, port, WEB, udp=1000).start()  # fast enough that closing unsealed loses some
    time.sleep(1.0)
    new = start(servers, port=port, workers=workers)  # binds beside the old one: no "Address already in use"
    if workers > 1:
        assert "another process serves 127.0.0.1 port" in new.log()
    time.sleep(1.0)
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(20) == 0, old.log()
    assert "draining" in old.log()
    time.sleep(1.0)
    no_loss(stream)
    assert new.proc.poll() is None
    if workers > 1:  # the steering program, held back while both served, is attached once alone
        wait_for(lambda: "alone on 127.0.0.1 port" in new.log(), timeout=5)
    assert new.query(WEB).answer
    assert new.stop() == 0, new.log()


def test_open_tcp_connection_is_served_while_draining(servers: list[Dnsd]) -> None:
    port = free_port()
    old = start(servers, "--tcp-idle-timeout", "3", port=port)
    conn = socket.create_connection((old.address, port), timeout=5)  # before the new one listens: the old one's
    start(servers, port=port)
    old.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    with conn:
        for qid in (1, 2, 3):  # still answered on the open connection while the old dnsd drains
            time.sleep(0.5)
            q = query(WEB, qid)
            conn.sendall(len(q).to_bytes(2, "big") + q)
            size = int.from_bytes(recv_exactly(conn, 2), "big")
            assert recv_exactly(conn, size)[:2] == qid.to_bytes(2, "big")
        assert old.proc.poll() is None, "the old dnsd waits for its open connection"
        # Closed by the old dnsd: --tcp-idle-timeout after the drain began (or once idle that long).
        assert recv_exactly(conn, 2) == b""
    assert old.proc.wait(10) == 0, old.log()
    assert 2.5 < time.monotonic() - began < 6


def test_lameduck(servers: list[Dnsd]) -> None:
    port = free_port()
    server = start(servers, "--lameduck", "2", port=port)
    wait_for(lambda: server.http("/ready")[0] == 200)
    stream = Stream(server.address, port, WEB).start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while server.http("/ready")[0] != 503:
        pass
    assert time.monotonic() - signalled < 0.1, "/ready turns 503 at once"
    assert server.http("/health")[0] == 200
    time.sleep(1.5)
    assert server.proc.poll() is None, "still answering in the lame duck"
    no_loss(stream)  # every query of the 1.5 s after the signal was answered
    assert server.proc.wait(10) == 0, server.log()
    assert time.monotonic() - signalled >= 2.0, "exits after the lame duck"
    assert "lame duck" in server.log()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_ends_the_lameduck_at_once(servers: list[Dnsd], second: signal.Signals) -> None:
    server = start(servers, "--lameduck", "30", port=free_port())
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "lame duck" in server.log())
    server.proc.send_signal(second)
    assert server.proc.wait(5) == 0, server.log()


def test_sigint_stops_at_once(servers: list[Dnsd]) -> None:
    server = start(servers, "--lameduck", "30", port=free_port())
    began = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(5) == 0, server.log()
    assert time.monotonic() - began < 3
    assert "lame duck" not in server.log()


def test_sighup_reload_loses_nothing(servers: list[Dnsd]) -> None:
    port = free_port()
    server = start(servers, port=port, workers=2)
    stream = Stream(server.address, port, WEB).start()
    for _ in range(5):
        time.sleep(0.4)
        server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    no_loss(stream)
    assert server.log().count("SIGHUP: re-reading") == 5
    assert server.stop() == 0, server.log()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return data
        data += chunk
    return data
