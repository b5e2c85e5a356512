"""The Kubernetes API as a source: list+watch reflectors that feed the store lean records.

One daemon thread per watched resource (per resource and namespace when namespaces are
given) runs a reflector: a paginated list (``Replace`` + ``Synced``), then a watch from the
list's resourceVersion, re-opened from the last seen resourceVersion when it ends or fails.
Only a 410 Gone makes it list again. Responses are read raw (``_preload_content=False``) and
parsed with ``json`` straight into ``dnsd.model`` records: the client's pydantic models are
never built (they cost far more than the conversion itself), and nothing but model records
outlives a page or an event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from ..model import ENDPOINT_SLICE, ENDPOINTS, NAMESPACE, SERVICE, Key, Namespace, Object, from_object
from ..store import Delete, Expect, Op, Replace, Synced, Upsert

log = logging.getLogger("dnsd.kubernetes")

NAMESPACES_ORIGIN = "k8s:namespaces"
_READ_SIZE = 1 << 16  # read1() returns what has arrived, up to this much
_CONNECT_TIMEOUT = 10.0
_OUTAGE_AFTER = 2  # consecutive failures (the failure and its first retry) that make an outage


@dataclasses.dataclass(frozen=True, slots=True)
class ReflectorStatus:
    origin: str
    synced: bool  # the first full list is done
    healthy: bool  # the watch currently works
    last_event: float | None  # time.time() of the last list or watch event (bookmarks too)
    relists: int  # full lists after the first one (after a 410, or after a lost list)
    restarts: int  # watches opened again (after a normal end or a failure)
    errors: int  # failed requests and broken streams


@dataclasses.dataclass(frozen=True, slots=True)
class _Resource:
    plural: str  # as in origins: "k8s:<plural>[/<namespace>]"
    kind: str  # model kind
    prefix: str  # API group path
    namespaced: bool

    def path(self, namespace: str | None = None) -> str:
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}" if namespace else f"{self.prefix}/{self.plural}"


_SERVICES = _Resource("services", SERVICE, "/api/v1", True)
_SLICES = _Resource("endpointslices", ENDPOINT_SLICE, "/apis/discovery.k8s.io/v1", True)
_ENDPOINTS = _Resource("endpoints", ENDPOINTS, "/api/v1", True)
_NAMESPACES = _Resource("namespaces", NAMESPACE, "/api/v1", False)

# The generated API classes (CoreV1Api, ...) would import ~20 MB of pydantic models that dnsd
# never builds, and take ~0.7 s to import: list/watch calls are built here instead.
_QUERY_NAMES = {
    "_continue": "continue", "label_selector": "labelSelector", "limit": "limit", "watch": "watch",
    "resource_version": "resourceVersion", "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}


def _list_call(client: ApiClient, path: str, **fixed: Any) -> Callable[..., Any]:
    """A GET of ``path`` returning the raw urllib3 response; ApiException for a non-2xx status."""

    def call(_preload_content: bool = False, _request_timeout: Any = None, **params: Any) -> Any:
        query = [(_QUERY_NAMES[k], v) for k, v in {**fixed, **params}.items() if v is not None]
        request = client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    return call


class _Gone(Exception):
    """410: the resourceVersion we watch from was compacted away; only a relist helps."""


class _Stopped(Exception):
    pass


def api_client(kubeconfig: str | None = None) -> ApiClient:
    """An ApiClient from ``kubeconfig``, else in-cluster config, else $KUBECONFIG / ~/.kube/config.

    The global default Configuration is left alone.
    """
    cfg = Configuration()
    # Our reflectors retry with backoff; urllib3's own immediate retries would only multiply
    # a stalled server's read timeout and delay noticing an outage.
    cfg.retries = urllib3.util.Retry(total=0, redirect=0, raise_on_redirect=False)
    if kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg, persist_config=False)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config(client_configuration=cfg)
    else:
        # Read $KUBECONFIG now, not when the client module was imported.
        path = os.environ.get("KUBECONFIG") or kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        kube_config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
    return ApiClient(cfg)


def _raw_key(kind: str, raw: Any) -> Key | None:
    """The model key of a raw object, even one that does not convert (to withdraw it)."""
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None
    return (kind, "" if kind == NAMESPACE else (meta.get("namespace") or "default"), name)


def _describe(error: BaseException) -> str:
    """One short line for logs: no response headers, the API's own message when there is one."""
    if isinstance(error, ApiException):
        message = ""
        with contextlib.suppress(Exception):
            message = json.loads(error.body or "").get("message", "")
        return f"HTTP {error.status} {error.reason or ''}".rstrip() + (f": {message}" if message else "")
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        cause = error.args[1] if len(error.args) > 1 else None
        return f"connection broken ({type(cause).__name__})" if cause is not None else "connection broken"
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {str(error).rpartition(': ')[2]}"
    if isinstance(error, _Gone | json.JSONDecodeError):
        return f"{'bad JSON: ' if isinstance(error, json.JSONDecodeError) else ''}{error}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _retry_after(error: BaseException) -> float:
    if isinstance(error, ApiException) and error.status in (429, 503) and error.headers:
        with contextlib.suppress(TypeError, ValueError):
            return float(error.headers.get("Retry-After") or 0)
    return 0.0


