"""dnstap output (https://dnstap.info): what dnsd was asked and answered, streamed to a collector.

Usage, in each serving process (a worker makes its own; the readers accept one connection each)::

    tap = Dnstap("unix:/run/dnstap.sock", identity=socket.gethostname().encode())   # or "tcp:HOST:PORT"
    tap.start()
    tap.client_query(query, ("10.0.0.7", 41000), tcp=False, when=time.time())
    tap.client_response(query, reply, ("10.0.0.7", 41000), False, query_time=t0, response_time=time.time())
    tap.forwarder_query(upstream_query, ("10.96.0.10", 53), False, when=t1)
    tap.forwarder_response(upstream_query, upstream_reply, ("10.96.0.10", 53), False, t1, time.time())
    tap.sent, tap.dropped, tap.connected     # for metrics and logs
    tap.stop()                               # at shutdown: best-effort flush, STOP, wait FINISH

The four hit-path methods only append a tuple to a bounded deque (O(1), no lock, no I/O); when the
queue is full they count a drop and return. Call them from one thread (the event loop): the append is
safe from any thread, but the queue-full counter is a plain int. A daemon thread connects to the collector, does the Frame
Streams bidirectional handshake (framestream.py), encodes each message with the ``dnstap-pb``
protobuf classes and writes frames in batches. A collector that is absent, slow or gone never blocks
the caller: while there is no connection the writer retries with a backoff (0.1 s doubling to 5 s) and
drops, counted, what was queued at each failed attempt, so a reconnect never delivers a stale burst;
a slow one fills the queue and the callers' drops are counted. Each message is encoded on the writer
thread, which holds the GIL while it does (about 2.3 us of CPU a message: docs/performance.md).

Fields, as the dnstap schema defines them: CLIENT_* messages have the client as query_address/port
and dnsd's listening address (``local=``, optional) as response_address/port; FORWARDER_* messages have
the upstream as response_address/port and dnsd's outgoing socket (``local=``, optional) as
query_address/port. socket_family follows the address (INET6 when it has a colon), socket_protocol is
UDP or TCP. Times are time.time() floats; a response carries its query's time too.

Libraries: ``dnstap-pb`` (MIT) is the schema compiled for the ``protobuf`` runtime, used as is;
``fstrm`` (MIT) encodes and decodes the frames, but drives no socket, so the handshake and the
transport are written in framestream.py.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import dnstap_pb

from dnsd.observe.framestream import ProtocolError, Sender, Target, parse_target

__all__ = ["CONTENT_TYPE", "Dnstap", "Target", "encoder", "parse_target"]

log = logging.getLogger(__name__)

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 2.0  # connect + handshake; a reader that never answers READY is treated as absent
IDLE_POLL = 0.005  # how long the writer waits on an empty queue: the worst added delivery latency
BATCH = 256  # messages encoded and written per send

CLIENT_QUERY = dnstap_pb.Message.CLIENT_QUERY
CLIENT_RESPONSE = dnstap_pb.Message.CLIENT_RESPONSE
FORWARDER_QUERY = dnstap_pb.Message.FORWARDER_QUERY
FORWARDER_RESPONSE = dnstap_pb.Message.FORWARDER_RESPONSE
_CLIENT_SIDE = (CLIENT_QUERY, CLIENT_RESPONSE)

Address = tuple[str, int]
# What the hit path queues: (message type, query, response, peer, local, tcp, query time, response time).
Item = tuple[int, bytes | None, bytes | None, Address, Address | None, bool, float, float]


def _split_time(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec, min(int((t - sec) * 1e9), 999_999_999)


def _packed(host: str) -> tuple[int, bytes]:
    """(socket family, address bytes); an IPv6 zone ("fe80::1%eth0") is not part of the address."""
    if ":" in host:
        return dnstap_pb.INET6, socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    return dnstap_pb.INET, socket.inet_pton(socket.AF_INET, host)


def encoder(identity: bytes = b"", version: bytes = b"dnsd") -> Callable[[Item], bytes]:
    """A function from a queued item to one serialized Dnstap message. It reuses one protobuf
    object (cheaper than building one per message), so each encoder belongs to one thread."""
    tap = dnstap_pb.Dnstap()
    if identity:
        tap.identity = identity
    if version:
        tap.version = version
    tap.type = dnstap_pb.Dnstap.MESSAGE
    msg = tap.message  # clear this one per message, never tap: tap.Clear() would detach it

    def encode(item: Item) -> bytes:
        kind, query, response, peer, local, tcp, query_time, response_time = item
        msg.Clear()
        msg.type = kind
        family, address = _packed(peer[0])
        msg.socket_family = family
        msg.socket_protocol = dnstap_pb.TCP if tcp else dnstap_pb.UDP
        if kind in _CLIENT_SIDE:
            msg.query_address, msg.query_port = address, peer[1]
            if local is not None:
                msg.response_address, msg.response_port = _packed(local[0])[1], local[1]
        else:
            msg.response_address, msg.response_port = address, peer[1]
            if local is not None:
                msg.query_address, msg.query_port = _packed(local[0])[1], local[1]
        msg.query_time_sec, msg.query_time_nsec = _split_time(query_time)
        if query is not None:
            msg.query_message = query
        if response is not None:
            msg.response_message = response
            msg.response_time_sec, msg.response_time_nsec = _split_time(response_time)
        return bytes(tap.SerializeToString())

    return encode


class Dnstap:
    """A dnstap stream to one collector; see the module docstring."""

    def __init__(self, target: str, *, identity: bytes = b"", version: bytes = b"dnsd", queue_size: int = 8192) -> None:
        """target: "unix:/path/to.sock" or "tcp:HOST:PORT" (IPv6 as tcp:[::1]:PORT); ValueError otherwise."""
        if queue_size < 1:
            raise ValueError(f"dnstap queue size must be at least 1, got {queue_size}")
        self.target: Target = parse_target(target)
        self.identity = identity
        self.version = version
        self.queue_size = queue_size
        self.sent = 0  # frames written (handed to the kernel whole)
        self.connected = False
        self._queue: deque[Item] = deque()
        # Two drop counters, each written by one thread only, so neither += can lose a count.
        self._full = 0  # the hit path's: queue full
        self._lost = 0  # the writer's: no collector, a broken connection, an unencodable message
        self._stopping = threading.Event()
        self._deadline = 0.0  # monotonic time by which stop() wants the writer gone
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Messages that will never reach the collector (queue full, collector absent, slow or gone)."""
        return self._full + self._lost

    @property
    def queued(self) -> int:
        return len(self._queue)

    # The hit path: one length check and one append each. deque.append is atomic under the GIL.

    def client_query(self, query: bytes, client: Address, tcp: bool, when: float, local: Address | None = None) -> None:
        if len(self._queue) < self.queue_size:
            self._queue.append((CLIENT_QUERY, query, None, client, local, tcp, when, 0.0))
        else:
            self._full += 1

    def client_response(self, query: bytes, response: bytes, client: Address, tcp: bool, query_time: float,
                        response_time: float, local: Address | None = None) -> None:
        if len(self._queue) < self.queue_size:
            self._queue.append((CLIENT_RESPONSE, query, response, client, local, tcp, query_time, response_time))
        else:
            self._full += 1

    def forwarder_query(self, query: bytes, upstream: Address, tcp: bool, when: float, local: Address | None = None) -> None:
        if len(self._queue) < self.queue_size:
            self._queue.append((FORWARDER_QUERY, query, None, upstream, local, tcp, when, 0.0))
        else:
            self._full += 1

    def forwarder_response(self, query: bytes, response: bytes, upstream: Address, tcp: bool, query_time: float,
                           response_time: float, local: Address | None = None) -> None:
        if len(self._queue) < self.queue_size:
            self._queue.append((FORWARDER_RESPONSE, query, response, upstream, local, tcp, query_time, response_time))
        else:
            self._full += 1

    # The writer thread.

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("dnstap writer already started")
        self._thread = threading.Thread(target=self._run, name="dnsd-dnstap", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Flush what is queued, STOP, wait for FINISH and close, all within about ``timeout`` seconds;
        whatever is still queued then is counted as dropped."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout + 0.5)  # the writer checks the deadline at least every 0.1 s
        if self._thread is None or not self._thread.is_alive():
            self._drop_queued()

    def _run(self) -> None:
        encode = encoder(self.identity, self.version)
        delay = BACKOFF_MIN
        failing = False  # log the first failure of a streak as a warning, the retries quietly
        while not self._stopping.is_set():
            try:
                sender = Sender.open(self.target, CONTENT_TYPE, CONNECT_TIMEOUT)
            except Exception as e:  # OSError, ProtocolError, or a host name getaddrinfo cannot encode
                self._drop_queued()
                (log.debug if failing else log.warning)("dnstap: no collector at %s (%s); retrying", self.target, e)
                failing = True
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            log.info("dnstap: connected to %s", self.target)
            self.connected, failing, delay = True, False, BACKOFF_MIN
            try:
                self._pump(sender, encode)
            except (OSError, ProtocolError) as e:
                if not self._stopping.is_set():
                    log.warning("dnstap: connection to %s lost (%s); reconnecting", self.target, e)
            except Exception:  # a bug here must not end the thread and leave dnstap dropping everything
                log.exception("dnstap: writer failed; reconnecting")
            finally:
                self.connected = False
                sender.close()
            self._stopping.wait(delay)  # a collector that accepts then drops us is not retried in a loop
        self._drop_queued()

    def _pump(self, sender: Sender, encode: Callable[[Item], bytes]) -> None:
        """Write queued messages until stopped (then flush and STOP) or until the connection breaks."""
        queue = self._queue
        while True:
            batch: list[bytes] = []
            while queue and len(batch) < BATCH:
                item = queue.popleft()
                try:
                    batch.append(sender.frame(encode(item)))
                except (ValueError, OSError, TypeError):  # an address or field that does not encode
                    self._lost += 1
            if batch:
                try:
                    sender.send(b"".join(batch), self._past_deadline)
                except OSError:
                    self._lost += len(batch)  # some frames of it may have arrived; none is counted as sent
                    raise
                self.sent += len(batch)
            elif self._stopping.is_set():
                sender.finish(max(0.05, self._deadline - time.monotonic()))
                return
            else:
                sender.idle(IDLE_POLL)
            if self._past_deadline():
                return

    def _past_deadline(self) -> bool:
        return self._stopping.is_set() and time.monotonic() >= self._deadline

    def _drop_queued(self) -> None:
        queue = self._queue
        while queue:  # popleft, not clear(): the hit path may append meanwhile, and each drop is counted
            queue.popleft()
            self._lost += 1
