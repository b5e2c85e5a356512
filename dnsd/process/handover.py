"""Handing the port over between two dnsd: what the steering program may do while both serve, and
a drain cut short by a second signal.

While another process's sockets share the port (an old dnsd draining, or a new one starting), the
group's steering program would pick sockets by a place in the group that the other dnsd's sockets
also hold: it may send a query to a socket that is about to close. So a dnsd that finds the port
shared at start leaves the group's program as it is (the old dnsd's, which chooses among the old
sockets, or none) and attaches its own only once its sockets are alone; a draining dnsd first
takes the program off, so that the kernel picks by sender among the sockets not sealed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from dnsd.net.reuseport import inode, others
from dnsd.process.steering import steer, unsteer

log = logging.getLogger(__name__)
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


class Steering:
    """The UDP steering of a dnsd with workers: attached when its sockets are the port's whole group."""

    def __init__(self, socks: list[socket.socket], workers: int, ours: Callable[[], set[int]]) -> None:
        """``ours``: the inodes of every UDP socket of this dnsd (the main process's and its workers')."""
        self.socks = socks
        self.workers = workers
        self.ours = ours
        self.waiting: list[socket.socket] = []  # shared with another process: not steered yet

    def start(self) -> None:
        """Before any worker joins: steer each group this process is alone in; wait for the others."""
        for sock in self.socks:
            if others(sock, set()):
                host, port = sock.getsockname()[:2]
                log.info("another process serves %s port %d (SO_REUSEPORT): sharing it until that one leaves; "
                         "queries are steered to workers by name after that", host, port)
                self.waiting.append(sock)
                _check_migrate()
            else:
                steer(sock, self.workers)

    def tick(self) -> None:
        """Once a second: steer the groups that the other process has left."""
        if not self.waiting:
            return
        ours = self.ours()
        for sock in list(self.waiting):
            if sock.fileno() >= 0 and not others(sock, ours):
                self.waiting.remove(sock)
                if steer(sock, self.workers):
                    log.info("alone on %s port %d again: queries steered to workers by name", *sock.getsockname()[:2])

    def release(self) -> None:
        """Draining: the program off every group, so the kernel skips our sealed sockets."""
        self.waiting = []
        for sock in self.socks:
            if sock.fileno() >= 0:
                unsteer(sock)


def _check_migrate() -> None:
    try:
        with open(MIGRATE_REQ) as f:
            enabled = f.read().strip() != "0"
    except OSError:
        return  # before Linux 5.14
    if not enabled:
        log.info("net.ipv4.tcp_migrate_req is 0: a TCP handshake completing in the instant a dnsd closes its "
                 "listener is reset rather than handed to the other (deploy/node-local sets it to 1)")


async def drain_unless(drain: Coroutine[Any, Any, None], now: asyncio.Event) -> bool:
    """Run ``drain`` until it ends or ``now`` is set (a second SIGTERM, or SIGINT); False if cut short."""
    task = asyncio.ensure_future(drain)
    stop = asyncio.ensure_future(now.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def inodes(socks: list[socket.socket]) -> list[int]:
    return [inode(s) for s in socks if s.fileno() >= 0]


__all__ = ["Steering", "drain_unless", "inodes"]
