"""The query log (--log-queries): one line per answered query, in the common format of CoreDNS's ``log``
plugin, so the tools that read those lines read these:

    10.244.1.7:40211 - 4321 "A IN web.shop.svc.cluster.local. udp 71 true 1232" NOERROR qr,aa,rd 132 0.000041s

that is ``client:port - id "TYPE CLASS name proto size do bufsize" RCODE flags rsize duration``. A class
filter keeps what is asked for (CoreDNS's ``class``: success, denial — NXDOMAIN and NODATA —, error,
or all), and a token bucket bounds the lines per second so that a flood cannot turn logging into the
bottleneck; lines over the bound are counted (``dropped``), not written. Parsing happens only for a
line that passes both: the hit path pays nothing while the log is off.
"""

from __future__ import annotations

import logging
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

from dnslib import CLASS, QTYPE, RCODE

log = logging.getLogger("dnsd.query")


def _to_stdout() -> None:
    """Lines go to standard output as CoreDNS writes them (``[INFO] ...``), apart from dnsd's own log
    on standard error, whatever --log-level says."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[INFO] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False

CLASSES = ("all", "success", "denial", "error")
_FLAGS = ((0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra"), (0x0020, "ad"), (0x0010, "cd"))


def classify(reply: bytes) -> str:
    """success (answers), denial (NXDOMAIN, or NOERROR without answers: NODATA), error (anything else)."""
    rcode = reply[3] & 15
    if rcode == 0:
        return "success" if reply[6:8] != b"\x00\x00" else "denial"
    return "denial" if rcode == 3 else "error"


def line(query: bytes, reply: bytes, client: Any, tcp: bool, seconds: float) -> str:
    """The log line of one query and its reply (both well formed: the reply was sent)."""
    qid, = struct.unpack_from("!H", query)
    end = query.find(0, 12)
    name = _text(query[12:end]) if end > 12 else "."
    qtype, qclass = struct.unpack_from("!HH", query, end + 1) if end > 0 and len(query) >= end + 5 else (0, 0)
    do, bufsize = _edns(query, end + 5)
    flags, = struct.unpack_from("!H", reply, 2)
    rcode = RCODE.get(flags & 15, str(flags & 15))
    words = ",".join(word for bit, word in _FLAGS if flags & bit)
    return (f'{client[0]}:{client[1]} - {qid} "{QTYPE.get(qtype, str(qtype))} {CLASS.get(qclass, str(qclass))} '
            f'{name} {"tcp" if tcp else "udp"} {len(query)} {"true" if do else "false"} {bufsize}" {rcode} '
            f"{words} {len(reply)} {seconds:.6f}s")


def _text(wire: bytes) -> str:
    labels, i = [], 0
    while i < len(wire):
        size = wire[i]
        labels.append(wire[i + 1 : i + 1 + size].decode("latin-1"))
        i += 1 + size
    return ".".join(labels) + "."


def _edns(query: bytes, at: int) -> tuple[bool, int]:
    """The DO bit and UDP size of an OPT record right after the question (512 and False without one)."""
    if query[at : at + 3] != b"\x00\x00\x29" or len(query) < at + 11:
        return False, 512
    size, _, _, flags = struct.unpack_from("!HBBH", query, at + 3)
    return bool(flags & 0x8000), size


class QueryLog:
    """Lines for the queries of the chosen class, at most ``rate`` per second (0: no bound)."""

    def __init__(self, kind: str = "all", rate: float = 1000.0) -> None:
        if kind not in CLASSES:
            raise ValueError(f"query log class {kind!r} is not one of {', '.join(CLASSES)}")
        self.kind = kind
        self.rate = rate
        self.dropped = 0  # lines over the rate bound
        self.written = 0
        self._tokens = rate
        self._last = time.monotonic()
        _to_stdout()

    def write(self, query: bytes, reply: bytes, client: Any, tcp: bool, seconds: float) -> None:
        if len(reply) < 12 or len(query) < 12:
            return
        if self.kind != "all" and classify(reply) != self.kind:
            return
        if self.rate:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1:
                self.dropped += 1
                return
            self._tokens -= 1
        log.info("%s", line(query, reply, client, tcp, seconds))
        self.written += 1

    def write_all(self, answered: Iterable[tuple[bytes, Any, bytes, float]], tcp: bool) -> None:
        """A batch's (query, client, reply, seconds): with the bucket empty and every class logged, the
        whole batch is counted as dropped at once (a flood costs one check a batch)."""
        if self.rate and self.kind == "all":
            now = time.monotonic()
            if min(self.rate, self._tokens + (now - self._last) * self.rate) < 1:
                answered = list(answered)
                self.dropped += len(answered)
                return
        write = self.write
        for query, client, reply, seconds in answered:
            write(query, reply, client, tcp, seconds)


__all__ = ["CLASSES", "QueryLog", "classify", "line"]
