"""A small but faithful fake Kubernetes API server for dnsd tests and benchmarks.

It speaks real HTTP on loopback from a background thread (own asyncio loop,
aiohttp.web), so synchronous tests, asyncio tests and other processes can all
point the official ``kubernetes`` client at it through a kubeconfig file.

Served: core v1 ``services``, ``endpoints``, ``namespaces`` and
``discovery.k8s.io/v1`` ``endpointslices`` (list / watch / get), plus minimal
discovery documents (``/api``, ``/apis``, ``/version``, ...).

Semantics mirror kube-apiserver + etcd where dnsd can observe them:

* one global, monotonically increasing resourceVersion shared by all
  resources; every change records an event in a bounded backlog;
* list: label/field selectors, ``limit``/``continue`` pagination served from
  a consistent snapshot, HTTP 410 ``Expired`` for stale continue tokens;
* watch: resume from a resourceVersion, synthetic ADDED events for
  ``resourceVersion`` ""/"0", bookmarks, ``timeoutSeconds``, selector
  transitions (ADDED/DELETED), and a 410 ``ERROR`` event for compacted RVs;
* streamed lists (watch-list: ``sendInitialEvents=true`` with
  ``resourceVersionMatch=NotOlderThan``, ending at a bookmark annotated
  ``k8s.io/initial-events-end``), or refusing them with 422 like a server
  without the WatchList feature (``watch_list=False``);
* HTTPS with its own CA (``tls=True``) and bearer tokens that rotate
  (``rotate_token()``: the old one gets 401 from then on);
* faults: dropped watches, stalls, injected HTTP errors (with Retry-After),
  restarts (compaction) and the server going down/up on the same port
  (refusing connections, or accepting and resetting them while counting).

Usage::

    with FakeKubeAPI() as api:
        api.create(service("default", "web", cluster_ip="10.0.0.10"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import collections
import contextlib
import dataclasses
import json
import math
import re
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects
PortSpec = tuple[str | None, int, str] | tuple[str | None, int] | Mapping[str, Any]

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"

_STATUS_REASONS: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


# --------------------------------------------------------------------------
# Resource types
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceType:
    resource: str  # plural, as in the URL
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    singular: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def prefix(self) -> bytes:
        # Stored bodies omit kind/apiVersion (list items look like that on the
        # real server); this prefix turns a body into a full object.
        return b'{"kind":"%s","apiVersion":"%s",' % (
            self.kind.encode(),
            self.api_version.encode(),
        )


SERVICES = ResourceType("services", "Service", "", "v1", True, "service")
ENDPOINTS = ResourceType("endpoints", "Endpoints", "", "v1", True, "endpoints")
NAMESPACES = ResourceType("namespaces", "Namespace", "", "v1", False, "namespace")
ENDPOINTSLICES = ResourceType("endpointslices", "EndpointSlice", "discovery.k8s.io", "v1", True, "endpointslice")
RESOURCE_TYPES: Final = (SERVICES, ENDPOINTS, NAMESPACES, ENDPOINTSLICES)

_BY_NAME: Final = {alias: rt for rt in RESOURCE_TYPES for alias in (rt.resource, rt.kind.lower(), rt.singular)}
_BY_GROUP: Final = {(rt.group, rt.resource): rt for rt in RESOURCE_TYPES}


def resource_type(kind_or_resource: str) -> ResourceType:
    """Map "Service" / "services" / "service" (any case) to its ResourceType."""
    try:
        return _BY_NAME[kind_or_resource.lower()]
    except KeyError:
        raise ValueError(f"unsupported kind/resource {kind_or_resource!r}") from None


def _resource_key(resource: str | None) -> str | None:
    """Normalise a kind/resource filter; non-resource paths ("/version") pass through."""
    if resource is None:
        return None
    rt = _BY_NAME.get(resource.lower())
    return rt.resource if rt else resource


# --------------------------------------------------------------------------
# Object builders (shaped like `kubectl get -o json` output)
# --------------------------------------------------------------------------


def _ports(ports: Iterable[PortSpec], *, target: bool) -> list[JSON]:
    out: list[JSON] = []
    for p in ports:
        if isinstance(p, Mapping):
            out.append(dict(p))
            continue
        name, number, protocol = (*p, "TCP") if len(p) == 2 else p
        port: JSON = {}
        if name:
            port["name"] = name
        port["port"] = number
        port["protocol"] = protocol
        if target:
            port["targetPort"] = number
        out.append(port)
    return out


def _meta(namespace: str | None, name: str, labels: Mapping[str, str] | None) -> JSON:
    meta: JSON = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def service(
    ns: str,
    name: str,
    cluster_ip: str | None = "10.0.0.1",
    ports: Sequence[PortSpec] = (("http", 80, "TCP"),),
    type: str = "ClusterIP",  # mirrors spec.type, hence the builtin name
    external_name: str | None = None,
    cluster_ips: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    selector: Mapping[str, str] | None = None,
) -> JSON:
    """A v1 Service. ``cluster_ip=None`` makes it headless (clusterIP "None")."""
    spec: JSON = {}
    if ports:
        spec["ports"] = _ports(ports, target=True)
    if selector:
        spec["selector"] = dict(selector)
    if type == "ExternalName":
        # The API server strips cluster IPs from ExternalName services.
        spec["type"] = "ExternalName"
        spec["externalName"] = external_name or f"{name}.example.com"
        spec["sessionAffinity"] = "None"
    else:
        ips = list(cluster_ips) if cluster_ips else [cluster_ip or "None"]
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
        families = ["IPv4"] if ips[0] == "None" else [_family(ip) for ip in ips]
        spec["ipFamilies"] = families
        spec["ipFamilyPolicy"] = "RequireDualStack" if len(ips) > 1 else "SingleStack"
        spec["internalTrafficPolicy"] = "Cluster"
        spec["sessionAffinity"] = "None"
        spec["type"] = type
    status: JSON = {"loadBalancer": {}}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ns, name, labels),
        "spec": spec,
        "status": status,
    }


def endpoint_slice(
    ns: str,
    name: str,
    service: str,
    endpoints: Sequence[Mapping[str, Any] | str] = (),
    ports: Sequence[PortSpec] = (("http", 8080, "TCP"),),
    address_type: str = "IPv4",
    labels: Mapping[str, str] | None = None,
) -> JSON:
    """A discovery.k8s.io/v1 EndpointSlice owned by ``service``.

    ``endpoints`` items are Endpoint dicts (``{"addresses": [...],
    "conditions": {"ready": True}, "hostname": ...}``) or a bare address
    string as a shorthand for a single ready endpoint.
    """
    eps: list[JSON] = []
    for ep in endpoints:
        if isinstance(ep, str):
            eps.append({"addresses": [ep], "conditions": {"ready": True, "serving": True, "terminating": False}})
        else:
            eps.append(json.loads(json.dumps(ep)))
    all_labels = {
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        "kubernetes.io/service-name": service,
        **(labels or {}),
    }
    obj: JSON = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(ns, name, all_labels),
        "addressType": address_type,
        # Go marshals a nil slice as null: an empty slice really shows up so.
        "endpoints": eps or None,
        "ports": _ports(ports, target=False) if ports else None,
    }
    return obj


def endpoints(
    ns: str,
    name: str,
    addresses: Sequence[str | Mapping[str, Any]] = (),
    not_ready: Sequence[str | Mapping[str, Any]] = (),
    ports: Sequence[PortSpec] = (("http", 8080, "TCP"),),
    labels: Mapping[str, str] | None = None,
) -> JSON:
    """A v1 Endpoints object with a single subset (none if no addresses)."""

    def addr(a: str | Mapping[str, Any]) -> JSON:
        return {"ip": a} if isinstance(a, str) else dict(a)

    obj: JSON = {"apiVersion": "v1", "kind": "Endpoints", "metadata": _meta(ns, name, labels)}
    if addresses or not_ready:
        subset: JSON = {}
        if addresses:
            subset["addresses"] = [addr(a) for a in addresses]
        if not_ready:
            subset["notReadyAddresses"] = [addr(a) for a in not_ready]
        if ports:
            subset["ports"] = _ports(ports, target=False)
        obj["subsets"] = [subset]
    return obj


def namespace(name: str, labels: Mapping[str, str] | None = None) -> JSON:
    """A v1 Namespace (cluster-scoped)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(None, name, {"kubernetes.io/metadata.name": name, **(labels or {})}),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


