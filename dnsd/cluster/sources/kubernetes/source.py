"""The Kubernetes API as a source: one reflector per watched resource, feeding the store lean records.

One daemon thread per watched resource (per resource and namespace when namespaces are
given) runs a reflector (``reflector``): a list, then a watch resumed from the last
resourceVersion. They share the credentials (``client``: reloaded on a 401 and every
minute) and one probe (``probe``) that wakes them all when an unreachable API is back.
Responses are read raw and parsed with ``json`` (Services' and EndpointSlices' watch events with
msgspec: ``typed``) straight into ``dnsd.cluster.model`` records: the client's pydantic models are
never built (they cost far more than the conversion itself).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration

from dnsd.cluster.model import (
    ENDPOINT_SLICE,
    ENDPOINTS,
    IMPORT_NAME_LABEL,
    MULTICLUSTER_GROUP,
    NAMESPACE,
    SERVICE,
    SERVICE_IMPORT,
    Namespace,
    from_object,
)
from dnsd.cluster.sources.kubernetes.client import Credentials, list_call
from dnsd.cluster.sources.kubernetes.probe import ApiProbe
from dnsd.cluster.sources.kubernetes.reflector import WARN_EVERY, Options, Reflector, ReflectorStatus
from dnsd.cluster.store import Expect, Op, Replace, Synced

log = logging.getLogger(__name__)

NAMESPACES_ORIGIN = "k8s:namespaces"


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
_IMPORTS = _Resource("serviceimports", SERVICE_IMPORT, f"/apis/{MULTICLUSTER_GROUP}/v1alpha1", True)
# With --endpoints-api no slice is watched: the ServiceImports' own slices still are, and only they.
_IMPORTED_SLICES = _Resource("endpointslices", ENDPOINT_SLICE, "/apis/discovery.k8s.io/v1", True)


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


class KubernetesSource:
    """Services, EndpointSlices (or Endpoints), Namespaces and ServiceImports from the API, as store ops."""

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
        watch_list: bool = True,
        warn_every: float = WARN_EVERY,
        pod_names: bool = False,
        endpoints: bool = True,
        namespace_labels: str | None = None,
        multicluster: bool = False,
    ) -> None:
        """``endpoints`` False (--no-endpoints): no EndpointSlice/Endpoints watch at all.
        ``multicluster`` (--multicluster-zone): ServiceImports too, and their slices (among all slices,
        or watched alone with --endpoints-api).
        ``namespace_labels``: the Namespace list asks only for those (the pipeline decides what is
        served from the labels it holds; the API sending only matches saves holding the rest)."""
        self.emit = emit
        self.namespaces = tuple(dict.fromkeys(namespaces))
        for ns in self.namespaces:
            from_object({"metadata": {"name": ns}}, kind=NAMESPACE)  # ValueError for a bad name
        self._stop = threading.Event()
        # Config problems surface here, not in a thread. (A lambda: tests swap api_client.)
        self._creds = Credentials(lambda: api_client(kubeconfig))
        self._probe = ApiProbe(lambda: self._creds.host, lambda: self._creds.client().rest_client.pool_manager, self._stop)
        options = Options(page_size=page_size, watch_timeout=watch_timeout, read_timeout=read_timeout,
                          backoff=backoff, watch_list=watch_list, warn_every=warn_every, pod_names=pod_names)
        self._reflectors: list[Reflector] = []
        resources = [_SERVICES]
        if endpoints:
            resources.append(_ENDPOINTS if endpoints_api else _SLICES)
        if multicluster:
            resources.append(_IMPORTS)
            if endpoints and endpoints_api:
                resources.append(_IMPORTED_SLICES)
        for resource in resources:
            kwargs = {"label_selector": label_selector} if resource is _SERVICES and label_selector else {}
            if resource is _IMPORTED_SLICES:
                kwargs = {"label_selector": IMPORT_NAME_LABEL}
            origin = "k8s:imported-endpointslices" if resource is _IMPORTED_SLICES else f"k8s:{resource.plural}"
            if self.namespaces:
                # One reflector per namespace with the namespaced calls: RBAC may be namespaced too.
                for ns in self.namespaces:
                    call = list_call(self._creds, resource.path(ns), **kwargs)
                    self._add(f"{origin}/{ns}", resource, call, options)
            else:
                self._add(origin, resource, list_call(self._creds, resource.path(), **kwargs), options)
        if not self.namespaces:
            ns_kwargs = {"label_selector": namespace_labels} if namespace_labels else {}
            self._add(NAMESPACES_ORIGIN, _NAMESPACES, list_call(self._creds, _NAMESPACES.path(), **ns_kwargs), options)
        self._started: float | None = None

    def _add(self, origin: str, resource: _Resource, call: Callable[..., Any], options: Options) -> None:
        self._reflectors.append(Reflector(origin, resource.kind, call, self.emit, self._stop, options,
                                          probe=self._probe, reauth=self._creds.reload))

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
        self._probe.wake()
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
            self._creds.close()

    def status(self) -> dict[str, ReflectorStatus]:
        statuses = {r.origin: r.status() for r in self._reflectors}
        if self.namespaces:
            statuses[NAMESPACES_ORIGIN] = ReflectorStatus(
                NAMESPACES_ORIGIN, self._started is not None, self._started is not None, self._started, 0, 0, 0
            )
        return statuses
