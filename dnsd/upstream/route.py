"""Which upstreams answer a name: the most specific ``--stub-domain`` that holds it, else the default
``--upstream`` pool, else none (the name gets REFUSED).

Also the registry of upstreams: one ``State`` per upstream however many routes name it, so its
health and a detected loop count for every route alike, numbered in a fixed order that the
loop probes carry (loops.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from dnsd.config import Config
from dnsd.servers import Upstream
from dnsd.upstream.pool import Pool, State


def is_own_address(upstream: Upstream, config: Config) -> bool:
    """``upstream`` is one of dnsd's own listen addresses (a wildcard listener covers loopback)."""
    if (upstream.host, upstream.port) in {(a, config.port) for a in config.addresses}:
        return True
    wildcard = any(a in ("0.0.0.0", "::") for a in config.addresses)
    return wildcard and upstream.port == config.port and upstream.host.startswith(("127.", "::1"))


class Routes:
    """The pools of one forwarder, and the states of their upstreams."""

    def __init__(self, config: Config, probe: Callable[[Upstream], Awaitable[object]],
                 check_failed: Callable[[str], None], looped: Callable[[State, str], None]) -> None:
        """``probe``: a pool's health check; ``check_failed``: counts a failed one; ``looped``: marks
        an upstream that is dnsd itself (here: one of its own listen addresses)."""
        self._by_upstream: dict[Upstream, State] = {}
        self.states: list[State] = []  # every upstream once, in a fixed order: the loop probes' numbers

        def pool(upstreams: Iterable[Upstream]) -> Pool:
            states = []
            for upstream in upstreams:
                state = self._by_upstream.get(upstream)
                if state is None:
                    state = self._by_upstream[upstream] = State(upstream)
                    self.states.append(state)
                    if is_own_address(upstream, config):
                        looped(state, "it is one of dnsd's own listen addresses")
                states.append(state)
            return Pool(states, config.policy, config.max_fails, config.health_check, probe, check_failed)

        self.default = pool(config.upstreams) if config.upstreams else None
        # Longest zone first: the most specific stub domain wins.
        self.stubs = [("." + s.zone, s.zone, pool(s.servers))
                      for s in sorted(config.stub_domains, key=lambda s: -len(s.zone))]

    def is_stub(self, name: str) -> bool:
        return any(name == zone or name.endswith(suffix) for suffix, zone, _ in self.stubs)

    def pool(self, name: str) -> Pool | None:
        """The pool that answers ``name`` (lowercased text, no final dot); None: nobody does."""
        for suffix, zone, pool in self.stubs:
            if name == zone or name.endswith(suffix):
                return pool
        return self.default

    def routed(self, name: str) -> bool:
        return self.pool(name) is not None

    def pools(self) -> list[Pool]:
        return [p for p in (self.default, *(p for _, _, p in self.stubs)) if p is not None]


__all__ = ["Routes", "is_own_address"]
