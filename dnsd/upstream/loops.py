"""Forwarding-loop detection, as CoreDNS's ``loop`` plugin.

At start each upstream is asked a name only this dnsd would ask:
``<token>.<upstream number>.dnsd-loop-probe.invalid HINFO``. If that question reaches dnsd
itself, the upstream forwards to us: it is marked looped and never used again (asking it
would send every forwarded query round in circles until it timed out). An upstream that is
one of dnsd's own listen addresses is marked the same way without asking (route.py).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence

from dnsd.dns.const import HINFO, IN
from dnsd.dns.names import name_wire
from dnsd.servers import Upstream
from dnsd.upstream.pool import State
from dnsd.upstream.stats import ForwardStats

log = logging.getLogger(__name__)
LOOP_SUFFIX = "dnsd-loop-probe.invalid"
ROUNDS = 3  # probes per upstream, so one of them reaches every worker that shares the port
ROUND_GAP = 0.2  # seconds between two rounds


class Loops:
    """The probes of one dnsd (``token`` is shared by its workers) and the upstreams found looped."""

    def __init__(self, token: str, stats: ForwardStats) -> None:
        self.token = token
        self.stats = stats

    def mark(self, state: State, why: str) -> None:
        """Never forward to ``state`` again; logged once per upstream."""
        if state.looped:
            return
        state.looped = True
        self.stats.loops += 1
        log.error("forwarding loop: upstream %s is dnsd itself (%s); not forwarding to it, "
                  "cluster zones are still served", state.upstream, why)

    def came_back(self, name: str, states: Sequence[State]) -> bool:
        """``name`` (ending in LOOP_SUFFIX) is one of our own probes: mark the upstream it was sent
        to. True when it is ours (the asker, an upstream, gets SERVFAIL); False: forward it as any name."""
        labels = name.split(".")
        if labels[0] != self.token or not labels[1].isdigit():
            return False
        number = int(labels[1])
        if number < len(states):
            self.mark(states[number], "a loop-detection query sent to it came back to dnsd")
        return True

    async def probe(self, states: Sequence[State], send: Callable[[Upstream, bytes], None]) -> None:
        """Send every usable upstream its probe question (``send``: fire and forget), a few rounds."""
        for _ in range(ROUNDS):
            for number, state in enumerate(states):
                if state.looped or state.upstream.tls_name:  # a DoT server is never dnsd (no TLS listener)
                    continue
                send(state.upstream, name_wire(f"{self.token}.{number}.{LOOP_SUFFIX}") + struct.pack("!HH", HINFO, IN))
            await asyncio.sleep(ROUND_GAP)


__all__ = ["LOOP_SUFFIX", "Loops"]