# --------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_RE_NOT_EXISTS = re.compile(rf"!\s*({_KEY})")
_RE_EXISTS = re.compile(rf"({_KEY})")
_RE_EQ = re.compile(rf"({_KEY})\s*(==|=|!=)\s*({_VALUE})")
_RE_SET = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)")

Predicate = Callable[[Mapping[str, str]], bool]


def _split_terms(text: str) -> list[str]:
    # Commas inside "in (a,b)" do not separate requirements.
    terms, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> list[Predicate]:
    """Parse a labelSelector into AND-ed predicates; ValueError if malformed."""
    preds: list[Predicate] = []
    for term in _split_terms(text or ""):
        if m := _RE_NOT_EXISTS.fullmatch(term):
            k = m[1]
            preds.append(lambda lb, k=k: k not in lb)
        elif m := _RE_EQ.fullmatch(term):
            k, op, v = m[1], m[2], m[3]
            if op == "!=":
                # Like Kubernetes: "k!=v" also matches objects without label k.
                preds.append(lambda lb, k=k, v=v: lb.get(k) != v)
            else:
                preds.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif m := _RE_SET.fullmatch(term):
            k, op = m[1], m[2]
            vals = frozenset(x.strip() for x in m[3].split(",") if x.strip())
            if op == "in":
                preds.append(lambda lb, k=k, vals=vals: k in lb and lb[k] in vals)
            else:
                preds.append(lambda lb, k=k, vals=vals: lb.get(k) not in vals)
        elif m := _RE_EXISTS.fullmatch(term):
            k = m[1]
            preds.append(lambda lb, k=k: k in lb)
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return preds


def parse_field_selector(text: str | None) -> list[tuple[str, bool, str]]:
    """(field, equal?, value) for metadata.name / metadata.namespace; others ignored."""
    out: list[tuple[str, bool, str]] = []
    for term in _split_terms(text or ""):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        if m[1] in ("metadata.name", "metadata.namespace"):
            out.append((m[1], m[2] != "!=", m[3]))
    return out


# --------------------------------------------------------------------------
# Storage primitives
# --------------------------------------------------------------------------


@dataclasses.dataclass(slots=True, eq=False)
class _Entry:
    """One immutable object version: never mutated once stored."""

    rt: ResourceType
    key: Key
    # Only metadata is kept as a dict (labels for selectors, server-owned
    # fields for updates); the object itself lives in `body`, encoded once.
    meta: JSON
    body: bytes  # JSON without kind/apiVersion (list item form)
    _full: bytes | None = None

    @property
    def labels(self) -> Mapping[str, str]:
        return self.meta.get("labels") or {}

    @property
    def full(self) -> bytes:
        if self._full is None:
            self._full = self.rt.prefix + self.body[1:]
        return self._full


