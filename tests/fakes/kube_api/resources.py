"""The served resource types (core v1 Services, Endpoints, Namespaces; discovery.k8s.io/v1 EndpointSlices;
multicluster.x-k8s.io/v1alpha1 ServiceImports, as when the MCS API's CRDs are installed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects
PortSpec = tuple[str | None, int, str] | tuple[str | None, int] | Mapping[str, Any]

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"


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
SERVICEIMPORTS = ResourceType(
    "serviceimports", "ServiceImport", "multicluster.x-k8s.io", "v1alpha1", True, "serviceimport"
)
RESOURCE_TYPES: Final = (SERVICES, ENDPOINTS, NAMESPACES, ENDPOINTSLICES, SERVICEIMPORTS)

_BY_NAME: Final = {alias: rt for rt in RESOURCE_TYPES for alias in (rt.resource, rt.kind.lower(), rt.singular)}
BY_GROUP: Final = {(rt.group, rt.resource): rt for rt in RESOURCE_TYPES}


def resource_type(kind_or_resource: str) -> ResourceType:
    """Map "Service" / "services" / "service" (any case) to its ResourceType."""
    try:
        return _BY_NAME[kind_or_resource.lower()]
    except KeyError:
        raise ValueError(f"unsupported kind/resource {kind_or_resource!r}") from None


def resource_key(resource: str | None) -> str | None:
    """Normalise a kind/resource filter; non-resource paths ("/version") pass through."""
    if resource is None:
        return None
    rt = _BY_NAME.get(resource.lower())
    return rt.resource if rt else resource
