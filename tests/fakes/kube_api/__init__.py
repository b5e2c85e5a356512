"""A small but faithful fake Kubernetes API server for dnsd tests and benchmarks.

It speaks real HTTP on loopback from a background thread (own asyncio loop,
aiohttp.web), so synchronous tests, asyncio tests and other processes can all
point the official ``kubernetes`` client at it through a kubeconfig file.

Served: core v1 ``services``, ``endpoints``, ``namespaces`` and
``discovery.k8s.io/v1`` ``endpointslices`` and ``multicluster.x-k8s.io/v1alpha1``
``serviceimports`` (list / watch / get), plus minimal
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

Modules: ``resources`` (the types), ``objects`` (builders), ``selectors``, ``store`` (objects,
resourceVersion, history), ``listing`` and ``watch`` (the handlers), ``routes`` (URLs, discovery),
``status`` (Status errors), ``faults`` (fault switches), ``requestlog`` (introspection), ``tls``
(certificates) and ``server`` (FakeKubeAPI: the HTTP(S) server, its thread and lifecycle).
"""

from .objects import endpoint_slice, endpoints, namespace, service, service_import
from .requestlog import RequestRecord
from .resources import (
    ADDED,
    DELETED,
    ENDPOINTS,
    ENDPOINTSLICES,
    JSON,
    MODIFIED,
    NAMESPACES,
    RESOURCE_TYPES,
    SERVICES,
    Key,
    PortSpec,
    ResourceType,
    resource_type,
)
from .selectors import parse_field_selector, parse_label_selector
from .server import FakeKubeAPI
from .status import status_body
from .tls import tls_files

__all__ = [
    "ADDED",
    "DELETED",
    "ENDPOINTS",
    "ENDPOINTSLICES",
    "JSON",
    "MODIFIED",
    "NAMESPACES",
    "RESOURCE_TYPES",
    "SERVICES",
    "FakeKubeAPI",
    "Key",
    "PortSpec",
    "RequestRecord",
    "ResourceType",
    "endpoint_slice",
    "endpoints",
    "namespace",
    "service_import",
    "parse_field_selector",
    "parse_label_selector",
    "resource_type",
    "service",
    "status_body",
    "tls_files",
]
