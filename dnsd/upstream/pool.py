"""Upstream selection and health, as CoreDNS ``forward``: ``max_fails`` failures in a row mark an
upstream down; a down upstream is health-checked in the background (``. IN NS``, any reply
counts) until it answers, and skipped meanwhile. When every upstream is down one is still
tried (a query may find it back before the health check does)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable

from dnsd.servers import Upstream

log = logging.getLogger(__name__)
POLICIES = ("random", "round_robin", "sequential")
HEALTH_QUESTION = b"\x00\x00\x02\x00\x01"  # . IN NS


class State:
    __slots__ = ("checker", "fails", "healthy", "label", "looped", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.label = str(upstream)  # the metrics' name for it, made once rather than per query
        self.fails = 0
        self.healthy = True
        self.looped = False  # dnsd itself: never used again
        self.checker: asyncio.Task | None = None


class Pool:
    """The upstreams of one route (the default, or one stub domain)."""

    def __init__(self, states: list[State], policy: str, max_fails: int, interval: float,
                 probe: Callable[[Upstream], Awaitable[object]], on_check_failed: Callable[[str], None]) -> None:
        self.states = states
        self.policy = policy
        self.max_fails = max_fails
        self.interval = interval
        self.probe = probe
        self.on_check_failed = on_check_failed
        self._next = itertools.count()

    @property
    def down(self) -> bool:
        """Every upstream failed its last ``max_fails`` tries (or is a loop)."""
        return not any(s.healthy and not s.looped for s in self.states)

    def order(self) -> list[State]:
        usable = [s for s in self.states if not s.looped]
        healthy = [s for s in usable if s.healthy]
        if self.policy == "random" and len(healthy) > 1:
            healthy = random.sample(healthy, len(healthy))
        elif self.policy == "round_robin" and healthy:
            start = next(self._next) % len(healthy)
            healthy = healthy[start:] + healthy[:start]
        if healthy:
            return healthy
        return random.sample(usable, min(1, len(usable)))

    def succeeded(self, state: State) -> None:
        state.fails = 0
        if not state.healthy:
            state.healthy = True
            log.info("upstream %s answers again", state.upstream)

    def failed(self, state: State) -> None:
        state.fails += 1
        if self.max_fails and state.fails >= self.max_fails and state.healthy and not state.looped:
            state.healthy = False
            log.warning("upstream %s failed %d times in a row: skipped until a health check passes",
                        state.upstream, state.fails)
            if state.checker is None or state.checker.done():
                state.checker = asyncio.get_running_loop().create_task(self._check(state))

    async def _check(self, state: State) -> None:
        while not state.healthy and not state.looped:
            await asyncio.sleep(self.interval)
            try:
                await self.probe(state.upstream)
            except Exception:
                self.on_check_failed(str(state.upstream))
                continue
            self.succeeded(state)

    def stop(self) -> None:
        for state in self.states:
            if state.checker is not None:
                state.checker.cancel()
                state.checker = None
