"""One cheap probe for the whole process while the API is unreachable.

A reflector backing off on its own, with a backoff that grows while the API is down, comes back
long after the API does. Instead, a reflector that cannot reach the API waits here; one thread
sends ``GET /readyz`` about twice a second (jittered) for all of them, and wakes every waiting
reflector the moment the API answers. A down API sees one prober per dnsd process, not one
client per reflector.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import urllib3

log = logging.getLogger(__name__)

INTERVAL = 0.5  # seconds between probes, jittered by +-20%
_TIMEOUT = 1.0


class ApiProbe:
    def __init__(self, host: Callable[[], str], pool: Callable[[], urllib3.PoolManager], stop: threading.Event,
                 interval: float = INTERVAL) -> None:
        self._host = host
        self._pool = pool
        self._stop = stop
        self._interval = interval
        self._cond = threading.Condition()
        self._waiters = 0
        self._generation = 0  # bumped on every answer from the API
        self._thread: threading.Thread | None = None
        self.probes = 0  # requests sent (for tests and the log)

    @property
    def generation(self) -> int:
        return self._generation

    def wait(self, timeout: float, since: int | None = None) -> bool:
        """Block until the API answers a probe (True), ``timeout`` passes or dnsd stops (False).

        ``since``: a ``generation`` read earlier; an answer after that one counts too.
        """
        with self._cond:
            self._waiters += 1
            generation = self._generation if since is None else since
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dnsd-k8s-probe", daemon=True)
                self._thread.start()
            try:
                return self._cond.wait_for(lambda: self._generation != generation or self._stop.is_set(), timeout) \
                    and not self._stop.is_set()
            finally:
                self._waiters -= 1

    def wake(self) -> None:
        """Wake the waiters now (dnsd is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        down_since = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                if not self._waiters:
                    self._thread = None  # the next waiter starts a new one
                    return
            if self._answers():
                log.debug("API answers again after %.2f s: waking the reflectors", time.monotonic() - down_since)
                with self._cond:
                    self._generation += 1
                    self._cond.notify_all()
                down_since = time.monotonic()
            self._stop.wait(self._interval * random.uniform(0.8, 1.2))
        with self._cond:
            self._thread = None
            self._cond.notify_all()

    def _answers(self) -> bool:
        """Any HTTP answer but 5xx/429 means the API is back (a 401 or 403 on /readyz is still
        an API server answering: the reflectors then meet, and report, the real problem)."""
        self.probes += 1
        try:
            response = self._pool().request(
                "GET", self._host().rstrip("/") + "/readyz", retries=False, redirect=False,
                timeout=urllib3.Timeout(connect=_TIMEOUT, read=_TIMEOUT), preload_content=True,
            )
        except Exception as exc:
            log.debug("API probe: %s", exc)
            return False
        return response.status < 500 and response.status != 429
