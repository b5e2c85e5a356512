"""FakeKubeAPI: the HTTP(S) server on its own thread and asyncio loop (aiohttp), its lifecycle and
request dispatch. The store, the list and watch handlers, the fault switches and the request log
are mixins from the sibling modules, all working on the state that ``__init__`` sets up."""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from .faults import Fault, FaultSwitches
from .listing import Listing
from .objects import endpoint_slice, endpoints, namespace, service
from .requestlog import RequestLog, RequestRecord
from .resources import JSON, RESOURCE_TYPES, Key, ResourceType
from .routes import discovery, route
from .status import HTTPStatus, json_response, status_body
from .store import Entry, Event, ObjectStore, Snapshot
from .tls import tls_files
from .watch import Watcher, Watching


class FakeKubeAPI(ObjectStore, Listing, Watching, FaultSwitches, RequestLog):
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
        self._store: dict[str, dict[Key, Entry]] = {rt.resource: {} for rt in RESOURCE_TYPES}
        self._sorted: dict[str, Snapshot | None] = {rt.resource: None for rt in RESOURCE_TYPES}
        self._snapshots: collections.OrderedDict[tuple[str, int], Snapshot] = collections.OrderedDict()
        self._backlog: collections.deque[Event] = collections.deque()
        self._watchers: set[Watcher] = set()
        self._faults: list[Fault] = []
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

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        query = dict(request.query)
        try:
            verb, resource, rt, ns, name = route(request.path, query)
        except HTTPStatus:
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
                raise HTTPStatus(401, "Unauthorized")
            self._maybe_fail(record)
            if request.method != "GET":
                raise HTTPStatus(405, f"the server does not allow this method on the requested resource ({request.method})")
            if record.verb == "other":
                raise HTTPStatus(404, "the server could not find the requested resource")
            if rt is None:
                return discovery(request.path, self.host, self.port)
            if record.verb == "get":
                assert name is not None
                return self._get(rt, ns, name)
            if record.verb == "list":
                return self._list(rt, ns, record.params)
            return await self._watch(request, record, rt, ns, name)
        except HTTPStatus as exc:
            body = status_body(exc.code, exc.message, exc.details, exc.metadata)
            return json_response(body, exc.code, exc.headers)
