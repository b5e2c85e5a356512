"""dnstap's pure parts: target parsing, the protobuf encoding (decoded back with dnstap-pb), the queue
bound on the caller's side, and the Frame Streams handshake against an in-process reader (fstrm)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dnstap_pb
import fstrm
import pytest

from dnsd.observe import dnstap as dt
from dnsd.observe.framestream import ProtocolError, Sender, Target, parse_target

QUERY = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
RESPONSE = dns.message.make_response(dns.message.from_wire(QUERY)).to_wire()


@pytest.mark.parametrize(("text", "target"), [
    ("unix:/run/dnstap.sock", Target(path="/run/dnstap.sock")),
    ("unix:relative.sock", Target(path="relative.sock")),
    ("tcp:127.0.0.1:6000", Target(host="127.0.0.1", port=6000)),
    ("tcp:collector.example:65535", Target(host="collector.example", port=65535)),
    ("tcp:[::1]:6000", Target(host="::1", port=6000)),
    ("tcp:[fe80::1%eth0]:1", Target(host="fe80::1%eth0", port=1)),
])
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target
    assert str(parse_target(text)) == text


@pytest.mark.parametrize(("text", "reason"), [
    ("", "expected unix:PATH or tcp:HOST:PORT"),
    ("/run/dnstap.sock", "expected unix:PATH or tcp:HOST:PORT"),
    ("udp:127.0.0.1:6000", "expected unix:PATH or tcp:HOST:PORT"),
    ("unix:", "path is empty"),
    ("unix:/a\0b", "NUL"),
    ("tcp:127.0.0.1", "host is empty"),
    ("tcp::6000", "host is empty"),
    ("tcp:127.0.0.1:", "port must be a number"),
    ("tcp:127.0.0.1:0", "port must be a number from 1 to 65535"),
    ("tcp:127.0.0.1:65536", "port must be a number from 1 to 65535"),
    ("tcp:127.0.0.1:-1", "port must be a number"),
    ("tcp:127.0.0.1:http", "port must be a number"),
    ("tcp:::1:6000", "needs brackets"),
    ("tcp:[::1]6000", "expected tcp:[IPv6]:PORT"),
    ("tcp:[::1:6000", "expected tcp:[IPv6]:PORT"),
    ("tcp:[127.0.0.1]:6000", "brackets are for IPv6"),
])
def test_bad_targets(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        dt.Dnstap(text)


def test_bad_queue_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        dt.Dnstap("unix:/x", queue_size=0)


def decode(payload: bytes) -> dnstap_pb.Dnstap:
    tap = dnstap_pb.Dnstap()
    tap.ParseFromString(payload)
    return tap


def test_client_messages_round_trip() -> None:
    encode = dt.encoder(b"node-1", b"dnsd 0.1")
    tap = decode(encode((dt.CLIENT_QUERY, QUERY, None, ("10.244.1.20", 41000), None, False, 1700000000.5, 0.0)))
    assert (tap.identity, tap.version, tap.type) == (b"node-1", b"dnsd 0.1", dnstap_pb.Dnstap.MESSAGE)
    m = tap.message
    assert m.type == dnstap_pb.Message.CLIENT_QUERY
    assert (m.socket_family, m.socket_protocol) == (dnstap_pb.INET, dnstap_pb.UDP)
    assert (m.query_address, m.query_port) == (socket.inet_aton("10.244.1.20"), 41000)
    assert not m.HasField("response_address") and not m.HasField("response_port")
    assert (m.query_time_sec, m.query_time_nsec) == (1700000000, 500_000_000)
    assert m.query_message == QUERY
    assert not m.HasField("response_message") and not m.HasField("response_time_sec")

    tap = decode(encode((dt.CLIENT_RESPONSE, QUERY, RESPONSE, ("2001:db8::7", 53000), ("2001:db8::53", 53), True,
                         1700000000.25, 1700000000.75)))
    m = tap.message
    assert m.type == dnstap_pb.Message.CLIENT_RESPONSE
    assert (m.socket_family, m.socket_protocol) == (dnstap_pb.INET6, dnstap_pb.TCP)
    assert (m.query_address, m.query_port) == (socket.inet_pton(socket.AF_INET6, "2001:db8::7"), 53000)
    assert (m.response_address, m.response_port) == (socket.inet_pton(socket.AF_INET6, "2001:db8::53"), 53)
    assert (m.query_time_sec, m.query_time_nsec) == (1700000000, 250_000_000)
    assert (m.response_time_sec, m.response_time_nsec) == (1700000000, 750_000_000)
    assert (m.query_message, m.response_message) == (QUERY, RESPONSE)


def test_forwarder_messages_round_trip() -> None:
    encode = dt.encoder()  # no identity: the field is left out, not sent empty
    tap = decode(encode((dt.FORWARDER_QUERY, QUERY, None, ("192.0.2.53", 53), ("192.0.2.1", 33000), False, 1.0, 0.0)))
    assert not tap.HasField("identity") and tap.version == b"dnsd"
    m = tap.message
    assert m.type == dnstap_pb.Message.FORWARDER_QUERY
    assert (m.response_address, m.response_port) == (socket.inet_aton("192.0.2.53"), 53)
    assert (m.query_address, m.query_port) == (socket.inet_aton("192.0.2.1"), 33000)  # dnsd's own socket

    tap = decode(encode((dt.FORWARDER_RESPONSE, QUERY, RESPONSE, ("fe80::1%eth0", 53), None, True, 2.0, 3.000001)))
    m = tap.message
    assert m.type == dnstap_pb.Message.FORWARDER_RESPONSE
    assert (m.socket_family, m.socket_protocol) == (dnstap_pb.INET6, dnstap_pb.TCP)
    assert m.response_address == socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert not m.HasField("query_address")
    assert m.response_time_sec == 3
    assert abs(m.response_time_nsec - 1000) < 10  # float seconds: a few ns of rounding
    assert m.response_message == RESPONSE


def test_encoder_is_reusable() -> None:
    """One protobuf object serves every message: nothing of one leaks into the next."""
    encode = dt.encoder(b"x")
    encode((dt.CLIENT_RESPONSE, QUERY, RESPONSE, ("::1", 1), ("::1", 53), True, 1.0, 2.0))
    m = decode(encode((dt.CLIENT_QUERY, QUERY, None, ("127.0.0.1", 2), None, False, 5.0, 0.0))).message
    assert not m.HasField("response_address") and not m.HasField("response_message")
    assert (m.socket_family, m.socket_protocol, m.query_port) == (dnstap_pb.INET, dnstap_pb.UDP, 2)


def test_time_never_rounds_to_a_full_second() -> None:
    assert dt._split_time(1.9999999999) == (1, 999_999_999)


def test_queue_bound_counts_drops() -> None:
    """Not started: the queue fills to its bound, then every call is a counted drop; stop() drops the rest."""
    tap = dt.Dnstap("unix:/nonexistent/dnstap.sock", queue_size=4)
    for i in range(10):
        tap.client_query(QUERY, ("127.0.0.1", i), False, 0.0)
    tap.forwarder_response(QUERY, RESPONSE, ("127.0.0.1", 53), False, 0.0, 0.0)
    assert (tap.queued, tap.dropped, tap.sent, tap.connected) == (4, 7, 0, False)
    tap.stop()
    assert (tap.queued, tap.dropped) == (0, 11)


class Reader:
    """The reader's side of Frame Streams with fstrm, on one end of a socket pair."""

    def __init__(self, sock: socket.socket, accept: bytes = dt.CONTENT_TYPE, finish: bool = True) -> None:
        self.sock, self.accept, self.finish = sock, accept, finish
        self.frames: list[tuple[int, list[bytes], bytes]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with contextlib.suppress(OSError):  # the test closed its socket pair under us: that ends this reader too
            self.serve()

    def serve(self) -> None:
        codec = fstrm.FstrmCodec()
        self.sock.settimeout(5)
        while True:
            while not codec.process():
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                codec.append(chunk)
            frame = codec.decode()
            self.frames.append(frame)
            if frame[0] == fstrm.FSTRM_CONTROL_READY:
                self.sock.sendall(codec.encode_ctrlaccept(self.accept))
            elif frame[0] == fstrm.FSTRM_CONTROL_STOP:
                if self.finish:
                    self.sock.sendall(codec.encode(ctrl=fstrm.FSTRM_CONTROL_FINISH))
                return


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def handshake(sock: socket.socket, timeout: float = 2.0) -> Sender:
    return Sender.handshake(sock, dt.CONTENT_TYPE, timeout)


def test_frame_streams_session(pair: tuple[socket.socket, socket.socket]) -> None:
    reader = Reader(pair[1])
    sender = handshake(pair[0])
    encode = dt.encoder(b"id")
    payloads = [encode((dt.CLIENT_QUERY, QUERY, None, ("127.0.0.1", p), None, False, 1.0, 0.0)) for p in range(3)]
    sender.send(b"".join(sender.frame(p) for p in payloads), lambda: False)
    sender.finish(2.0)
    reader.thread.join(5)
    kinds = [f[0] for f in reader.frames]
    assert kinds == [fstrm.FSTRM_CONTROL_READY, fstrm.FSTRM_CONTROL_START] + [fstrm.FSTRM_DATA_FRAME] * 3 + [
        fstrm.FSTRM_CONTROL_STOP]
    assert reader.frames[0][1] == [dt.CONTENT_TYPE] and reader.frames[1][1] == [dt.CONTENT_TYPE]
    assert [decode(f[2]).message.query_port for f in reader.frames[2:5]] == [0, 1, 2]


def test_handshake_rejects_another_content_type(pair: tuple[socket.socket, socket.socket]) -> None:
    Reader(pair[1], accept=b"protobuf:something.Else")
    with pytest.raises(ProtocolError, match="accepts"):
        handshake(pair[0])


def test_silent_reader_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    """A reader that never answers READY (a unidirectional one) fails the handshake within its timeout."""
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        handshake(pair[0], timeout=0.2)
    assert time.monotonic() - start < 1.0


def test_missing_finish_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    reader = Reader(pair[1], finish=False)
    sender = handshake(pair[0])
    with pytest.raises(TimeoutError):
        sender.finish(0.2)
    reader.thread.join(5)
    assert reader.frames[-1][0] == fstrm.FSTRM_CONTROL_STOP


def test_idle_sees_the_reader_leave(pair: tuple[socket.socket, socket.socket]) -> None:
    Reader(pair[1])
    sender = handshake(pair[0])
    sender.idle(0.01)  # still there: returns quietly
    pair[1].shutdown(socket.SHUT_RDWR)
    with pytest.raises(ConnectionError):
        sender.idle(1.0)


def test_send_to_a_stalled_reader_gives_up(pair: tuple[socket.socket, socket.socket]) -> None:
    """Nobody reads: send blocks only this thread, and returns (TimeoutError) once told to give up."""
    sender = Sender(pair[0], dt.CONTENT_TYPE)
    deadline = time.monotonic() + 0.3
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        sender.send(b"x" * (64 << 20), lambda: time.monotonic() > deadline)
    assert time.monotonic() - start < 1.5
