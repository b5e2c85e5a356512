"""Lean immutable records: the only shape of cluster data past the source boundary.

Sources hand us Kubernetes objects as plain dicts (manifest files, or raw API JSON
read without the client's model classes); ``from_object`` strips each one to what
DNS needs and validates it, raising ``ValueError`` with a readable reason.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any, NamedTuple

from dnsd.cluster.addresses import canonical_ip, pack, packed_ip, unpack
from dnsd.cluster.ports import Port, convert_ports

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
ENDPOINTS = "Endpoints"
NAMESPACE = "Namespace"
SERVICE_IMPORT = "ServiceImport"  # multicluster.x-k8s.io (KEP-1645): a Service of the clusterset
KINDS = (SERVICE, ENDPOINT_SLICE, ENDPOINTS, NAMESPACE, SERVICE_IMPORT)
MULTICLUSTER_GROUP = "multicluster.x-k8s.io"

CLUSTER_IP = "ClusterIP"
HEADLESS = "Headless"
EXTERNAL_NAME = "ExternalName"

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# An EndpointSlice of a ServiceImport, and the member cluster its endpoints come from (KEP-1645).
IMPORT_NAME_LABEL = "multicluster.kubernetes.io/service-name"
SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for Namespace objects
ServiceKey = tuple[str, str]  # (namespace, name)


class Subset(NamedTuple):
    """Endpoints as parallel sequences rather than one (address, hostname) object each: at 100k
    endpoints those objects were ~6 MB, and most endpoints have no hostname. Build with
    ``subset()``, which keeps the form canonical (equal subsets compare equal: the store
    compares old and new records); read with ``endpoints()``."""

    ports: tuple[Port, ...]
    # Ready (or readiness unknown) addresses, packed (addresses.pack): one bytes object per subset,
    # not a string per address; only a headless Service's records read them, built on change.
    addresses: bytes = b""
    # Kept apart: DNS shows them only for a Service with publishNotReadyAddresses.
    not_ready: bytes = b""
    # One per address, ``addresses`` then ``not_ready``, "" for an endpoint without; the shared
    # empty tuple when no endpoint has one. A hostname is the endpoint's own, or with
    # ``pod_names`` its pod's name.
    hostnames: tuple[str, ...] = ()

    def endpoints(self, not_ready: bool = False) -> Iterator[tuple[str, str]]:
        """(address, hostname) of each ready endpoint, then with ``not_ready`` the others."""
        texts = unpack(self.addresses)
        if not_ready and self.not_ready:
            texts += unpack(self.not_ready)
        return zip(texts, self.hostnames or repeat(""), strict=False)  # stops at the last address


class Service(NamedTuple):
    namespace: str
    name: str
    type: str  # CLUSTER_IP | HEADLESS | EXTERNAL_NAME
    ips: tuple[str, ...]
    ports: tuple[Port, ...]
    external_name: str = ""
    publish_not_ready: bool = False  # spec.publishNotReadyAddresses
    # spec.externalIPs and status.loadBalancer.ingress[].ip: what --external-zone answers
    external_ips: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        return (SERVICE, self.namespace, self.name)


class EndpointSet(NamedTuple):
    """An EndpointSlice (one subset) or a legacy Endpoints object (one per subset)."""

    kind: str  # ENDPOINT_SLICE | ENDPOINTS
    namespace: str
    name: str
    service: str  # the Service it belongs to
    subsets: tuple[Subset, ...]

    @property
    def key(self) -> Key:
        return (self.kind, self.namespace, self.name)


class ServiceImport(NamedTuple):
    """A ServiceImport: a Service exported by the clusterset's members, answered under --multicluster-zone."""

    namespace: str
    name: str
    type: str  # CLUSTER_IP (spec.type ClusterSetIP) | HEADLESS
    ips: tuple[str, ...]  # the ClusterSetIPs
    ports: tuple[Port, ...]

    @property
    def key(self) -> Key:
        return (SERVICE_IMPORT, self.namespace, self.name)


class ImportedSlice(NamedTuple):
    """An EndpointSlice labelled for a ServiceImport: the endpoints one member cluster contributes.
    Its key is an EndpointSlice's (it is one), so a slice relabelled either way replaces itself."""

    namespace: str
    name: str
    service: str  # the ServiceImport it belongs to
    cluster: str  # its source cluster's id, a DNS label: <hostname>.<cluster>.<svc>.<ns>.svc.<zone>
    subsets: tuple[Subset, ...]

    @property
    def key(self) -> Key:
        return (ENDPOINT_SLICE, self.namespace, self.name)


