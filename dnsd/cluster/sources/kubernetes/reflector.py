"""A reflector: list, then watch, one resource (in one namespace, or all of them) into one origin.

The list is a streamed list (watch-list: ``sendInitialEvents=true``, ending at the bookmark
annotated ``k8s.io/initial-events-end``, then the same stream goes on as the watch) when the
server offers it, else paginated. The watch resumes from the last seen resourceVersion when
it ends or fails; only a 410 Gone makes it list again (``retry``: what a failure costs).

A relist is sent as its changes only (``held``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from dnsd.cluster.sources.kubernetes.client import describe, gone
from dnsd.cluster.sources.kubernetes.failures import FailureLog
from dnsd.cluster.sources.kubernetes.held import Held, Listing, raw_key
from dnsd.cluster.sources.kubernetes.probe import ApiProbe
from dnsd.cluster.sources.kubernetes.retry import Retry
from dnsd.cluster.sources.kubernetes.stream import Event, Requests, Stopped, event_lines
from dnsd.cluster.sources.kubernetes.typed import event_decoder, page_reader
from dnsd.cluster.store import Op, Synced
from dnsd.runtime import release_heap

log = logging.getLogger(__name__)

WARN_EVERY = 60.0  # seconds between WARNINGs while one resource keeps failing
_BIG_LIST = 1000  # objects


@dataclasses.dataclass(frozen=True, slots=True)
class ReflectorStatus:
    origin: str
    synced: bool  # the first full list is done
    healthy: bool  # the watch currently works
    last_event: float | None  # time.time() of the last list or watch event (bookmarks too)
    relists: int  # full lists after the first one (after a 410, or after a lost list)
    restarts: int  # watches opened again (after a normal end or a failure)
    errors: int  # failed requests and broken streams
    errors_by_reason: tuple[tuple[str, int], ...] = ()  # for dnsd_source_errors_total


@dataclasses.dataclass
class Options:
    """Shared by the reflectors of one source."""

    page_size: int = 500
    watch_timeout: int = 300
    read_timeout: float = 75.0
    backoff: tuple[float, float] = (0.8, 30.0)
    watch_list: bool = True  # try streamed lists; turned off for good when the server refuses
    warn_every: float = WARN_EVERY
    pod_names: bool = False  # --endpoint-pod-names


class _NoStreamedList(Exception):
    """The server ignored sendInitialEvents (older than 1.27): a plain bookmark came first."""


class Reflector:
    def __init__(
        self, origin: str, kind: str, call: Callable[..., Any], emit: Callable[[list[Op]], None],
        stop: threading.Event, options: Options, *, probe: ApiProbe | None = None,
        reauth: Callable[[str], bool] | None = None,
    ) -> None:
        self.origin = origin
        self.kind = kind
        self._emit_ops = emit
        self._stop = stop
        self._options = options
        self._requests = Requests(call, stop, options.read_timeout)
        self._decode = event_decoder(kind, options.pod_names)
        self._each_item = page_reader(kind, options.pod_names)
        self._held = Held(origin, kind, options.pod_names)
        self._rv: str | None = None  # None: the next step is a (re)list
        self._listing: Listing | None = None  # a streamed list before its initial-events-end
        self.failures = FailureLog(origin, options.warn_every, self._staleness)
        self._retry = Retry(origin, options.backoff, stop, self.failures, self._emit, probe=probe, reauth=reauth)
        self._watches = 0
        self.synced = False
        self.healthy = False
        self.last_event: float | None = None
        self.lists = 0
        self.thread = threading.Thread(target=self._run, name=f"dnsd-{origin}", daemon=True)

    def status(self) -> ReflectorStatus:
        return ReflectorStatus(
            self.origin, self.synced, self.healthy, self.last_event,
            max(0, self.lists - 1), max(0, self._watches - 1), self.failures.errors,
            tuple(sorted(self.failures.reasons.items())),
        )

    def interrupt(self) -> None:
        """Make a blocked read return at once (called from stop(), in another thread)."""
        self._requests.interrupt()

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._relist()
                self._watch()
            except Stopped:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._after_failure(exc)
        self.healthy = False

    def _after_failure(self, exc: Exception) -> None:
        if gone(exc) and self._rv is not None:
            log.info("%s: relisting after 410 Gone (watch from resourceVersion %s: %s)",
                     self.origin, self._rv, describe(exc))
            self._rv = None
            if self._retry.relist_at_once(exc):
                return
        if self._retry.reauthed(exc):
            return
        self.healthy = False
        self._retry.wait(exc, "watch" if self._rv is not None else "list", synced=self.synced)

    def _staleness(self) -> str:
        if not self.synced or self.last_event is None:
            return "no data yet (answers for this resource are SERVFAIL)"
        return f"data last confirmed {time.time() - self.last_event:.0f} s ago (still served)"

    def _succeeded(self, *, event: bool = True) -> None:
        """The API works again: backoff starts over."""
        self.failures.succeeded(synced=self.synced)
        self._retry.succeeded()
        self.healthy = True
        if event:
            self.last_event = time.time()

    def _end_outage(self, *, emit: bool) -> None:
        if self.failures.end_outage() and emit:
            self._emit([Synced(self.origin, True)])

    def _emit(self, ops: list[Op]) -> None:
        try:
            self._emit_ops(ops)
        except Exception:
            # The store missed ops it can only get back from a full list, sent whole.
            self._rv = None
            self._held.lost()
            raise

    # -- list ----------------------------------------------------------------------
    def _relist(self) -> None:
        if self._options.watch_list:
            try:
                self._stream_list()
                return
            except (ApiException, _NoStreamedList) as exc:
                # Servers without watch-list (or with it switched off) refuse it with 422 or
                # 400, older ones ignore it: fall back to paginated lists, for every reflector
                # of this source.
                if isinstance(exc, ApiException) and exc.status not in (400, 422):
                    raise
                if self._options.watch_list:
                    self._options.watch_list = False
                    why = describe(exc) if isinstance(exc, ApiException) else str(exc)
                    log.info("the API server refuses streamed lists (%s): using paginated lists", why)
        self._list()

    def _stream_list(self) -> None:
        """The list as a stream of ADDED events up to the initial-events-end bookmark; the same
        stream then goes on as the watch. Objects are converted as they arrive."""
        timeout = max(1, int(self._options.watch_timeout * (1 + random.random())))
        with self._requests.open(
            watch=True, send_initial_events=True, resource_version_match="NotOlderThan", resource_version="",
            allow_watch_bookmarks=True, timeout_seconds=timeout,
        ) as response:
            self._watches += 1
            self._listing = self._held.listing()
            try:
                for lines in event_lines(response, self._stop):
                    self._apply_lines(lines)
            finally:
                unfinished, self._listing = self._listing, None
        if unfinished is not None:
            raise ValueError("the streamed list ended before its initial-events-end bookmark")
        self._succeeded(event=False)

    def _list(self) -> None:
        listing = self._held.listing()
        token: str | None = None
        rv: str | None = None
        while True:
            try:
                with self._requests.open(limit=self._options.page_size, _continue=token) as response:
                    body = response.read()
            except ApiException as exc:
                if exc.status != 410 or not token:
                    raise
                # The snapshot behind the continue token was compacted: start over for a
                # consistent list (the token from the 410 would give an inconsistent one).
                log.info("%s: list continue token expired; listing again from the start", self.origin)
                self.failures.count(exc, failure=False)
                listing = self._held.listing()
                token = None
                continue
            if self._stop.is_set():
                raise Stopped
            page = self._each_item(body, functools.partial(self._held.add, listing=listing))
            del body
            meta = page.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            token = meta.get("continue") or None
            if token is None:
                rv = meta.get("resourceVersion")
                break
        if not rv:
            raise ValueError("list response without metadata.resourceVersion")
        self._listed(listing, rv)

    def _listed(self, listing: Listing, rv: str) -> None:
        """A complete list: send the store what changed since what it holds."""
        ops, changes = self._held.commit(listing)
        ops.append(Synced(self.origin, True))
        self._rv = rv
        self.lists += 1
        self.synced = True
        self._succeeded()
        self._end_outage(emit=False)  # the Synced(True) says it
        self._emit(ops)
        self._held.sent = True
        count = len(self._held.objects)
        if count >= _BIG_LIST and changes < _BIG_LIST:
            # The parsed pages are garbage now, and no big batch downstream trims the heap (no
            # changes, no big batch): give it back here, or glibc keeps it.
            release_heap()
        log.info("%s: synced %d objects in %.2f s (resourceVersion %s, %d changes sent)",
                 self.origin, count, time.monotonic() - listing.started, rv, changes)

    # -- watch ---------------------------------------------------------------------
    def _watch(self) -> None:
        # Jitter so that watches opened together do not all expire (and re-open) together.
        timeout = max(1, int(self._options.watch_timeout * (1 + random.random())))
        rv = self._rv
        with self._requests.open(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout,
        ) as response:
            self._watches += 1
            self.healthy = True
            if self.failures.outage_since is not None:
                self._end_outage(emit=True)
            elif self.failures.streak:
                log.info("%s: watch restarted at resourceVersion %s after: %s", self.origin, rv,
                         self.failures.last_error)
            else:
                log.debug("%s: watching from resourceVersion %s (timeout %d s)", self.origin, rv, timeout)
            for lines in event_lines(response, self._stop):
                self._apply_lines(lines)
        # A clean end (the server's timeoutSeconds): carry on from where it stopped, no relist.
        self._succeeded(event=False)
        log.debug("%s: watch ended at resourceVersion %s; re-watching", self.origin, self._rv)

    def _apply_lines(self, lines: list[bytes]) -> None:
        ops: list[Op] = []
        try:
            for line in lines:
                if line and not line.isspace():  # not strip(): a copy of every line
                    self._apply_event(self._decode(line), ops)
        finally:
            # Events before a bad line still count; emitted as one batch per read.
            if ops:
                self._emit(ops)
        if self._listing is None:
            self._retry.watched()
            self._succeeded()

    def _apply_event(self, event: Event, ops: list[Op]) -> None:
        if self._listing is not None:
            self._apply_initial(event, ops)
            return
        kind, op = event.type, None
        if kind in ("ADDED", "MODIFIED"):
            op = self._held.upsert(event.object)
        elif kind == "DELETED":
            op = self._held.withdraw(raw_key(self.kind, event.object))
        elif kind != "BOOKMARK":
            log.debug("%s: ignoring watch event type %r", self.origin, kind)
        if op is not None:
            ops.append(op)
        if event.rv:
            self._rv = event.rv

    def _apply_initial(self, event: Event, ops: list[Op]) -> None:
        """An event of a streamed list, before its end."""
        listing = self._listing
        assert listing is not None
        kind = event.type
        if kind in ("ADDED", "MODIFIED"):
            self._held.add(event.object, listing)
        elif kind == "DELETED":
            key = raw_key(self.kind, event.object)
            if key is not None:
                listing.drop(key)
        elif kind == "BOOKMARK" and not event.initial_end:
            raise _NoStreamedList("it ignores sendInitialEvents: a plain bookmark came before the initial-events-end")
        elif kind == "BOOKMARK":
            if not event.rv:
                raise ValueError("initial-events-end bookmark without a resourceVersion")
            if ops:  # cannot happen (no ops before the end), but never reorder
                self._emit(ops[:])
                ops.clear()
            self._listing = None
            self._listed(listing, event.rv)
