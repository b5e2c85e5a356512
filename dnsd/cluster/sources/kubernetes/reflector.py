"""A reflector: list, then watch, one resource (in one namespace, or all of them) into one origin.

The list is a streamed list (watch-list: ``sendInitialEvents=true``, ending at the bookmark
annotated ``k8s.io/initial-events-end``, then the same stream goes on as the watch) when the
server offers it, else paginated. The watch resumes from the last seen resourceVersion when
it ends or fails; only a 410 Gone makes it list again.

A relist is sent as its changes only (``kube_held``).

Responses are read raw and parsed with ``json`` straight into ``dnsd.cluster.model`` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from dnsd.cluster.sources.kubernetes.client import describe, each_item, retry_after, unreachable
from dnsd.cluster.sources.kubernetes.failures import OUTAGE_AFTER, FailureLog
from dnsd.cluster.sources.kubernetes.held import Held, Listing, raw_key
from dnsd.cluster.sources.kubernetes.probe import ApiProbe
from dnsd.cluster.store import Op, Synced
from dnsd.runtime import release_heap

log = logging.getLogger("dnsd.kubernetes")

_READ_SIZE = 1 << 16  # read1() returns what has arrived, up to this much
_CONNECT_TIMEOUT = 10.0
WARN_EVERY = 60.0  # seconds between WARNINGs while one resource keeps failing
_INITIAL_EVENTS_END = "k8s.io/initial-events-end"
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


class _Gone(Exception):
    """410: the resourceVersion we watch from was compacted away; only a relist helps."""


class _Stopped(Exception):
    pass


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
        self._call = call
        self._emit_ops = emit
        self._stop = stop
        self._options = options
        self._probe = probe
        self._reauth = reauth
        # (connect, read): the read timeout bounds every socket read, so a dead or stalled
        # connection surfaces even though the watch itself may stay open for many minutes.
        self._timeouts = (min(_CONNECT_TIMEOUT, options.read_timeout), options.read_timeout)
        self._held = Held(origin, kind, options.pod_names)
        self._rv: str | None = None  # None: the next step is a (re)list
        self._listing: Listing | None = None  # a streamed list before its initial-events-end
        self._gone_streak = 0  # 410s with no watch event in between
        self._lock = threading.Lock()
        self._response: Any = None  # the open urllib3 response, for stop() to cut
        self._step = 0  # backoff exponent; also reset when the probe sees the API come back
        self._probe_wakes = 0  # probe wake-ups since the last success
        self._reauthed = False  # a 401 reloaded the credentials since the last success
        self.failures = FailureLog(origin, options.warn_every, self._staleness)
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
        """Make a blocked read return now (called from stop(), in another thread)."""
        with self._lock:
            response = self._response
        if response is None:
            return
        # shutdown(SHUT_RD) wakes a recv() blocked in the reflector thread; close() alone does
        # not on Linux. The reflector closes the response itself on its way out.
        try:
            response.shutdown()
        except Exception:
            with contextlib.suppress(Exception):
                response.connection.sock.shutdown(socket.SHUT_RDWR)

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._relist()
                self._watch()
            except _Stopped:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._after_failure(exc)
        self.healthy = False

    def _after_failure(self, exc: Exception) -> None:
        gone = isinstance(exc, _Gone) or (isinstance(exc, ApiException) and exc.status == 410)
        if gone and self._rv is not None:
            log.info("%s: relisting after 410 Gone (watch from resourceVersion %s: %s)",
                     self.origin, self._rv, describe(exc))
            self._gone_streak += 1
            self._rv = None
            if self._gone_streak == 1:
                self.failures.count(exc, failure=False)
                return
            # Again, with no event since the last relist: back off first, or a confused
            # server would have us list in a tight loop.
        # Every 401 reads the credentials again (the operator may fix the secret at any time);
        # the first one of a streak retries at once, later ones after the backoff: a token the
        # server keeps refusing must not make us spin.
        if isinstance(exc, ApiException) and exc.status == 401 and self._reauth \
                and self._reauth(f"{self.origin} got HTTP 401") and not self._reauthed:
            self._reauthed = True
            self.failures.count(exc)  # counted, but no outage: retry at once with the new credentials
            return
        delay = self._failed(exc)
        if unreachable(exc) and self._probe is not None and self._probe_wakes < 2:
            # Wait for the API's return (the shared probe), not for a backoff that grows while it
            # is down. Twice at most: if the probe gets answers but we still cannot reach this
            # resource, the ordinary backoff below applies.
            self._await_api()
            return
        self._stop.wait(delay)

    def _await_api(self) -> None:
        assert self._probe is not None
        since = self._probe.generation
        began = time.monotonic()
        deadline = began + self._options.backoff[1]
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
                self._report("watch" if self._rv is not None else "list", outage=True)

    def _failed(self, exc: Exception) -> float:
        """Count a failure, maybe begin an outage, say so; the backoff delay before the next attempt."""
        self.failures.failed(exc)
        self._step += 1
        self.healthy = False
        expected = isinstance(exc, ApiException | urllib3.exceptions.HTTPError | OSError | ValueError | _Gone)
        if not expected:  # a bug rather than the network: keep the traceback
            log.warning("%s: unexpected error", self.origin, exc_info=exc)
        backoff = self._options.backoff
        ceiling = min(backoff[1], backoff[0] * 2 ** (self._step - 1))
        # Full jitter: replicas that lost the API together do not come back in lockstep.
        delay = max(random.uniform(0, ceiling), min(retry_after(exc), backoff[1]))
        step = "watch" if self._rv is not None else "list"
        if not self._report(step, outage=self.failures.streak >= OUTAGE_AFTER):
            log.debug("%s: %s failed: %s (retry in %.2f s)", self.origin, step, self.failures.last_error, delay)
        return delay

    def _report(self, step: str, *, outage: bool) -> bool:
        said = self.failures.report(step, synced=self.synced, outage=outage)
        if said == "outage":
            try:
                self._emit([Synced(self.origin, False)])
            except Exception:  # the caller's bug; the reflector must keep going
                log.exception("%s: emit failed", self.origin)
        return said is not None

    def _staleness(self) -> str:
        if not self.synced or self.last_event is None:
            return "no data yet (answers for this resource are SERVFAIL)"
        return f"data last confirmed {time.time() - self.last_event:.0f} s ago (still served)"

    def _succeeded(self, *, event: bool = True) -> None:
        """The API works again: backoff starts over."""
        self.failures.succeeded(synced=self.synced)
        self._step = 0
        self._probe_wakes = 0
        self._reauthed = False
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

    @contextlib.contextmanager
    def _open(self, **params: Any) -> Iterator[Any]:
        """A raw urllib3 response that stop() can interrupt; closed (not pooled) unless fully read."""
        response = self._call(_preload_content=False, _request_timeout=self._timeouts, **params)
        with self._lock:
            self._response = response
        try:
            if self._stop.is_set():  # stop() ran before we could be interrupted
                raise _Stopped
            yield response
        finally:
            with self._lock:
                self._response = None
            # After a complete read urllib3 has already returned the connection to the pool
            # and this is a no-op; otherwise the half-read connection must not be reused.
            response.close()

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
        with self._open(
            watch=True, send_initial_events=True, resource_version_match="NotOlderThan", resource_version="",
            allow_watch_bookmarks=True, timeout_seconds=timeout,
        ) as response:
            self._watches += 1
            self._listing = self._held.listing()
            try:
                self._read_events(response)
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
                with self._open(limit=self._options.page_size, _continue=token) as response:
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
                raise _Stopped
            page = each_item(body, functools.partial(self._held.add, listing=listing))
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
            # changes, no big batch): give it back here, or glibc keeps a few MB per relist.
            release_heap()
        log.info("%s: synced %d objects in %.2f s (resourceVersion %s, %d changes sent)",
                 self.origin, count, time.monotonic() - listing.started, rv, changes)

    # -- watch ---------------------------------------------------------------------
    def _watch(self) -> None:
        # Jitter so that watches opened together do not all expire (and re-open) together.
        timeout = max(1, int(self._options.watch_timeout * (1 + random.random())))
        rv = self._rv
        with self._open(
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
            self._read_events(response)
        # A clean end (the server's timeoutSeconds): carry on from where it stopped, no relist.
        self._succeeded(event=False)
        log.debug("%s: watch ended at resourceVersion %s; re-watching", self.origin, self._rv)

    def _read_events(self, response: Any) -> None:
        """Apply events as they arrive: each read1() returns whatever the server has sent."""
        partial: list[bytes] = []  # the start of a line split across reads
        while True:
            data = response.read1(_READ_SIZE)
            if not data:
                break
            if b"\n" not in data:
                partial.append(data)
                continue
            if partial:
                partial.append(data)
                data = b"".join(partial)
                partial = []
            lines = data.split(b"\n")
            tail = lines.pop()
            if tail:
                partial.append(tail)
            self._apply_lines(lines)
            if self._stop.is_set():
                raise _Stopped
        if self._stop.is_set():
            raise _Stopped  # our shutdown() ended the stream: not the server's clean end
        if any(p.strip() for p in partial):
            raise ValueError("watch stream ended inside an event")

    def _apply_lines(self, lines: list[bytes]) -> None:
        ops: list[Op] = []
        try:
            for line in lines:
                if line.strip():
                    self._apply_event(json.loads(line), ops)
        finally:
            # Events before a bad line still count; emitted as one batch per read.
            if ops:
                self._emit(ops)
        if self._listing is None:
            self._gone_streak = 0
            self._succeeded()

    def _apply_event(self, event: Any, ops: list[Op]) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError("watch event without an object")
        kind, raw = event.get("type"), event["object"]
        if kind == "ERROR":
            code, message = raw.get("code"), raw.get("message") or raw.get("reason") or ""
            if code == 410:
                raise _Gone(message)
            raise ValueError(f"watch ERROR event {code}: {message}")
        meta = raw.get("metadata") or {}
        if self._listing is not None:
            self._apply_initial(kind, raw, meta, ops)
            return
        op = None
        if kind in ("ADDED", "MODIFIED"):
            op = self._held.upsert(raw)
        elif kind == "DELETED":
            op = self._held.withdraw(raw_key(self.kind, raw))
        elif kind != "BOOKMARK":
            log.debug("%s: ignoring watch event type %r", self.origin, kind)
        if op is not None:
            ops.append(op)
        rv = meta.get("resourceVersion")
        if rv:
            self._rv = rv

    def _apply_initial(self, kind: Any, raw: Any, meta: Any, ops: list[Op]) -> None:
        """An event of a streamed list, before its end."""
        listing = self._listing
        assert listing is not None
        if kind in ("ADDED", "MODIFIED"):
            self._held.add(raw, listing)
        elif kind == "DELETED":
            key = raw_key(self.kind, raw)
            if key is not None:
                listing.drop(key)
        elif kind == "BOOKMARK" and (meta.get("annotations") or {}).get(_INITIAL_EVENTS_END) != "true":
            raise _NoStreamedList("it ignores sendInitialEvents: a plain bookmark came before the initial-events-end")
        elif kind == "BOOKMARK":
            rv = meta.get("resourceVersion")
            if not rv:
                raise ValueError("initial-events-end bookmark without a resourceVersion")
            if ops:  # cannot happen (no ops before the end), but never reorder
                self._emit(ops[:])
                ops.clear()
            self._listing = None
            self._listed(listing, rv)