class Namespace(NamedTuple):
    name: str
    # metadata.labels as sorted (key, value) pairs: what --namespace-labels matches. A cluster
    # has few namespaces, and most have one label (kubernetes.io/metadata.name).
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> Key:
        return (NAMESPACE, "", self.name)


Object = Service | EndpointSet | Namespace | ServiceImport | ImportedSlice


def subset(ports: tuple[Port, ...], ready: Iterable[tuple[str, str]], not_ready: Iterable[tuple[str, str]] = ()) -> Subset:
    """A Subset of (address, hostname) endpoints, in the one form equal subsets share."""
    addresses, hostnames = tuple(zip(*ready, strict=True)) or ((), ())
    not_ready_addresses, not_ready_hostnames = tuple(zip(*not_ready, strict=True)) or ((), ())
    packed = pack([packed_ip(a) for a in addresses]), pack([packed_ip(a) for a in not_ready_addresses])
    if any(hostnames) or any(not_ready_hostnames):
        return Subset(ports, *packed, hostnames + not_ready_hostnames)
    return Subset(ports, *packed)


def service_key(obj: Service | EndpointSet | ServiceImport | ImportedSlice) -> ServiceKey:
    return (obj.namespace, obj.name if isinstance(obj, Service | ServiceImport) else obj.service)


def _label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise ValueError(f"{what} {value!r} is not a valid DNS label (lowercase RFC 1123, 1-63 characters)")
    return value


def _external_ips(raw: Any, status: Any) -> tuple[str, ...]:
    """spec.externalIPs (``raw``), then the LoadBalancer's ingress IPs (an ingress with only a hostname has none)."""
    balancer = status.get("loadBalancer") if isinstance(status, dict) else None
    if not raw and not balancer:
        return ()  # most Services: neither, and a first load converts 100k of them
    raw = raw or []
    ingress = (balancer.get("ingress") or []) if isinstance(balancer, dict) else []
    if not isinstance(raw, list) or not isinstance(ingress, list):
        raise ValueError("spec.externalIPs and status.loadBalancer.ingress must be lists")
    found = [*raw, *(i.get("ip") for i in ingress if isinstance(i, dict) and i.get("ip"))]
    return tuple(dict.fromkeys(canonical_ip(ip) for ip in found)) if found else ()


def build_service(namespace: str, name: str, spec_type: Any, ports: Any, publish: Any, external_name: Any, cluster_ips: Any,
            cluster_ip: Any, external_ips: Any, status: Any) -> Service:
    """A Service from its fields as the API sends them (spec.type, spec.ports, ... status), whichever
    decoder read them: ``from_object`` from a dict, the API source's typed decoder from its structs."""
    ports = convert_ports(ports, "spec.ports")
    publish = publish or False
    if not isinstance(publish, bool):
        raise ValueError(f"spec.publishNotReadyAddresses {publish!r} is not true or false")
    if spec_type == EXTERNAL_NAME:
        target = external_name
        if not isinstance(target, str) or not target.strip("."):
            raise ValueError("ExternalName Service without spec.externalName")
        return Service(namespace, name, EXTERNAL_NAME, (), ports, target.strip(".").lower())
    ips_raw = cluster_ips or ([cluster_ip] if cluster_ip else [])
    if not isinstance(ips_raw, list):
        raise ValueError("spec.clusterIPs must be a list")
    if any(str(ip) == "None" for ip in ips_raw):
        return Service(namespace, name, HEADLESS, (), ports, publish_not_ready=publish)
    ips = tuple(dict.fromkeys(canonical_ip(ip) for ip in ips_raw))
    return Service(namespace, name, CLUSTER_IP, ips, ports, publish_not_ready=publish,
                   external_ips=_external_ips(external_ips, status))


_IMPORT_TYPES = {"ClusterSetIP": CLUSTER_IP, "Headless": HEADLESS}


def _service_import(spec: dict, namespace: str, name: str) -> ServiceImport:
    """spec.type, spec.ips and spec.ports of a multicluster.x-k8s.io/v1alpha1 ServiceImport."""
    kind = _IMPORT_TYPES.get(str(spec.get("type")))
    if kind is None:
        raise ValueError(f"spec.type {spec.get('type')!r} is not ClusterSetIP or Headless")
    raw = spec.get("ips") or []
    if not isinstance(raw, list):
        raise ValueError("spec.ips must be a list")
    ips = tuple(dict.fromkeys(canonical_ip(ip) for ip in raw)) if kind == CLUSTER_IP else ()
    return ServiceImport(namespace, name, kind, ips, convert_ports(spec.get("ports"), "spec.ports"))


