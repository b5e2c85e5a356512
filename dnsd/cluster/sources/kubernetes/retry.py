"""What a reflector does after a failed list or watch: try again at once, wait for the API, or back off.

A 410 relists at once and a 401 reloads the credentials and retries at once, but only the first
of a streak: a server that keeps answering so must not make us spin. An unreachable API is
waited out on the shared probe (``probe``), not with a backoff that grows while it is down.
Anything else backs off exponentially.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import urllib3
from kubernetes.client.exceptions import ApiException

from dnsd.cluster.sources.kubernetes.client import Gone, retry_after, unreachable
from dnsd.cluster.sources.kubernetes.failures import OUTAGE_AFTER, FailureLog
from dnsd.cluster.sources.kubernetes.probe import ApiProbe
from dnsd.cluster.store import Op, Synced

log = logging.getLogger(__name__)


class Retry:
    """One reflector's retry state; every success starts it over."""

    def __init__(
        self, origin: str, backoff: tuple[float, float], stop: threading.Event, failures: FailureLog,
        emit: Callable[[list[Op]], None], *, probe: ApiProbe | None = None,
        reauth: Callable[[str], bool] | None = None,
    ) -> None:
        self.origin = origin
        self._backoff = backoff
        self._stop = stop
        self._failures = failures
        self._emit = emit  # to tell the store that an outage began
        self._probe = probe
        self._reauth = reauth
        self._step = 0  # backoff exponent; also reset when the probe sees the API come back
        self._probe_wakes = 0  # probe wake-ups since the last success
        self._reauthed = False  # a 401 reloaded the credentials since the last success
        self._gone_streak = 0  # 410s with no watch event in between

    def succeeded(self) -> None:
        """The API works again: backoff starts over."""
        self._step = 0
        self._probe_wakes = 0
        self._reauthed = False

    def watched(self) -> None:
        """A watch event: the next 410 relists at once again."""
        self._gone_streak = 0

    def relist_at_once(self, exc: Exception) -> bool:
        """A 410 ended the watch. The second one with no event since the last relist backs off
        first, or a confused server would have us list in a tight loop."""
        self._gone_streak += 1
        if self._gone_streak > 1:
            return False
        self._failures.count(exc, failure=False)
        return True

    def reauthed(self, exc: Exception) -> bool:
        """A 401 that reloaded the credentials: retry at once, the first time of a streak only.

        Every 401 reads the credentials again (the operator may fix the secret at any time);
        later ones retry after the backoff: a token the server keeps refusing must not make us spin.
        """
        if isinstance(exc, ApiException) and exc.status == 401 and self._reauth \
                and self._reauth(f"{self.origin} got HTTP 401") and not self._reauthed:
            self._reauthed = True
            self._failures.count(exc)  # counted, but no outage: retry at once with the new credentials
            return True
        return False

    def wait(self, exc: Exception, step: str, *, synced: bool) -> None:
        """Count a failure of ``step`` ("list" or "watch") and say so; return when it is time to try again."""
        delay = self._failed(exc, step, synced)
        if unreachable(exc) and self._probe is not None and self._probe_wakes < 2:
            # Twice at most: if the probe gets answers but we still cannot reach this resource,
            # the ordinary backoff applies.
            self._await_api(step, synced)
            return
        self._stop.wait(delay)

    def _failed(self, exc: Exception, step: str, synced: bool) -> float:
        """Count a failure, maybe begin an outage, say so; the backoff delay before the next attempt."""
        self._failures.failed(exc)
        self._step += 1
        expected = isinstance(exc, ApiException | urllib3.exceptions.HTTPError | OSError | ValueError | Gone)
        if not expected:  # a bug rather than the network: keep the traceback
            log.warning("%s: unexpected error", self.origin, exc_info=exc)
        low, high = self._backoff
        ceiling = min(high, low * 2 ** (self._step - 1))
        # Full jitter: replicas that lost the API together do not come back in lockstep.
        delay = max(random.uniform(0, ceiling), min(retry_after(exc), high))
        if not self._report(step, synced=synced, outage=self._failures.streak >= OUTAGE_AFTER):
            log.debug("%s: %s failed: %s (retry in %.2f s)", self.origin, step, self._failures.last_error, delay)
        return delay

    def _await_api(self, step: str, synced: bool) -> None:
        assert self._probe is not None
        since = self._probe.generation
        began = time.monotonic()
        deadline = began + self._backoff[1]
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # retry on our own now and then, in case the probe is wrong
            if self._probe.wait(min(1.0, remaining), since):
                self._probe_wakes += 1
                self._step = 0
                return
            if time.monotonic() - began >= 1.0:
                # Unreachable for over a second: that is an outage already, and it stays loud.
                self._report(step, synced=synced, outage=True)

    def _report(self, step: str, *, synced: bool, outage: bool) -> bool:
        said = self._failures.report(step, synced=synced, outage=outage)
        if said == "outage":
            try:
                self._emit([Synced(self.origin, False)])
            except Exception:  # the caller's bug; the reflector must keep going
                log.exception("%s: emit failed", self.origin)
        return said is not None
