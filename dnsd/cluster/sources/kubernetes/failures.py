"""One resource's failure streak: counts by reason, the outage, and the log lines that say so.

A persistent failure (wrong CA, 401, 403) must stay visible without flooding the log: while a
resource keeps failing it gets one WARNING at most every ``warn_every`` seconds, with the
failure count, the last error and how old the data is, and one INFO line when it recovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dnsd.cluster.sources.kubernetes.client import describe, reason

log = logging.getLogger(__name__)

OUTAGE_AFTER = 2  # consecutive failures (the failure and its first retry) that make an outage


class FailureLog:
    def __init__(self, origin: str, warn_every: float, staleness: Callable[[], str]) -> None:
        self.origin = origin
        self.warn_every = warn_every
        self._staleness = staleness
        self.streak = 0  # consecutive failures; reset by a list, a watch event or a clean watch end
        self.last_error = ""
        self.errors = 0  # failed requests and broken streams, ever
        self.reasons: dict[str, int] = {}  # every error by reason, ever (a 410 too)
        self._since: float | None = None  # monotonic time of the streak's first failure
        self._warned: float | None = None  # monotonic time of the streak's last WARNING
        self.outage_since: float | None = None

    def count(self, exc: BaseException, *, failure: bool = True) -> None:
        if failure:
            self.errors += 1
        why = reason(exc)
        self.reasons[why] = self.reasons.get(why, 0) + 1

    def failed(self, exc: BaseException) -> None:
        self.count(exc)
        self.streak += 1
        self.last_error = describe(exc)
        if self._since is None:
            self._since = time.monotonic()

    def report(self, step: str, *, synced: bool, outage: bool) -> str | None:
        """Log what this failure adds, if anything: "outage" when an outage begins (the caller
        signals it), "warned" for any other WARNING, None when nothing was logged."""
        now = time.monotonic()
        if synced and outage and self.outage_since is None:
            self.outage_since = self._warned = now
            log.warning("%s: outage begun: %s failed (%d failures), last: %s (keeping the data)",
                        self.origin, step, self.streak, self.last_error)
            return "outage"
        if not synced and self._warned is None:  # the first sync is late: say why at once
            self._warned = now
            log.warning("%s: %s failed: %s (retrying)", self.origin, step, self.last_error)
            return "warned"
        if (self.outage_since is not None or not synced) and self._warned is not None \
                and now - self._warned >= self.warn_every:
            # Loud for as long as it lasts, but once per warn_every per resource at most.
            self._warned = now
            since = self._since if self._since is not None else now
            log.warning("%s: still failing: %d failures in %.0f s, last: %s; %s", self.origin, self.streak,
                        now - since, self.last_error, self._staleness())
            return "warned"
        return None

    def succeeded(self, *, synced: bool) -> None:
        if self.streak and self.outage_since is None and self._since is not None and self._warned is not None \
                and synced:
            # Failures that never made an outage but did make a WARNING: say they are over.
            log.info("%s: recovered after %d failures in %.1f s", self.origin, self.streak,
                     time.monotonic() - self._since)
        self.streak = 0
        self._since = None
        if self.outage_since is None:
            self._warned = None

    def end_outage(self) -> bool:
        """True if an outage was on (and is now over: logged)."""
        if self.outage_since is None:
            return False
        log.info("%s: outage ended after %.1f s (%d failures, last: %s)", self.origin,
                 time.monotonic() - self.outage_since, self.streak, self.last_error)
        self.outage_since = self._warned = None
        return True
