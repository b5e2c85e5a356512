"""Object builders, shaped like ``kubectl get -o json`` output."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .resources import JSON, PortSpec


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


def service_import(
    ns: str, name: str, type_: str = "ClusterSetIP", ips: Sequence[str] = (), ports: Sequence[PortSpec] = (("http", 80, "TCP"),),
) -> JSON:
    """A multicluster.x-k8s.io/v1alpha1 ServiceImport (KEP-1645): ``type_`` ClusterSetIP or Headless."""
    spec: JSON = {"type": type_, "ports": _ports(ports, target=False)}
    if ips:
        spec["ips"] = list(ips)
    return {
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": _meta(ns, name, None),
        "spec": spec,
    }