def _encode(obj: JSON) -> bytes:
    return json.dumps(
        {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
        separators=(",", ":"),
    ).encode()


def _with_rv(entry: _Entry, rv: int) -> _Entry:
    """The same object stamped with another resourceVersion (DELETED events)."""
    obj = json.loads(entry.full)
    obj["metadata"]["resourceVersion"] = str(rv)
    return _Entry(entry.rt, entry.key, obj["metadata"], _encode(obj))


@dataclasses.dataclass(slots=True, eq=False)
class _Event:
    rv: int
    type: str
    entry: _Entry  # new state; for DELETED the last state with the deletion RV
    prev: _Entry | None


@dataclasses.dataclass(slots=True)
class _Snapshot:
    keys: list[Key]
    entries: list[_Entry]


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


@dataclasses.dataclass
class _Fault:
    remaining: int
    status: int
    verb: str | None
    resource: str | None
    retry_after: int | None


@dataclasses.dataclass(eq=False)
class _Watcher:
    rt: ResourceType
    namespace: str | None
    labels: list[Predicate]
    fields: list[tuple[str, bool, str]]
    bookmarks: bool
    cursor: int  # RV up to which this watcher has seen everything
    queue: collections.deque[_Event]
    wake: asyncio.Event
    record: RequestRecord
    request: web.Request
    dropped: bool = False

    def matches(self, e: _Entry) -> bool:
        if self.namespace is not None and e.key[0] != self.namespace:
            return False
        return _matches(e, self.labels, self.fields)


def _matches(e: _Entry, labels: list[Predicate], fields: list[tuple[str, bool, str]]) -> bool:
    for field, eq, value in fields:
        actual = e.key[1] if field == "metadata.name" else e.key[0]
        if (actual == value) != eq:
            return False
    if labels:
        lb = e.labels
        return all(p(lb) for p in labels)
    return True


class _HTTPStatus(Exception):
    """Raised inside handlers; becomes a Status response."""

    def __init__(
        self,
        code: int,
        message: str,
        details: JSON | None = None,
        *,
        metadata: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.metadata = metadata
        self.headers = headers


def status_body(code: int, message: str, details: JSON | None = None, metadata: JSON | None = None) -> JSON:
    """A metav1.Status failure object as the API server sends it."""
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": metadata or {},
        "status": "Failure",
        "message": message,
        "reason": _STATUS_REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _json_response(body: JSON | bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=data, status=status, content_type="application/json", headers=headers)


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("true", "1")


_clock: tuple[int, str] = (0, "")


def _now() -> str:
    """RFC 3339 UTC timestamp at second precision (cached: bulk loads call it a lot)."""
    global _clock
    sec = int(time.time())
    if _clock[0] != sec:
        _clock = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _clock[1]


def _encode_continue(rv: int, key: Key) -> str:
    # Same shape as the real token: base64(JSON{v, rv, start}).
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, name = raw["start"].rstrip("\x00").split("/", 1)
        return int(raw["rv"]), (ns, name)
    except Exception as exc:
        raise _HTTPStatus(400, f"continue key is not valid: {exc}") from None


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------


_TLS_FILES: dict[str, Path] = {}


def tls_files() -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (made once per process, by openssl)."""
    if not _TLS_FILES:
        d = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
        ext = d / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                       "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=fake-kube-ca")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "3", "-extfile", "ext.cnf")
        run("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.crt", "-days", "3",
            "-subj", "/CN=some-other-ca")
        _TLS_FILES.update(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key", other_ca=d / "other-ca.crt")
    return _TLS_FILES


class FakeKubeAPI:
    """Fake kube-apiserver on 127.0.0.1 in a background thread.

    All public methods are thread-safe and must be called from outside the
    server's own loop thread.
    """

    service = staticmethod(service)
    endpoint_slice = staticmethod(endpoint_slice)
    endpoints = staticmethod(endpoints)
    namespace = staticmethod(namespace)

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 1000,
        bookmark_interval: float = 1.0,
        token: str = "fake-token",
        require_auth: bool = True,
        watch_timeout: float | None = None,
        max_snapshots: int = 64,
        log_limit: int = 100_000,
        tls: bool = False,
        watch_list: bool = True,
        ignore_watch_list: bool = False,
    ) -> None:
        """
        backlog: watch events kept for resuming; older RVs get 410.
        bookmark_interval: seconds between BOOKMARKs on watches that allow them.
        require_auth: answer 401 unless "Authorization: Bearer <token>" is sent.
        watch_timeout: server-side cap for watches without timeoutSeconds (the
            real server uses 30-60 min); None = never.
        max_snapshots: paginated-list snapshots kept for continue tokens.
        tls: serve HTTPS with a certificate from ``tls_files()`` (its CA in ``ca_file``).
        watch_list: serve streamed lists; False answers them 422 like a server without
            the WatchList feature.
        ignore_watch_list: like a server older than the parameters (before 1.27): they are
            ignored, so the watch sends the initial ADDED events but never the bookmark
            that ends them (its bookmarks are plain ones).
        """
        self.host = host
        self.port = port
        self.token = token
        self.require_auth = require_auth
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.watch_list = watch_list
        self.ignore_watch_list = ignore_watch_list
        self.tls = tls
        self.ca_file: Path | None = tls_files()["ca"] if tls else None
        self.reset_connections = 0  # connections accepted and reset while down(refuse=False)
        self._reset_server: asyncio.Server | None = None
        self._backlog_max = backlog
        self._max_snapshots = max_snapshots

        # Everything below is guarded by _lock (shared by test + loop threads).
        self._lock = threading.RLock()
        self._rv = 0
        self._compacted_rv = 0  # watches/continue tokens from an RV below this get 410
        self._store: dict[str, dict[Key, _Entry]] = {rt.resource: {} for rt in RESOURCE_TYPES}
        self._sorted: dict[str, _Snapshot | None] = {rt.resource: None for rt in RESOURCE_TYPES}
        self._snapshots: collections.OrderedDict[tuple[str, int], _Snapshot] = collections.OrderedDict()
        self._backlog: collections.deque[_Event] = collections.deque()
        self._watchers: set[_Watcher] = set()
        self._faults: list[_Fault] = []
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=log_limit)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._notify_pending = False

        # Loop-thread state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: dict[asyncio.Task[Any], RequestRecord] = {}  # in-flight requests
        self._stall_until: float | None = None  # monotonic deadline, math.inf = until unstalled
        self._unstalled: asyncio.Event | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeKubeAPI:
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-kube-api", daemon=True)
        self._thread.start()
        self._call(self._astart())
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._call(self._astop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._thread = None
        self._loop = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def write_kubeconfig(
        self, path: str | Path, *, namespace: str = "default", token_file: str | Path | None = None,
        ca_file: str | Path | None = None,
    ) -> Path:
        """Write a kubeconfig (JSON is valid YAML) pointing at this server.

        token_file: name this file (``tokenFile``) instead of embedding the token; it is
            written with the current token.
        ca_file: the CA to trust instead of the server's own (e.g. tls_files()["other_ca"]).
        """
        path = Path(path)
        user: JSON = {"token": self.token}
        if token_file is not None:
            Path(token_file).write_text(self.token)
            user = {"tokenFile": str(token_file)}
        cluster: JSON = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = str(ca_file or self.ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # ------------------------------------------------------------- object CRUD

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        with self._lock:
            return self._rv

    def create(self, obj: JSON) -> JSON:
        """Create; ValueError if it already exists. Returns the stored object."""
        rt, key, new = self._prepare(obj)
        with self._lock:
            if key in self._store[rt.resource]:
                raise ValueError(f'{rt.resource} "{key[1]}" already exists')
            return self._commit(rt, key, new)

    def update(self, obj: JSON) -> JSON:
        """Replace an existing object; KeyError if missing.

        The incoming resourceVersion is ignored (no 409 conflicts). Like a real
        PUT, replacing with identical content is a no-op: no RV bump, no event.
        """
        rt, key, new = self._prepare(obj)
        with self._lock:
            if key not in self._store[rt.resource]:
                raise KeyError(f'{rt.resource} "{key[1]}" not found')
            return self._commit(rt, key, new)

    def apply(self, obj: JSON) -> JSON:
        """Create or replace. An unchanged object is a no-op (no RV bump, no event)."""
        rt, key, new = self._prepare(obj)
        with self._lock:
            return self._commit(rt, key, new)

    def load(self, objs: Iterable[JSON]) -> int:
        """Bulk apply (O(n), one lock hold); returns the resulting global RV."""
        prepared = [self._prepare(o) for o in objs]  # validate before changing anything
        with self._lock:
            for rt, key, new in prepared:
                self._commit(rt, key, new, want_copy=False)
            return self._rv

    def delete(self, kind: str, namespace: str | None, name: str) -> JSON:
        """Delete; returns the last state (with the deletion RV). KeyError if missing.

        Deleting a Namespace does not cascade to its objects.
        """
        rt = resource_type(kind)
        key = ((namespace or "default") if rt.namespaced else "", name)
        with self._lock:
            prev = self._store[rt.resource].pop(key, None)
            if prev is None:
                raise KeyError(f'{rt.resource} "{name}" not found')
            self._rv += 1
            gone = _with_rv(prev, self._rv)
            self._sorted[rt.resource] = None
            self._record_event(_Event(self._rv, DELETED, gone, prev))
            return json.loads(gone.full)

    def get(self, kind: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of the stored object, or None."""
        rt = resource_type(kind)
        key = ((namespace or "default") if rt.namespaced else "", name)
        with self._lock:
            e = self._store[rt.resource].get(key)
        return None if e is None else json.loads(e.full)

    def objects(self, kind: str, namespace: str | None = None) -> list[JSON]:
        """Copies of all stored objects of a kind, sorted by namespace/name."""
        rt = resource_type(kind)
        with self._lock:
            snap = self._sorted_snapshot(rt)
        return [json.loads(e.full) for e in snap.entries if namespace is None or e.key[0] == namespace]

    @staticmethod
    def _prepare(obj: JSON) -> tuple[ResourceType, Key, JSON]:
        rt = resource_type(obj["kind"])
        # No deep copy (bulk loads must be fast): the object is encoded right
        # away in _commit; only metadata, which we keep, is copied.
        new = {**obj, "apiVersion": rt.api_version}
        meta = new["metadata"] = dict(obj.get("metadata") or {})
        for field in ("labels", "annotations"):
            if field in meta:
                meta[field] = dict(meta[field])
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        return rt, (meta.get("namespace", ""), meta["name"]), new

    def _commit(self, rt: ResourceType, key: Key, new: JSON, *, want_copy: bool = True) -> JSON:
        # Caller holds the lock.
        store = self._store[rt.resource]
        prev = store.get(key)
        meta = new["metadata"]
        if prev is not None:
            # Server-owned fields survive a replace, like a real PUT.
            meta["uid"] = prev.meta["uid"]
            meta["creationTimestamp"] = prev.meta["creationTimestamp"]
            meta["resourceVersion"] = prev.meta["resourceVersion"]
            if _encode(new) == prev.body:
                return json.loads(prev.full) if want_copy else new  # no-op update: no RV bump
        else:
            meta["uid"] = meta.get("uid") or str(uuid.uuid4())
            meta["creationTimestamp"] = meta.get("creationTimestamp") or _now()
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        entry = _Entry(rt, key, meta, _encode(new))
        store[key] = entry
        self._sorted[rt.resource] = None
        self._record_event(_Event(self._rv, ADDED if prev is None else MODIFIED, entry, prev))
        return json.loads(entry.full) if want_copy else new

    def _record_event(self, ev: _Event) -> None:
        # Caller holds the lock. Like etcd + the watch cache: a bounded history
        # for resuming watches, and fan-out to every open watcher right away
        # (so a slow-to-flush watcher never loses events).
        self._backlog.append(ev)
        while len(self._backlog) > self._backlog_max:
            self._compacted_rv = self._backlog.popleft().rv
        for w in self._watchers:
            if w.rt is ev.entry.rt:
                w.queue.append(ev)
        self._expire_snapshots()
        if self._watchers and not self._notify_pending and self._loop is not None:
            self._notify_pending = True
            try:
                self._loop.call_soon_threadsafe(self._notify_watchers)
            except RuntimeError:  # loop already closed by stop()
                self._notify_pending = False

    def _notify_watchers(self) -> None:
        with self._lock:
            self._notify_pending = False
            watchers = list(self._watchers)
        for w in watchers:
            w.wake.set()

    def _expire_snapshots(self) -> None:
        while self._snapshots:
            (_, rv), _ = next(iter(self._snapshots.items()))
            if rv >= self._compacted_rv:
                break
            self._snapshots.popitem(last=False)

    def _sorted_snapshot(self, rt: ResourceType) -> _Snapshot:
        # Caller holds the lock. Cached until the resource changes, so repeated
        # lists / snapshots of an unchanged 20k-object resource are O(1).
        snap = self._sorted[rt.resource]
        if snap is None:
            items = sorted(self._store[rt.resource].items(), key=lambda kv: kv[0])
            snap = _Snapshot([k for k, _ in items], [e for _, e in items])
            self._sorted[rt.resource] = snap
        return snap

    # ------------------------------------------------------------------ faults

    def drop_watches(self, resource: str | None = None) -> int:
        """Abort open watch streams mid-stream (no final chunk); returns how many."""
        rt = resource_type(resource) if resource else None
        return self._call(self._adrop_watches(rt))

    def stall(self, seconds: float | bool = True) -> None:
        """Freeze: open watches send nothing (no bookmarks either) and new
        requests hang. ``True`` = until ``stall(False)``; a number = that long."""
        if seconds is False or seconds == 0:
            until = None
        elif seconds is True:
            until = math.inf
        else:
            until = time.monotonic() + float(seconds)
        self._call(self._aset_stall(until))

    def unstall(self) -> None:
        self.stall(False)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next n requests (optionally only of that verb/resource) get
        ``status`` with a Status body. With ``retry_after`` a Retry-After
        header is added (urllib3 then retries 429/503 on its own)."""
        res = _resource_key(resource)
        with self._lock:
            self._faults.append(_Fault(n, status, verb, res, retry_after))

    def restart(self) -> None:
        """Simulate an apiserver restart + etcd compaction: drop every
        connection; every previously issued RV / continue token gets 410."""
        with self._lock:
            self._rv += 1
            self._compacted_rv = self._rv
            self._backlog.clear()
            self._snapshots.clear()
        self._call(self._adrop_connections())

    def rotate_token(self, token: str | None = None, token_file: str | Path | None = None) -> str:
        """A new bearer token (written to ``token_file`` too); the old one gets 401 from now on."""
        with self._lock:
            self.token = token or f"token-{uuid.uuid4().hex[:12]}"
        if token_file is not None:
            tmp = Path(f"{token_file}.tmp")
            tmp.write_text(self.token)
            tmp.replace(token_file)  # atomically, as the kubelet does
        return self.token

    def down(self, *, refuse: bool = True) -> None:
        """Stop serving and drop every connection. ``refuse``: connections are refused;
        else they are accepted and reset at once (counted in ``reset_connections``)."""
        self._call(self._adown())
        if not refuse:
            self._call(self._alisten_reset())

    def up(self) -> None:
        """Listen again on the same port, with the same objects."""
        self._call(self._alisten())

    # ----------------------------------------------------------- introspection

    def requests(self, verb: str | None = None, resource: str | None = None) -> list[RequestRecord]:
        """Copies of the logged requests, optionally filtered."""
        res = _resource_key(resource)
        with self._lock:
            return [
                dataclasses.replace(r)
                for r in self._log
                if (verb is None or r.verb == verb) and (res is None or r.resource == res)
            ]

    def request_count(self, verb: str | None = None, resource: str | None = None) -> int:
        res = _resource_key(resource)
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

    # -------------------------------------------------------- loop-side plumbing

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("server not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FakeKubeAPI controls must not be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _astart(self) -> None:
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: when a client disconnects (e.g. its
        # _request_timeout fired) its handler is cancelled, so hung requests
        # and watch bookkeeping end promptly.
        self._runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._alisten()

    async def _alisten_reset(self) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reset_connections += 1
            writer.transport.abort()

        self._reset_server = await asyncio.start_server(accepted, self.host, self.port, reuse_address=True)

    async def _alisten(self) -> None:
        assert self._runner is not None
        if self._reset_server is not None:
            self._reset_server.close()
            await self._reset_server.wait_closed()
            self._reset_server = None
        if self._site is not None:
            return
        context = None
        if self.tls:
            files = tls_files()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files["cert"], files["key"])
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=context)
        await self._site.start()
        if self.port == 0:
            self.port = self._runner.addresses[-1][1]

    async def _adown(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self._adrop_connections()

    async def _astop(self) -> None:
        await self._aset_stall(None)
        await self._adown()
        if self._reset_server is not None:
            self._reset_server.close()
            self._reset_server = None
        assert self._runner is not None
        await self._runner.cleanup()

    async def _adrop_watches(self, rt: ResourceType | None) -> int:
        with self._lock:
            victims = [w for w in self._watchers if rt is None or w.rt is rt]
        for w in victims:
            self._unregister(w)  # counts are final when drop_watches() returns
            w.dropped = True
            w.record.end = "dropped"
            if w.request.transport is not None:
                w.request.transport.abort()
            w.wake.set()
        await asyncio.sleep(0)
        return len(victims)

    async def _adrop_connections(self) -> None:
        # Watches first (so they are recorded as "dropped"), then everything
        # else incl. idle keep-alive connections and hung requests.
        await self._adrop_watches(None)
        assert self._runner is not None
        if self._runner.server is not None:
            for handler in self._runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        tasks = list(self._tasks)
        for task, record in list(self._tasks.items()):
            record.end = record.end or "dropped"
            task.cancel()
        if tasks:  # hung/in-flight requests: done (and logged) when we return
            await asyncio.wait(tasks, timeout=1.0)
        for _ in range(3):  # let connection_lost callbacks run
            await asyncio.sleep(0)

    async def _aset_stall(self, until: float | None) -> None:
        self._set_stall(until)

    def _set_stall(self, until: float | None) -> None:
        assert self._unstalled is not None and self._loop is not None
        self._stall_until = until
        if until is None:
            self._unstalled.set()
            with self._lock:
                watchers = list(self._watchers)
            for w in watchers:
                w.wake.set()
            return
        self._unstalled.clear()
        if until != math.inf:
            self._loop.call_later(max(0.0, until - time.monotonic()), self._expire_stall, until)

    def _expire_stall(self, until: float) -> None:
        if self._stall_until == until:  # not superseded by a later stall()
            self._set_stall(None)

    def _stalled(self) -> bool:
        return self._stall_until is not None and time.monotonic() < self._stall_until

    async def _wait_unstalled(self) -> None:
        assert self._unstalled is not None
        while self._stalled():
            await self._unstalled.wait()

    # ---------------------------------------------------------------- HTTP

    def _route(self, path: str, query: Mapping[str, str]) -> tuple[str, str, ResourceType | None, str | None, str | None]:
        """(verb, resource-or-path, rt, namespace, name); raises 404 for unknown paths."""
        parts = [p for p in path.split("/") if p]
        path = "/" + "/".join(parts)  # the client asks for "/api/", "/version/"...
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:3] == ["apis", "discovery.k8s.io", "v1"]:
            group, rest = "discovery.k8s.io", parts[3:]
        else:
            return "discovery", path, None, None, None
        watch = _truthy(query.get("watch"))
        if rest[:1] == ["watch"]:  # deprecated /watch/ path prefix
            watch, rest = True, rest[1:]
        if not rest:
            return "discovery", path, None, None, None
        ns: str | None = None
        name: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, res, name = rest[1], rest[2], (rest[3] if len(rest) == 4 else None)
            if len(rest) > 4:
                raise _HTTPStatus(404, "the server could not find the requested resource")
        elif len(rest) <= 2:
            res, name = rest[0], (rest[1] if len(rest) == 2 else None)
        else:
            raise _HTTPStatus(404, "the server could not find the requested resource")
        rt = _BY_GROUP.get((group, res))
        if rt is None or (ns is not None and not rt.namespaced) or (name is not None and rt.namespaced and ns is None):
            raise _HTTPStatus(404, "the server could not find the requested resource")
        if name is not None and not watch:
            return "get", rt.resource, rt, ns, name
        return ("watch" if watch else "list"), rt.resource, rt, ns, name

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        query = dict(request.query)
        try:
            verb, resource, rt, ns, name = self._route(request.path, query)
        except _HTTPStatus:
            verb, resource, rt, ns, name = "other", request.path, None, None, None
        record = RequestRecord(
            method=request.method,
            path=request.path,
            verb=verb,
            resource=resource,
            namespace=ns,
            name=name,
            params=query,
            headers=dict(request.headers),
            started=time.monotonic(),
        )
        with self._lock:
            self._log.append(record)
            self._counts[(verb, resource)] += 1
        self._tasks[task] = record
        try:
            await self._wait_unstalled()
            resp = await self._serve(request, record, rt, ns, name)
            record.status = resp.status
            record.end = record.end or ("ok" if resp.status < 400 else "error")
            return resp
        except asyncio.CancelledError:
            record.end = record.end or "client"
            raise
        finally:
            record.ended = record.ended or time.monotonic()
            self._tasks.pop(task, None)

    async def _serve(
        self, request: web.Request, record: RequestRecord, rt: ResourceType | None, ns: str | None, name: str | None
    ) -> web.StreamResponse:
        try:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            authorized = scheme.lower() == "bearer" and token == self.token
            if self.require_auth and not authorized and request.path not in ("/healthz", "/livez", "/readyz"):
                raise _HTTPStatus(401, "Unauthorized")
            self._maybe_fail(record)
            if request.method != "GET":
                raise _HTTPStatus(405, f"the server does not allow this method on the requested resource ({request.method})")
            if record.verb == "other":
                raise _HTTPStatus(404, "the server could not find the requested resource")
            if rt is None:
                return self._discovery(request.path)
            if record.verb == "get":
                assert name is not None
                return self._get(rt, ns, name)
            if record.verb == "list":
                return self._list(rt, ns, record.params)
            return await self._watch(request, record, rt, ns, name)
        except _HTTPStatus as exc:
            body = status_body(exc.code, exc.message, exc.details, exc.metadata)
            return _json_response(body, exc.code, exc.headers)

    def _maybe_fail(self, record: RequestRecord) -> None:
        with self._lock:
            for f in self._faults:
                if f.remaining > 0 and f.verb in (None, record.verb) and f.resource in (None, record.resource):
                    f.remaining -= 1
                    self._faults = [x for x in self._faults if x.remaining > 0]
                    if f.retry_after is None:
                        raise _HTTPStatus(f.status, f"injected failure ({f.status})")
                    raise _HTTPStatus(
                        f.status,
                        f"injected failure ({f.status})",
                        {"retryAfterSeconds": f.retry_after},
                        headers={"Retry-After": str(f.retry_after)},
                    )

    def _get(self, rt: ResourceType, ns: str | None, name: str) -> web.Response:
        with self._lock:
            e = self._store[rt.resource].get((ns or "", name))
        if e is None:
            raise _HTTPStatus(404, f'{rt.resource} "{name}" not found', {"name": name, "kind": rt.resource})
        return _json_response(e.full)

    def _list(self, rt: ResourceType, ns: str | None, q: Mapping[str, str]) -> web.Response:
        try:
            labels = parse_label_selector(q.get("labelSelector"))
            fields = parse_field_selector(q.get("fieldSelector"))
            limit = int(q.get("limit") or 0)
        except ValueError as exc:
            raise _HTTPStatus(400, str(exc)) from None
        token = q.get("continue")
        with self._lock:
            if token:
                snap_rv, start = _decode_continue(token)
                snap = self._snapshots.get((rt.resource, snap_rv)) if snap_rv >= self._compacted_rv else None
                if snap_rv == -1:  # "inconsistent" token handed out with a 410: latest state
                    snap_rv, snap = self._rv, self._sorted_snapshot(rt)
                if snap is None:
                    raise _HTTPStatus(
                        410,
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter, or use the continue "
                        "token in this response to retrieve the remainder of the results. Continuing with "
                        "the provided token results in an inconsistent list - objects that were created, "
                        "modified, or deleted between the time the first chunk was returned and now may "
                        "show up in the list.",
                        # Like the real server: a token to continue inconsistently.
                        metadata={"continue": _encode_continue(-1, start)},
                    )
                idx = bisect.bisect_right(snap.keys, start)
            else:
                snap_rv, snap, idx = self._rv, self._sorted_snapshot(rt), 0
            lo, hi = 0, len(snap.keys)
            if ns is not None:
                lo = bisect.bisect_left(snap.keys, (ns,))
                hi = bisect.bisect_left(snap.keys, (ns + "\x00",))
            i = max(idx, lo)
            items: list[bytes] = []
            while i < hi and (not limit or len(items) < limit):
                e = snap.entries[i]
                if _matches(e, labels, fields):
                    items.append(e.body)
                i += 1
            meta: JSON = {"resourceVersion": str(snap_rv)}
            if limit and i < hi:
                meta["continue"] = _encode_continue(snap_rv, snap.keys[i - 1])
                if not labels and not fields:
                    meta["remainingItemCount"] = hi - i
                self._snapshots[(rt.resource, snap_rv)] = snap
                self._snapshots.move_to_end((rt.resource, snap_rv))
                while len(self._snapshots) > self._max_snapshots:
                    self._snapshots.popitem(last=False)
        head = json.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta}, separators=(",", ":"))
        body = head[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"
        return _json_response(body)

    async def _watch(
        self, request: web.Request, record: RequestRecord, rt: ResourceType, ns: str | None, name: str | None
    ) -> web.StreamResponse:
        q = record.params
        try:
            labels = parse_label_selector(q.get("labelSelector"))
            fields = parse_field_selector(q.get("fieldSelector"))
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else self.watch_timeout
            rv_param = q.get("resourceVersion", "")
            start_rv = None if rv_param in ("", "0") else int(rv_param)
        except ValueError as exc:
            raise _HTTPStatus(400, str(exc)) from None
        if name is not None:  # /watch/namespaces/ns/services/name form
            fields.append(("metadata.name", True, name))
        if self.ignore_watch_list:
            q = {k: v for k, v in q.items() if k not in ("sendInitialEvents", "resourceVersionMatch")}
        send_initial = _truthy(q["sendInitialEvents"]) if "sendInitialEvents" in q else start_rv is None
        if "sendInitialEvents" in q:
            # As kube-apiserver validates watch-list requests.
            if not self.watch_list:
                raise _HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: "
                                  "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")
            if q.get("resourceVersionMatch") != "NotOlderThan":
                raise _HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: "
                                  "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
            if not _truthy(q.get("allowWatchBookmarks")):
                raise _HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: Forbidden: "
                                  "sendInitialEvents requires allowWatchBookmarks=true")
        deadline = time.monotonic() + timeout if timeout else math.inf

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        w = _Watcher(
            rt,
            ns,
            labels,
            fields,
            _truthy(q.get("allowWatchBookmarks")),
            0,
            collections.deque(),
            asyncio.Event(),
            record,
            request,
        )
        lines: list[bytes] = []
        with self._lock:
            if not send_initial and start_rv is not None and start_rv < self._compacted_rv:
                expired = f"too old resource version: {start_rv} ({self._compacted_rv})"
            else:
                expired = None
                if send_initial:
                    lines = [
                        b'{"type":"ADDED","object":' + e.full + b"}\n" for e in self._sorted_snapshot(rt).entries if w.matches(e)
                    ]
                    w.cursor = self._rv
                else:
                    assert start_rv is not None
                    w.cursor = start_rv
                    w.queue.extend(ev for ev in self._backlog if ev.rv > start_rv and ev.entry.rt is rt)
                self._watchers.add(w)
        try:
            await resp.prepare(request)
            record.status = 200  # the status line is out: that's what the client sees
            if expired is not None:
                # Real apiserver: HTTP 200, then a single ERROR event, then EOF.
                record.end = "expired"
                await resp.write(json.dumps({"type": "ERROR", "object": status_body(410, expired)}).encode() + b"\n")
                await resp.write_eof()
                return resp
            if send_initial and w.bookmarks and "sendInitialEvents" in q:
                lines.append(self._bookmark(w, initial_end=True))
            if lines:
                await resp.write(b"".join(lines))
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                w.wake.clear()
                if w.dropped:
                    record.end = "dropped"
                    return resp
                now = time.monotonic()
                if self._stalled():
                    # Send nothing at all until unstalled (or dropped).
                    wait = None if self._stall_until == math.inf else self._stall_until - now  # type: ignore[operator]
                    await self._wait(w.wake, wait)
                    next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                if now >= deadline:
                    # Book-keeping first, so it is final once the client sees EOF.
                    self._unregister(w)
                    record.end, record.ended = "timeout", time.monotonic()
                    await resp.write_eof()  # clean end of the chunked stream
                    return resp
                out = self._drain(w)
                if w.bookmarks and now >= next_bookmark:
                    out.append(self._bookmark(w))
                    next_bookmark = now + self.bookmark_interval
                if out:
                    await resp.write(b"".join(out))
                wait = min(deadline, next_bookmark if w.bookmarks else math.inf) - time.monotonic()
                await self._wait(w.wake, None if wait == math.inf else max(0.0, wait))
        except ConnectionError:
            # Client went away while we were writing.
            record.end = record.end or ("dropped" if w.dropped else "client")
            return resp
        finally:
            self._unregister(w)

    def _unregister(self, w: _Watcher) -> None:
        with self._lock:
            self._watchers.discard(w)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _drain(self, w: _Watcher) -> list[bytes]:
        with self._lock:
            events = list(w.queue)
            w.queue.clear()
            # Everything up to the global RV has been queued (same lock), so a
            # bookmark may report it even if it belongs to another resource.
            w.cursor = max(w.cursor, self._rv)
        out = []
        for ev in events:
            line = self._event_line(w, ev)
            if line is not None:
                out.append(line)
        return out

    @staticmethod
    def _event_line(w: _Watcher, ev: _Event) -> bytes | None:
        prev_ok = ev.prev is not None and w.matches(ev.prev)
        if ev.type == DELETED:
            typ, entry = (DELETED, ev.entry) if prev_ok else (None, ev.entry)
        else:
            cur_ok = w.matches(ev.entry)
            if cur_ok:
                typ, entry = (MODIFIED if prev_ok else ADDED), ev.entry
            elif prev_ok:
                # Stopped matching the selector: the cacher sends the previous
                # state, stamped with this event's RV, as DELETED.
                assert ev.prev is not None
                typ, entry = DELETED, _with_rv(ev.prev, ev.rv)
            else:
                typ = None
        if typ is None:
            return None
        return b'{"type":"' + typ.encode() + b'","object":' + entry.full + b"}\n"

    @staticmethod
    def _bookmark(w: _Watcher, *, initial_end: bool = False) -> bytes:
        meta: JSON = {"resourceVersion": str(w.cursor)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": w.rt.kind, "apiVersion": w.rt.api_version, "metadata": meta}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"

    def _discovery(self, path: str) -> web.StreamResponse:
        path = "/" + path.strip("/")
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            return _json_response(
                {
                    "major": "1",
                    "minor": "37",
                    "gitVersion": "v1.37.0-fake",
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.25.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            )
        if path == "/api":
            return _json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}],
                }
            )
        group_version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
        group = {"name": "discovery.k8s.io", "versions": [group_version], "preferredVersion": group_version}
        if path == "/apis":
            return _json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})
        if path == "/apis/discovery.k8s.io":
            return _json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
        for gv, grp in (("/api/v1", ""), ("/apis/discovery.k8s.io/v1", "discovery.k8s.io")):
            if path == gv:
                return _json_response(
                    {
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": gv.removeprefix("/api/").removeprefix("/apis/"),
                        "resources": [
                            {
                                "name": rt.resource,
                                "singularName": rt.singular,
                                "namespaced": rt.namespaced,
                                "kind": rt.kind,
                                "verbs": ["get", "list", "watch"],
                            }
                            for rt in RESOURCE_TYPES
                            if rt.group == grp
                        ],
                    }
                )
        raise _HTTPStatus(404, "the server could not find the requested resource")