class _Reflector:
    """List, then watch, one resource (in one namespace, or all of them) into one origin."""

    def __init__(
        self, origin: str, kind: str, call: Callable[..., Any], emit: Callable[[list[Op]], None],
        stop: threading.Event, *, page_size: int, watch_timeout: int, read_timeout: float,
        backoff: tuple[float, float], pod_names: bool = False,
    ) -> None:
        self.origin = origin
        self._pod_names = pod_names
        self.kind = kind
        self._call = call
        self._emit_ops = emit
        self._stop = stop
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        # (connect, read): the read timeout bounds every socket read, so a dead or stalled
        # connection surfaces even though the watch itself may stay open for many minutes.
        self._timeouts = (min(_CONNECT_TIMEOUT, read_timeout), read_timeout)
        self._backoff = backoff
        self._held: dict[Key, Object] = {}  # what the store holds for this origin
        self._bad: dict[Key, str] = {}  # objects skipped as invalid -> reason (log each once)
        self._rv: str | None = None  # None: the next step is a (re)list
        self._gone_streak = 0  # 410s with no watch event in between
        self._lock = threading.Lock()
        self._response: Any = None  # the open urllib3 response, for stop() to cut
        self._failures = 0  # consecutive; reset by a list, a watch event or a clean watch end
        self._last_error = ""
        self._outage_since: float | None = None
        self._watches = 0
        self.synced = False
        self.healthy = False
        self.last_event: float | None = None
        self.lists = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name=f"dnsd-{origin}", daemon=True)

    def status(self) -> ReflectorStatus:
        return ReflectorStatus(
            self.origin, self.synced, self.healthy, self.last_event,
            max(0, self.lists - 1), max(0, self._watches - 1), self.errors,
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
                    self._list()
                self._watch()
            except _Stopped:
                break
            except Exception as exc:
                if self._stop.is_set():
                    break
                gone = isinstance(exc, _Gone) or (isinstance(exc, ApiException) and exc.status == 410)
                if gone and self._rv is not None:
                    log.info("%s: relisting after 410 Gone (watch from resourceVersion %s: %s)",
                             self.origin, self._rv, _describe(exc))
                    self._gone_streak += 1
                    if self._gone_streak == 1:
                        self._rv = None
                        continue
                    # Again, with no event since the last relist: back off first, or a
                    # confused server would have us list in a tight loop.
                    delay = self._failed(exc)
                    self._rv = None
                else:
                    delay = self._failed(exc)
                self._stop.wait(delay)
        self.healthy = False

    def _failed(self, exc: Exception) -> float:
        """Count a failure, maybe begin an outage; the backoff delay before the next attempt."""
        self.errors += 1
        self._failures += 1
        self.healthy = False
        reason = _describe(exc)
        self._last_error = reason
        expected = isinstance(exc, ApiException | urllib3.exceptions.HTTPError | OSError | ValueError | _Gone)
        if not expected:  # a bug rather than the network: keep the traceback
            log.warning("%s: unexpected error", self.origin, exc_info=exc)
        ceiling = min(self._backoff[1], self._backoff[0] * 2 ** (self._failures - 1))
        # Full jitter: replicas that lost the API together do not come back in lockstep.
        delay = max(random.uniform(0, ceiling), min(_retry_after(exc), self._backoff[1]))
        step = "watch" if self._rv is not None else "list"
        if not self.synced:
            if self._failures == 1:  # the first sync is late: say why, once
                log.warning("%s: %s failed: %s (retrying)", self.origin, step, reason)
            else:
                log.debug("%s: %s failed: %s (retry in %.2f s)", self.origin, step, reason, delay)
        elif self._failures >= _OUTAGE_AFTER and self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("%s: outage begun: %s failed %d times, last: %s (keeping the data)",
                        self.origin, step, self._failures, reason)
            try:
                self._emit([Synced(self.origin, False)])
            except Exception:  # the caller's bug; the reflector must keep going
                log.exception("%s: emit failed", self.origin)
        else:
            log.debug("%s: %s failed: %s (retry in %.2f s)", self.origin, step, reason, delay)
        return delay

    def _succeeded(self, *, event: bool = True) -> None:
        """The API works again: backoff starts over."""
        self._failures = 0
        self.healthy = True
        if event:
            self.last_event = time.time()

    def _end_outage(self, *, emit: bool) -> None:
        if self._outage_since is not None:
            log.info("%s: outage ended after %.1f s", self.origin, time.monotonic() - self._outage_since)
            self._outage_since = None
            if emit:
                self._emit([Synced(self.origin, True)])

    def _emit(self, ops: list[Op]) -> None:
        try:
            self._emit_ops(ops)
        except Exception:
            # The store missed ops it can only get back from a full list.
            self._rv = None
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
    def _list(self) -> None:
        started = time.monotonic()
        objects: dict[Key, Object] = {}
        bad: set[Key] = set()  # invalid in this list (each reported once, not on every relist)
        token: str | None = None
        rv: str | None = None
        while True:
            try:
                with self._open(limit=self._page_size, _continue=token) as response:
                    page = json.loads(response.read())
            except ApiException as exc:
                if exc.status != 410 or not token:
                    raise
                # The snapshot behind the continue token was compacted: start over for a
                # consistent list (the token from the 410 would give an inconsistent one).
                log.info("%s: list continue token expired; listing again from the start", self.origin)
                objects.clear()
                bad.clear()
                token = None
                continue
            if self._stop.is_set():
                raise _Stopped
            if not isinstance(page, dict):
                raise ValueError("list response is not an object")
            meta = page.get("metadata") or {}
            for item in page.get("items") or ():
                self._list_item(item, objects, bad)
            token = meta.get("continue") or None
            if token is None:
                rv = meta.get("resourceVersion")
                break
        if not rv:
            raise ValueError("list response without metadata.resourceVersion")
        self._bad = {k: v for k, v in self._bad.items() if k in bad}
        self._held = objects
        self._rv = rv
        self.lists += 1
        self.synced = True
        self._succeeded()
        self._end_outage(emit=False)  # the Synced(True) below says it
        self._emit([Replace(self.origin, tuple(objects.values())), Synced(self.origin, True)])
        log.info("%s: synced %d objects in %.2f s (resourceVersion %s)",
                 self.origin, len(objects), time.monotonic() - started, rv)

    def _list_item(self, item: Any, objects: dict[Key, Object], bad: set[Key]) -> None:
        try:
            obj = from_object(item, self.kind, pod_names=self._pod_names)
        except ValueError as exc:
            key = self._skip(item, exc)
            if key is not None:
                bad.add(key)
                if key in self._held:
                    objects[key] = self._held[key]  # keep serving its last good version
            return
        if obj is not None:
            objects[obj.key] = obj

    def _skip(self, raw: Any, exc: ValueError) -> Key | None:
        key = _raw_key(self.kind, raw)
        reason = str(exc)
        if key is None:
            log.warning("%s: skipping an invalid %s: %s", self.origin, self.kind, reason)
        elif self._bad.get(key) != reason:
            self._bad[key] = reason
            kept = "keeping its previous version" if key in self._held else "not served"
            where = f"{key[1]}/{key[2]}" if key[1] else key[2]
            log.warning("%s: invalid %s %s: %s; %s", self.origin, self.kind, where, reason, kept)
        return key

    # -- watch ---------------------------------------------------------------------
    def _watch(self) -> None:
        # Jitter so that watches opened together do not all expire (and re-open) together.
        timeout = max(1, int(self._watch_timeout * (1 + random.random())))
        rv = self._rv
        with self._open(
            watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=timeout,
        ) as response:
            self._watches += 1
            self.healthy = True
            if self._outage_since is not None:
                self._end_outage(emit=True)
            elif self._failures:
                log.info("%s: watch restarted at resourceVersion %s after: %s", self.origin, rv, self._last_error)
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
        if kind in ("ADDED", "MODIFIED"):
            try:
                obj = from_object(raw, self.kind, pod_names=self._pod_names)
            except ValueError as exc:
                self._skip(raw, exc)  # the previous version stays
            else:
                if obj is None:  # no longer relevant (e.g. a slice lost its service label)
                    self._withdraw(_raw_key(self.kind, raw), ops)
                else:
                    if self._bad:
                        self._bad.pop(obj.key, None)
                    if self._held.get(obj.key) != obj:  # unchanged for DNS: nothing to send
                        self._held[obj.key] = obj
                        ops.append(Upsert(self.origin, obj))
        elif kind == "DELETED":
            self._withdraw(_raw_key(self.kind, raw), ops)
        elif kind != "BOOKMARK":
            log.debug("%s: ignoring watch event type %r", self.origin, kind)
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        if rv:
            self._rv = rv

    def _withdraw(self, key: Key | None, ops: list[Op]) -> None:
        if key is None:
            return
        self._bad.pop(key, None)
        if self._held.pop(key, None) is not None:
            ops.append(Delete(self.origin, key))


class KubernetesSource:
    """Services, EndpointSlices (or Endpoints) and Namespaces from the API, as store ops."""

    def __init__(
        self,
        emit: Callable[[list[Op]], None],
        *,
        kubeconfig: str | None = None,
        namespaces: tuple[str, ...] = (),
        label_selector: str | None = None,
        endpoints_api: bool = False,
        page_size: int = 500,
        watch_timeout: int = 300,
        read_timeout: float = 75.0,
        backoff: tuple[float, float] = (0.8, 30.0),
        pod_names: bool = False,
    ) -> None:
        self.emit = emit
        self.namespaces = tuple(dict.fromkeys(namespaces))
        for ns in self.namespaces:
            from_object({"metadata": {"name": ns}}, kind=NAMESPACE)  # ValueError for a bad name
        self._stop = threading.Event()
        self._client = api_client(kubeconfig)  # config problems surface here, not in a thread
        options = dict(page_size=page_size, watch_timeout=watch_timeout, read_timeout=read_timeout, backoff=backoff,
                       pod_names=pod_names)
        endpoint_resource = _ENDPOINTS if endpoints_api else _SLICES
        self._reflectors: list[_Reflector] = []
        for resource in (_SERVICES, endpoint_resource):
            kwargs = {"label_selector": label_selector} if resource is _SERVICES and label_selector else {}
            if self.namespaces:
                # One reflector per namespace with the namespaced calls: RBAC may be namespaced too.
                for ns in self.namespaces:
                    call = _list_call(self._client, resource.path(ns), **kwargs)
                    self._add(f"k8s:{resource.plural}/{ns}", resource, call, options)
            else:
                self._add(f"k8s:{resource.plural}", resource, _list_call(self._client, resource.path(), **kwargs), options)
        if not self.namespaces:
            self._add(NAMESPACES_ORIGIN, _NAMESPACES, _list_call(self._client, _NAMESPACES.path()), options)
        self._started: float | None = None

    def _add(self, origin: str, resource: _Resource, call: Callable[..., Any], options: dict[str, Any]) -> None:
        self._reflectors.append(_Reflector(origin, resource.kind, call, self.emit, self._stop, **options))

    def start(self) -> None:
        """Start the reflector threads; returns at once."""
        self._started = time.time()
        ops: list[Op] = [Expect(r.origin) for r in self._reflectors]
        if self.namespaces:
            # The namespaces we were told to serve exist; no need (or RBAC) to watch them.
            ops += [
                Expect(NAMESPACES_ORIGIN),
                Replace(NAMESPACES_ORIGIN, tuple(Namespace(ns) for ns in self.namespaces)),
                Synced(NAMESPACES_ORIGIN, True),
            ]
        self.emit(ops)
        for reflector in self._reflectors:
            reflector.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reflectors, cutting open responses so blocked reads return at once."""
        self._stop.set()
        for reflector in self._reflectors:
            reflector.interrupt()
        deadline = time.monotonic() + timeout
        for reflector in self._reflectors:
            if reflector.thread.is_alive():
                reflector.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [r.origin for r in self._reflectors if r.thread.is_alive()]
        if stuck:  # e.g. still connecting; they are daemon threads and end on their own
            log.debug("reflectors still running after stop: %s", ", ".join(stuck))
        else:
            self._client.close()

    def status(self) -> dict[str, ReflectorStatus]:
        statuses = {r.origin: r.status() for r in self._reflectors}
        if self.namespaces:
            statuses[NAMESPACES_ORIGIN] = ReflectorStatus(
                NAMESPACES_ORIGIN, self._started is not None, self._started is not None, self._started, 0, 0, 0
            )
        return statuses
