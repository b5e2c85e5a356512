"""What the server saw: the request log and counters, open watches, and waiting on them."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

from .resources import resource_key, resource_type


@dataclasses.dataclass
class RequestRecord:
    """One HTTP request as seen by the server (for test introspection)."""

    method: str
    path: str
    verb: str  # "list" | "watch" | "get" | "discovery" | "other"
    resource: str  # plural resource, or the path for non-resource requests
    namespace: str | None
    name: str | None
    params: dict[str, str]
    headers: dict[str, str]
    started: float  # time.monotonic()
    status: int | None = None  # set once the status line is sent (a watch: when it starts streaming)
    ended: float | None = None
    # How the request ended: "ok", "error", "timeout" (server-side
    # timeoutSeconds), "expired" (410 ERROR event), "client" (client went
    # away, e.g. its _request_timeout fired), "dropped" (fault injection).
    end: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


class RequestLog:
    """The introspection side of FakeKubeAPI (state in its ``__init__``)."""

    def requests(self, verb: str | None = None, resource: str | None = None) -> list[RequestRecord]:
        """Copies of the logged requests, optionally filtered."""
        res = resource_key(resource)
        with self._lock:
            return [
                dataclasses.replace(r)
                for r in self._log
                if (verb is None or r.verb == verb) and (res is None or r.resource == res)
            ]

    def request_count(self, verb: str | None = None, resource: str | None = None) -> int:
        res = resource_key(resource)
        with self._lock:
            return sum(n for (v, r), n in self._counts.items() if (verb is None or v == verb) and (res is None or r == res))

    def request_counts(self) -> dict[tuple[str, str], int]:
        """{(verb, resource): n} for every request received so far."""
        with self._lock:
            return dict(self._counts)

    def open_watches(self, resource: str | None = None) -> int:
        rt = resource_type(resource) if resource else None
        with self._lock:
            return sum(1 for w in self._watchers if rt is None or w.rt is rt)

    def open_watch_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(w.rt.resource for w in self._watchers))

    def reset_stats(self) -> None:
        """Clear the request log and counters (not the objects)."""
        with self._lock:
            self._log.clear()
            self._counts.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
        """Poll ``predicate`` until true; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            time.sleep(interval)

    def wait_for_watches(self, n: int, resource: str | None = None, timeout: float = 5.0) -> None:
        """Wait until exactly n watches (of ``resource``) are open."""
        self.wait_until(lambda: self.open_watches(resource) == n, timeout)
