"""A steady stream of queries over UDP and TCP, counting every one that got no answer.

Three kinds of client at once, each at its own rate: UDP (a few sockets, each query its own ID),
TCP with a new connection per query (as ``dig +tcp``), and one kept-open TCP connection with
queries pipelined (as a node cache or glibc). The kept-open one behaves as RFC 7766 asks of a
client: when the server closes it, the queries it had not answered are sent again on a new
connection (counted as ``resent``). A query is lost when nothing answered it within ``timeout``;
an answer that is not NOERROR with data counts as ``wrong``. Runs on its own event loop in a
thread, bounded in time by whoever calls ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import threading
import time
from dataclasses import dataclass, field


def query(name: str, qid: int) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"


def good(reply: bytes) -> bool:
    """NOERROR with at least one answer record."""
    return len(reply) >= 12 and reply[3] & 0x0F == 0 and struct.unpack_from("!H", reply, 6)[0] > 0


@dataclass
class Counts:
    sent: int = 0
    answered: int = 0
    wrong: int = 0
    lost: int = 0
    resent: int = 0
    twice: int = 0  # a second reply to one query
    errors: list[str] = field(default_factory=list)

    def note(self, error: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(error)

    def __str__(self) -> str:
        return (f"sent {self.sent}, answered {self.answered}, lost {self.lost}, wrong {self.wrong}, "
                f"resent {self.resent}, twice {self.twice}{'; ' + '; '.join(self.errors[:3]) if self.errors else ''}")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.waiting: dict[int, float] = {}
        self.answered: set[int] = set()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 2:
            return
        qid = struct.unpack_from("!H", data)[0]
        if self.waiting.pop(qid, None) is not None:
            self.answered.add(qid)
            self.stream.answer("udp", data)
        elif qid in self.answered:
            self.stream.counts["udp"].twice += 1


class Stream:
    def __init__(self, host: str, port: int, name: str, *, udp: float = 300, tcp: float = 40, pipelined: float = 100,
                 timeout: float = 2.0, sockets: int = 8) -> None:
        """Rates in queries per second; 0 turns a kind off."""
        self.host, self.port, self.name, self.timeout = host, port, name, timeout
        self.rates = {"udp": udp, "tcp": tcp, "pipelined": pipelined}
        self.counts = {kind: Counts() for kind in self.rates}
        self.sockets = sockets
        self._stopping = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="stream", daemon=True)
        self._ids = itertools.count(1)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Counts]:
        """Stop sending, wait ``timeout`` for what is in flight, and count."""
        self._stopping = True
        self._thread.join(self.timeout + 10)
        return self.counts

    def totals(self) -> Counts:
        total = Counts()
        for c in self.counts.values():
            total.sent += c.sent
            total.answered += c.answered
            total.wrong += c.wrong
            total.lost += c.lost
            total.resent += c.resent
            total.twice += c.twice
            total.errors += c.errors
        return total

    def answer(self, kind: str, reply: bytes) -> None:
        counts = self.counts[kind]
        counts.answered += 1
        if not good(reply):
            counts.wrong += 1

    def _qid(self) -> int:
        return next(self._ids) % 65535 + 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        kinds = []
        if self.rates["udp"]:
            kinds.append(self._udp(loop))
        if self.rates["tcp"]:
            kinds.append(self._tcp())
        if self.rates["pipelined"]:
            kinds.append(self._pipelined())
        await asyncio.gather(*kinds)

    def _due(self, rate: float, started: float, done: int) -> int:
        return int((time.monotonic() - started) * rate) - done

    async def _udp(self, loop: asyncio.AbstractEventLoop) -> None:
        counts = self.counts["udp"]
        socks = [await loop.create_datagram_endpoint(lambda: _Udp(self), remote_addr=(self.host, self.port))
                 for _ in range(self.sockets)]
        started, done = time.monotonic(), 0
        turn = itertools.cycle(socks)
        while not self._stopping:
            for _ in range(self._due(self.rates["udp"], started, done)):
                transport, proto = next(turn)
                qid = self._qid()
                proto.waiting[qid] = time.monotonic()
                transport.sendto(query(self.name, qid))
                counts.sent += 1
                done += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(self.timeout)
        for transport, proto in socks:
            counts.lost += len(proto.waiting)
            transport.close()

    async def _tcp(self) -> None:
        counts = self.counts["tcp"]
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            qid = self._qid()
            writer = None
            try:
                async with asyncio.timeout(self.timeout):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    q = query(self.name, qid)
                    writer.write(len(q).to_bytes(2, "big") + q)
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    self.answer("tcp", await reader.readexactly(size))
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                counts.lost += 1
                counts.note(f"tcp: {exc!r}")
            finally:
                if writer is not None:
                    writer.close()

        started, done = time.monotonic(), 0
        while not self._stopping:
            for _ in range(self._due(self.rates["tcp"], started, done)):
                task = asyncio.ensure_future(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                counts.sent += 1
                done += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks)

    async def _pipelined(self) -> None:
        counts = self.counts["pipelined"]
        waiting: dict[int, tuple[float, bytes]] = {}  # id -> (first sent, query)
        conn: list[asyncio.StreamWriter] = []
        readers: set[asyncio.Future[None]] = set()

        async def connect() -> asyncio.StreamWriter | None:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                counts.note(f"pipelined connect: {exc!r}")
                return None
            for _, q in list(waiting.values()):  # RFC 7766: unanswered queries go again on a new connection
                writer.write(len(q).to_bytes(2, "big") + q)
                counts.resent += 1
            readers.add(asyncio.ensure_future(read(reader, writer)))
            return writer

        async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    if waiting.pop(struct.unpack_from("!H", data)[0], None) is not None:
                        self.answer("pipelined", data)
            writer.close()
            if conn and conn[0] is writer:
                conn.clear()  # closed by the server: the next query (or the sweep) connects again

        started, done = time.monotonic(), 0
        while not self._stopping or (waiting and time.monotonic() - min(t for t, _ in waiting.values()) < self.timeout):
            if not conn and (waiting or not self._stopping):
                writer = await connect()
                if writer is not None:
                    conn.append(writer)
            if not self._stopping:
                for _ in range(self._due(self.rates["pipelined"], started, done)):
                    qid = self._qid()
                    q = query(self.name, qid)
                    waiting[qid] = (time.monotonic(), q)
                    counts.sent += 1
                    done += 1
                    if conn:
                        conn[0].write(len(q).to_bytes(2, "big") + q)
            now = time.monotonic()
            for qid, (sent, _) in list(waiting.items()):
                if now - sent > self.timeout:
                    del waiting[qid]
                    counts.lost += 1
            await asyncio.sleep(0.005)
        counts.lost += len(waiting)
        if conn:
            conn[0].close()


__all__ = ["Counts", "Stream", "good", "query"]