def endpoint_hostname(hostname: Any, ref: Any, where: str, pod_names: bool) -> str:
    """The endpoint's label source: its ``hostname``; else, with ``pod_names``, its pod's name from
    ``ref``, its targetRef (CoreDNS's endpoint_pod_names). A pod name that is not one DNS label
    (names may hold dots) is not usable as one: the dashed address stays."""
    if hostname:
        return _label(hostname, f"{where}.hostname")
    if pod_names and isinstance(ref, dict) and ref.get("kind", "Pod") == "Pod":
        pod = ref.get("name")
        if isinstance(pod, str) and _LABEL.match(pod):
            return pod
    return ""


def _hostname(raw: dict, where: str, pod_names: bool) -> str:
    return endpoint_hostname(raw.get("hostname"), raw.get("targetRef"), where, pod_names)


def build_slice(namespace: str, name: str, labels: Any, address_type: Any,
                subset: Callable[[], Subset]) -> EndpointSet | ImportedSlice | None:
    """An EndpointSlice from its labels and addressType as the API sends them (whichever decoder read
    them, as ``build_service``); ``subset`` converts its endpoints, called only for a slice DNS uses."""
    labels = labels or {}
    if not isinstance(labels, dict):
        raise ValueError("metadata.labels must be a mapping")
    service = labels.get(SERVICE_NAME_LABEL)
    imported = labels.get(IMPORT_NAME_LABEL) if not service else None  # a Service's own slice comes first
    if not service and not imported:
        return None  # not linked to a Service or a ServiceImport: nothing in DNS refers to it
    if address_type not in ("IPv4", "IPv6"):
        return None  # FQDN slices are not served (as CoreDNS)
    if imported:
        cluster = labels.get(SOURCE_CLUSTER_LABEL)
        if not cluster:
            raise ValueError(f"a slice labelled {IMPORT_NAME_LABEL} needs the label {SOURCE_CLUSTER_LABEL}: its "
                             "endpoints are named <hostname>.<cluster id>.<service>")
        return ImportedSlice(namespace, name, sys.intern(_label(imported, f"label {IMPORT_NAME_LABEL}")),
                             sys.intern(_label(cluster, f"label {SOURCE_CLUSTER_LABEL}")), (subset(),))
    service = sys.intern(_label(service, f"label {SERVICE_NAME_LABEL}"))
    return EndpointSet(ENDPOINT_SLICE, namespace, name, service, (subset(),))


def packed_subset(ports: tuple[Port, ...], ready: list[bytes], other: list[bytes], hostnames: tuple[str, ...] | None) -> Subset:
    """A slice's Subset from its addresses (packed_ip), ready and not, and their hostnames (None when no
    endpoint has one): what subset() makes of (address, hostname) pairs, built directly."""
    packed = pack(ready), pack(other)
    return Subset(ports, *packed, hostnames) if hostnames is not None else Subset(ports, *packed)


def _slice_subset(obj: dict, pod_names: bool) -> Subset:
    raws = obj.get("endpoints") or []
    if not isinstance(raws, list):
        raise ValueError("endpoints must be a list")
    # This loop runs once per endpoint of every slice listed (a million at 1M endpoints), so
    # nothing is made twice here. dnsd.cluster.sources.kubernetes.typed has its twin for typed objects.
    ready_addresses: list[bytes] = []
    ready_hostnames: list[str] = []
    other_addresses: list[bytes] = []
    other_hostnames: list[str] = []
    named = False
    for i, ep in enumerate(raws):
        if not isinstance(ep, dict):
            raise ValueError(f"endpoints[{i}] must be a mapping")
        hostname = _hostname(ep, f"endpoints[{i}]", pod_names) if pod_names or ep.get("hostname") else ""
        addresses = ep.get("addresses") or []
        if not addresses:
            raise ValueError(f"endpoints[{i}] has no addresses")
        if not isinstance(addresses, list):
            raise ValueError(f"endpoints[{i}].addresses must be a list")
        # ready unset means unknown: treated as ready; serving/terminating do not matter.
        conditions = ep.get("conditions")
        if conditions and not isinstance(conditions, dict):
            raise ValueError(f"endpoints[{i}].conditions must be a mapping")
        if not conditions or conditions.get("ready") is not False:
            into, hostnames = ready_addresses, ready_hostnames
        else:
            into, hostnames = other_addresses, other_hostnames
        for address in addresses:
            into.append(packed_ip(address))
            hostnames.append(hostname)
        named = named or bool(hostname)
    ports = convert_ports(obj.get("ports"), "ports", allow_null=True)
    return packed_subset(ports, ready_addresses, other_addresses, (*ready_hostnames, *other_hostnames) if named else None)


