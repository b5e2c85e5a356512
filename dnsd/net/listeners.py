"""The DNS listeners of one process: its UDP sockets (udp.py) and TCP listeners (tcp.py), opened and closed.

They move bytes between sockets and the Responder; they decide nothing about DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from dnsd.answer.responder import Responder
from dnsd.answer.transfer import ZoneTransfer
from dnsd.config import Config
from dnsd.net.acl import Allowed
from dnsd.net.reuseport import seal
from dnsd.net.tcp import Slots, TcpConnections
from dnsd.net.udp import UdpListener
from dnsd.observe.metrics import Listener

if TYPE_CHECKING:
    from dnsd.observe.tap import Tap
    from dnsd.upstream.forwarder import Forwarder

log = logging.getLogger(__name__)


# The receive buffer is a queue: it should hold a burst (a node's pods restarting together), not
# seconds of work. The kernel charges each small datagram ~830 bytes (its skb; measured on loopback,
# Linux 6.x) against twice the size asked for, so 512 KiB holds ~1,260 queries: ~20 ms of work on the
# fast path, ~80 ms on the strict path (~15k/s per worker). Past that the kernel drops at once, so
# under overload the queries that are answered are answered fast (4 MiB held ~10,000: 0.7 s).
UDP_RCVBUF = 512 << 10
UDP_SNDBUF = 4 << 20  # replies leave at once on a healthy host; a big buffer only avoids drops in bursts


def _size_buffers(sock: socket.socket) -> None:
    """Set the UDP buffers; the kernel caps them at net.core.[rw]mem_max, which is fine."""
    for option, size in ((socket.SO_RCVBUF, UDP_RCVBUF), (socket.SO_SNDBUF, UDP_SNDBUF)):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


class DnsServer:
    """The UDP and TCP listeners of one process."""

    def __init__(self, config: Config, responder: Responder, slots: Slots | None = None,
                 forwarder: Forwarder | None = None, tap: Tap | None = None) -> None:
        """``tap``: what watches the answers (observe/tap.py); None when nothing does."""
        self.config = config
        self.tap = tap
        self.responder = responder
        self.forwarder = forwarder
        self.allowed = Allowed(config.allow_from) if config.allow_from else None
        transfer = ZoneTransfer(config.transfer_to, responder) if config.transfer_to else None
        self.tcp = TcpConnections(responder, slots or Slots(config.tcp_max_connections), config.tcp_idle_timeout,
                                  forwarder, self.allowed, transfer, tap)
        self.listeners: list[Listener] = []
        self._udp: list[socket.socket] = []
        self._readers: list[UdpListener] = []
        self._tcp: list[tuple[asyncio.Server, Listener]] = []

    @property
    def udp_sockets(self) -> list[socket.socket]:
        return list(self._udp)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.config.addresses:
            family = "2" if ipaddress.ip_address(address).version == 6 else "1"
            server = f"dns://{address}:{self.config.port}"
            udp = Listener("udp", family, server)
            sock = socket.socket(socket.AF_INET6 if family == "2" else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                # Always: our workers share the port, and so may the next dnsd during a handover (reuseport.py).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((address, self.config.port))
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            _size_buffers(sock)
            self._udp.append(sock)
            tcp = Listener("tcp", family, server)
            self._tcp.append((await loop.create_server(
                functools.partial(self.tcp.connection, tcp), host=address, port=self.config.port,
                reuse_port=True, backlog=1024,
            ), tcp))
            # UDP is read only once TCP listens too: a client that got a UDP answer (or TC) can use TCP.
            reader = UdpListener(sock, self.responder, udp, self.forwarder, self.allowed, self.config.shed_after,
                                 self.tap)
            loop.add_reader(sock.fileno(), reader.readable)
            self._readers.append(reader)
            if self.forwarder is not None:
                self.forwarder.between(reader.hits_only)
            self.listeners += [udp, tcp]
            log.info("DNS on %s:%d (UDP and TCP)", address, self.config.port)

    async def close(self, grace: float = 3.0) -> None:
        """Stop accepting; let connections finish the query they are answering; close the rest."""
        self._close_udp()
        for server, _ in self._tcp:
            server.close()
        await self.tcp.close(grace)

    def _close_udp(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._udp:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
                sock.close()

    async def drain(self, tcp_limit: float, udp_limit: float) -> None:
        """Leave the port without losing a query: new ones go to the other sockets of the port (another
        dnsd's, in a handover); what reached ours is answered. UDP: sealed, then read until nothing has
        waited for QUIET seconds and no forward is in flight (at most ``udp_limit``). TCP: the connections
        the kernel has completed are accepted before the listener closes; open connections are served
        until they close or idle out, at most ``tcp_limit`` seconds, then closed between two queries."""
        for sock in self._udp:
            seal(sock)
        await self._stop_accepting()
        await self._udp_quiet(udp_limit)
        self._close_udp()
        await self.tcp.drain(tcp_limit)

    QUIET = 0.1  # seconds with nothing waiting: a datagram the kernel steered here before the seal is read by then

    async def _udp_quiet(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            busy = any(r.waiting() for r in self._readers) or (self.forwarder is not None and self.forwarder.busy)
            if busy:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.QUIET:
                return

    async def _stop_accepting(self) -> None:
        """Close the TCP listeners, first accepting what the kernel completed for them. A duplicate of
        each listening socket keeps it in the port's group while the event loop lets go of it, so the
        last accept and the close are two system calls apart (with net.ipv4.tcp_migrate_req=1 the
        kernel hands even that instant's connections to the other listeners of the port)."""
        loop = asyncio.get_running_loop()
        for server, lst in self._tcp:
            held = [socket.socket(fileno=os.dup(s.fileno())) for s in server.sockets]
            server.close()
            for sock in held:
                with sock:
                    sock.setblocking(False)
                    while True:
                        try:
                            conn, _ = sock.accept()
                        except ConnectionError:  # reset before we took it
                            continue
                        except OSError:  # BlockingIOError: nothing left
                            break
                        await self._adopt(loop, conn, lst)

    async def _adopt(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, lst: Listener) -> None:
        try:
            await loop.connect_accepted_socket(lambda: self.tcp.connection(lst), conn)
        except OSError:
            conn.close()


__all__ = ["DnsServer"]
