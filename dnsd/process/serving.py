"""What every serving process runs alike, the main process and each worker: the listeners over a
Responder and, when upstreams are configured, the process's own forwarder and cache."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from dnsd.answer.responder import Responder
from dnsd.config import Config
from dnsd.net.listeners import DnsServer
from dnsd.net.tcp import Slots
from dnsd.observe.metrics import Snapshot, snapshot
from dnsd.observe.tap import Tap
from dnsd.runtime import tune_gc, use_uvloop

if TYPE_CHECKING:
    from dnsd.upstream.forwarder import Forwarder

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a serving process's main coroutine on the event loop every process uses."""
    use_uvloop()
    tune_gc()
    return asyncio.run(main)


class Serving:
    """A Responder's DNS listeners (UDP and TCP) and forwarder, started and closed together."""

    def __init__(self, config: Config, responder: Responder, *, slots: Slots | None = None) -> None:
        self.config = config
        self.forwarder: Forwarder | None = None
        if config.forwards:  # each process forwards and caches for itself
            # Imported here, not before the zygote forks: without upstreams no process loads it (ssl with it).
            from dnsd.upstream.forwarder import Forwarder

            self.forwarder = Forwarder(config)
        responder.forward = self.forwarder
        self.tap = Tap.from_config(config)
        if self.tap is not None and self.forwarder is not None:
            self.forwarder.asked = self.tap.upstream
            if config.dnstap:
                tap, tcp = self.tap, config.force_tcp
                self.forwarder.fetcher.tapped = lambda up, query, reply, sent: tap.forwarded(
                    (up.host, up.port), query, reply, sent, tcp or bool(up.tls_name))
        self.dns = DnsServer(config, responder, slots=slots, forwarder=self.forwarder,
                             tap=self.tap)

    async def listen(self) -> str | None:
        """Open every listener; the reason when one cannot be opened."""
        if self.tap is not None:
            self.tap.start()
        try:
            await self.dns.start()
        except OSError as exc:
            return f"cannot listen on port {self.config.port}: {exc}"
        return None

    def forward(self) -> None:
        """Start forwarding (its loop probes must find every process of the server listening)."""
        if self.forwarder is not None:
            self.forwarder.start()

    def snapshot(self, synced: bool, records: int = 0, services: int = 0,
                 programming: list[float] | None = None) -> Snapshot:
        """This process's counters (a worker holds no data of its own: records and services 0)."""
        return snapshot(self.dns.listeners, self.forwarder, synced=synced, records=records, services=services,
                        programming=programming or [], tap=self.tap)

    def top(self) -> dict[str, Any] | None:
        """Top talkers counted since the last call; None when they are not counted."""
        return self.tap.drain() if self.tap is not None else None

    async def close(self) -> None:
        """Stop answering: UDP at once, TCP once the query in hand is answered; then forwarding."""
        await self.dns.close()
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.tap is not None:
            self.tap.stop()

    async def drain(self) -> None:
        """Leave the port without losing a query (net/listeners.py), then stop forwarding. UDP waits at
        most a forward's time for the replies in flight; open TCP connections get the idle timeout."""
        config = self.config
        await self.dns.drain(config.tcp_idle_timeout, config.forward_timeout + 1)
        if self.forwarder is not None:
            self.forwarder.stop()


__all__ = ["Serving", "run"]
