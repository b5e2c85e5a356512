"""A scripted upstream DNS server on loopback (UDP and TCP on one port), for the forwarding tests.

``mode`` (or ``modes[name]`` for one name) picks how it replies:
answer, nxdomain (with SOA), servfail, tc (UDP: TC set and no data; TCP: the answer),
big (100 A records: over 1232 bytes, so TC by UDP), slow (answer after ``delay``), silent,
wrong_source (the answer sent from 127.0.0.2), wrong_id, wrong_question (the name's case
flipped), garbage (the right ID and question, then random bytes), loop (relay to ``loop_to`` and back).
Every query it receives is recorded in ``seen``. With ``rich`` set, ``answer`` also has AAAA, MX
and TXT records, and a NODATA for any other type carries an SOA (so it can be cached).
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import threading
import time
from typing import NamedTuple

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

from tests.helpers import free_port


class Seen(NamedTuple):
    proto: str
    name: str  # as received (case kept)
    qtype: str
    qid: int
    port: int  # the client's source port
    rd: bool
    edns: bool


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: TCP connections are TLS with this server context (DNS over TLS)."""
        self.host = host
        self.mode = "answer"
        self.modes: dict[str, str] = {}
        self.ttl = 300
        self.address = "192.0.2.1"
        self.rich = False
        self.delay = 1.0
        self.loop_to: tuple[str, int] | None = None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.port = port or free_port(host)
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                outer._udp(data, sock, self.client_address)

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        return
                    data = self.rfile.read(int.from_bytes(head, "big"))
                    reply = outer._reply(data, "tcp")
                    if reply is None:
                        continue
                    self.wfile.write(len(reply).to_bytes(2, "big") + reply)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp_class = type("Udp", (socketserver.ThreadingUDPServer,), {"address_family": family, "allow_reuse_address": True})
        def get_request(server: socketserver.TCPServer) -> tuple[socket.socket, object]:
            conn, addr = server.socket.accept()
            if tls is not None:
                conn.settimeout(5)
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    raise
            return conn, addr

        tcp_class = type("Tcp", (socketserver.ThreadingTCPServer,), {"address_family": family, "get_request": get_request})
        self._udp_server = udp_class((host, self.port), Udp)
        self._tcp_server = tcp_class((host, self.port), Tcp, bind_and_activate=False)
        self._tcp_server.allow_reuse_address = True
        self._tcp_server.daemon_threads = self._udp_server.daemon_threads = True
        self._tcp_server.server_bind()
        self._tcp_server.server_activate()
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                         for s in (self._udp_server, self._tcp_server)]

    def __enter__(self) -> FakeUpstream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._udp_server, self._tcp_server):
            server.shutdown()
            server.server_close()

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def count(self, name: str | None = None, proto: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if (name is None or s.name.lower().rstrip(".") == name.lower().rstrip("."))
                       and (proto is None or s.proto == proto))

    # -- replies -------------------------------------------------------------------
    def _mode(self, name: str) -> str:
        return self.modes.get(name.lower().rstrip("."), self.mode)

    def _udp(self, data: bytes, sock: socket.socket, client: tuple[str, int]) -> None:
        try:
            name = str(DNSRecord.parse(data).q.qname)
        except Exception:
            return
        mode = self._mode(name)
        if mode == "loop" and self.loop_to:
            reply = self._relay(data)
            if reply:
                sock.sendto(reply, client)
            return
        reply = self._reply(data, "udp")
        if reply is None:
            return
        if mode == "wrong_source":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind(("127.0.0.2", 0))
                other.sendto(reply, client)
            return
        sock.sendto(reply, client)

    def _relay(self, data: bytes) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            assert self.loop_to is not None
            s.sendto(data, self.loop_to)
            try:
                return s.recv(65535)
            except OSError:
                return None

    def _reply(self, data: bytes, proto: str) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None
        q = query.q
        name = str(q.qname)
        with self._lock:
            self.seen.append(Seen(proto, name, QTYPE.get(q.qtype), query.header.id, 0, bool(query.header.rd),
                                  any(rr.rtype == 41 for rr in query.ar)))
        mode = self._mode(name)
        if mode == "silent":
            return None
        if mode == "slow":
            time.sleep(self.delay)
        reply = query.reply()
        reply.ar = []
        if mode == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR("example.", QTYPE.SOA, ttl=60, rdata=SOA("ns.example.", "h.example.", (1, 7200, 900, 86400, 30))))
        elif mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif mode == "tc" and proto == "udp":
            reply.header.tc = 1
        elif mode == "big":
            for i in range(100):
                reply.add_answer(RR(q.qname, QTYPE.A, ttl=self.ttl, rdata=A(f"198.51.100.{i + 1}")))
            if proto == "udp":
                reply = query.reply()
                reply.ar = []
                reply.header.tc = 1
        elif q.qtype == QTYPE.A or mode == "tc":
            reply.add_answer(RR(q.qname, QTYPE.A, ttl=self.ttl, rdata=A(self.address)))
        elif self.rich and q.qtype in RICH:
            reply.add_answer(RR(q.qname, q.qtype, ttl=self.ttl, rdata=RICH[q.qtype](q.qname)))
        elif self.rich:
            reply.add_auth(RR("example.", QTYPE.SOA, ttl=60, rdata=SOA("ns.example.", "h.example.", (1, 7200, 900, 86400, 30))))
        wire = reply.pack()
        if mode == "wrong_id":
            wire = ((query.header.id + 1) & 0xFFFF).to_bytes(2, "big") + wire[2:]
        elif mode == "wrong_question":
            wire = _flip_case(wire)
        elif mode == "garbage":  # the right ID and question, then a body that does not parse
            qend = wire.index(0, 12) + 5
            wire = wire[:6] + b"\x00\x05\x00\x00\x00\x00" + wire[12:qend] + b"\xc0\x0c" + os.urandom(40)
        return wire


RICH = {QTYPE.AAAA: lambda _name: AAAA("2001:db8::1"), QTYPE.MX: lambda name: MX(name.add("mail"), 10),
        QTYPE.TXT: lambda name: TXT(f"for {name}")}


def _flip_case(wire: bytes) -> bytes:
    """The same reply with the question name's letters in the other case."""
    end = wire.index(0, 12)
    return wire[:12] + wire[12:end].swapcase() + wire[end:]