def _addresses(raws: Any, where: str, pod_names: bool) -> list[tuple[str, str]]:
    return [
        (canonical_ip(addr.get("ip")), _hostname(addr, f"{where}[{j}]", pod_names))
        for j, addr in enumerate(raws or [])
    ]


def _endpoints(obj: dict, namespace: str, name: str, pod_names: bool) -> EndpointSet:
    subsets_raw = obj.get("subsets") or []
    if not isinstance(subsets_raw, list):
        raise ValueError("subsets must be a list")
    subsets = []
    for i, sub in enumerate(subsets_raw):
        ready = _addresses(sub.get("addresses"), f"subsets[{i}].addresses", pod_names)
        not_ready = _addresses(sub.get("notReadyAddresses"), f"subsets[{i}].notReadyAddresses", pod_names)
        subsets.append(subset(convert_ports(sub.get("ports"), f"subsets[{i}].ports"), ready, not_ready))
    name = sys.intern(name)  # also the Service's name
    return EndpointSet(ENDPOINTS, namespace, name, name, tuple(subsets))


def _labels(raw: Any) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ValueError("metadata.labels must map names to strings (quote numbers and true/false)")
    return tuple(sorted(raw.items()))


def object_names(kind: str, name: Any, namespace: Any) -> tuple[str, str]:
    """A namespaced object's (namespace, name) from its metadata, checked. Interned: a namespace is
    named by every object in it, and a Service (or ServiceImport) by each of its slices."""
    if kind == ENDPOINT_SLICE:
        if not isinstance(name, str) or not name:
            raise ValueError("metadata.name is missing")
    else:
        name = sys.intern(_label(name, "metadata.name"))
    return sys.intern(_label(namespace or "default", "metadata.namespace")), name


def from_object(obj: Any, kind: str | None = None, *, pod_names: bool = False) -> Object | None:
    """Convert one Kubernetes object (a dict) to a model record.

    Returns None for kinds DNS does not use; raises ValueError for a bad object.
    ``kind`` overrides ``obj["kind"]`` (items of a typed list lack it). ``pod_names``
    (--endpoint-pod-names) names an endpoint without hostname after its pod: decided
    here, so the pod name is kept only when it is used (100k of them are ~6 MB).
    """
    if not isinstance(obj, dict):
        raise ValueError("object is not a mapping")
    kind = kind or obj.get("kind")
    if kind not in KINDS:
        return None
    api_version = obj.get("apiVersion")  # absent from the items of a typed list
    if kind == SERVICE_IMPORT and api_version and not str(api_version).startswith(MULTICLUSTER_GROUP + "/"):
        return None  # another API's ServiceImport (e.g. a gateway controller's): not the clusterset's
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{kind} without metadata")
    if kind == NAMESPACE:
        return Namespace(_label(meta.get("name"), "metadata.name"), _labels(meta.get("labels")))
    namespace, name = object_names(kind, meta.get("name"), meta.get("namespace"))
    if kind == SERVICE:
        spec = obj.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValueError("spec must be a mapping")
        return build_service(namespace, name, spec.get("type"), spec.get("ports"), spec.get("publishNotReadyAddresses"),
                             spec.get("externalName"), spec.get("clusterIPs"), spec.get("clusterIP"),
                             spec.get("externalIPs"), obj.get("status"))
    if kind == ENDPOINT_SLICE:
        return build_slice(namespace, name, meta.get("labels"), obj.get("addressType", "IPv4"),
                           lambda: _slice_subset(obj, pod_names))
    if kind == SERVICE_IMPORT:
        spec = obj.get("spec") or {}
        if not isinstance(spec, dict):
            raise ValueError("spec must be a mapping")
        return _service_import(spec, namespace, name)
    return _endpoints(obj, namespace, name, pod_names)
