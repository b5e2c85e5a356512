"""Pure record building: one Service (+ its endpoints) -> the DNS records it owns.

A record is a ``(name, rtype, rdata)`` triple: ``name`` lowercase without the final
dot, ``rdata`` a small hashable value (an IP string, a target name, or an SRV tuple).
The TTL is the server's, applied when answers are rendered. A ClusterIP Service's
addresses and SRVs are one record of the index's own type (``SERVICE``): ``plain()``
spreads it to the records it stands for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, cast

from dnsd.cluster.addresses import canonical_ip
from dnsd.cluster.model import (
    CLUSTER_IP,
    EXTERNAL_NAME,
    HEADLESS,
    EndpointSet,
    ImportedSlice,
    Port,
    Service,
    ServiceImport,
)
from dnsd.dns.const import AAAA, CNAME, EXISTS, NS, PTR, REVERSE_ZONES, SOA, SRV, TXT, A

SCHEMA_VERSION = "1.1.0"
MULTICLUSTER_SCHEMA_VERSION = "1.0.0"  # KEP-1645's DNS specification, 2.2


class SrvData(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


class SrvGroup(NamedTuple):
    """SRV records alike but for their target: one port of a headless Service, one record per
    endpoint. Indexes hold this one object instead of an SrvData per endpoint (~6 MB at 100k
    endpoints) and hand out SrvData (``expand``). One name's rrset holds groups or SrvData, never
    both: a name belongs to one Service, whose old records all go when its type changes."""

    priority: int
    weight: int
    port: int
    targets: tuple[str, ...]


class ServiceData(NamedTuple):
    """A ClusterIP Service's addresses and ports, the Service's own (shared) tuples: its name's A/AAAA,
    one SRV there per port number, and an SRV per named port at ``_<port>._<proto>.<name>``, all in
    one record (``SERVICE``) that the index answers them from (service_entry.py), instead of an rrset
    per name and type and a counted parent per ``_`` name (docs/performance.md, "One entry per
    ClusterIP Service")."""

    ips: tuple[str, ...]
    ports: tuple[Port, ...]


# The type of a ServiceData record: outside the 16-bit type space, so no query can ask for it.
SERVICE = 0x10000


class SoaData(NamedTuple):
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


Record = tuple[str, int, object]


def expand(rrset: tuple[object, ...]) -> tuple[object, ...]:
    """An SRV rrset as its records: groups spread to one SrvData per target, sorted (the order a
    fresh rrset has). Anything else as it is."""
    if not rrset or rrset[0].__class__ is not SrvGroup:
        return rrset
    groups = cast(tuple[SrvGroup, ...], rrset)
    return tuple(sorted({SrvData(g.priority, g.weight, g.port, t) for g in groups for t in g.targets}))


def plain(records: Iterable[Record]) -> Iterator[Record]:
    """``records`` with each ServiceData spread to the records it stands for (as cluster_ip_records)."""
    for record in records:
        if record[1] == SERVICE:
            yield from cluster_ip_records(cast(ServiceData, record[2]), record[0], reverse=False)
        else:
            yield record


def size(rrset: tuple[object, ...]) -> int:
    """How many records ``rrset`` stands for (a group one per target)."""
    if not rrset or rrset[0].__class__ is not SrvGroup:
        return len(rrset)
    return len(expand(rrset))


def address_type(ip: str) -> int:
    return AAAA if ":" in ip else A


def reverse_name(ip: str) -> str:
    if ":" in ip:
        return ipaddress.ip_address(ip).reverse_pointer  # all 32 nibbles
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"  # canonical already: no parsing needed


def endpoint_label(ip: str) -> str:
    """The generated label of an endpoint without hostname: the dashed address (as CoreDNS)."""
    label = ip.replace(".", "-").replace(":", "-")
    # A label may not start or end with a dash: "fd00::" -> "fd00--0", "::1" -> "0--1".
    if label.endswith("-"):
        label += "0"
    if label.startswith("-"):
        label = "0" + label
    return label


def _srv_name(port: Port, base: str) -> str:
    return f"_{port.name}._{port.protocol}.{base}"


def service_records(
    svc: Service | None, endpoint_sets: Sequence[EndpointSet], zones: Sequence[str], *, ignore_empty: bool = False,
    external: Sequence[str] = (),
) -> list[Record]:
    """Every record a Service owns in every cluster zone; PTRs in the first zone only.

    The bare name's SRV (``svc.ns.svc.Z`` SRV, as CoreDNS and kube-dns) has one record per
    port, unnamed ones included, reusing the per-port SrvData objects where there are some:
    at 100k endpoints a copy of each would cost ~10 MB, a shared reference 8 bytes.
    ``ignore_empty`` (--ignore-empty-service): a ClusterIP Service without a published endpoint
    keeps only its PTRs, so its name is NXDOMAIN (CoreDNS's ``ignore empty_service``).
    """
    if svc is None:
        return []  # endpoints without their Service are not served
    out: list[Record] = []
    empty = ignore_empty and svc.type == CLUSTER_IP and not has_endpoints(endpoint_sets, svc.publish_not_ready)
    for i, zone in enumerate(zones):
        base = f"{svc.name}.{svc.namespace}.svc.{zone}"
        if svc.type == EXTERNAL_NAME:
            # Only the alias: CoreDNS answers no port/protocol names under an ExternalName Service.
            out.append((base, CNAME, svc.external_name))
        elif svc.type == CLUSTER_IP:
            if not empty:  # as CoreDNS, an empty one's name goes, so a pod's search path goes on
                out.append((base, SERVICE, ServiceData(svc.ips, svc.ports)))
            if i == 0:  # the clusterIP's PTR stays either way
                out += [(reverse_name(ip), PTR, base) for ip in svc.ips]
        elif svc.type == HEADLESS:
            out += _headless(endpoint_sets, base, reverse=i == 0, not_ready=svc.publish_not_ready)
    if svc.external_ips:
        for zone in external:
            out += _external(svc, f"{svc.name}.{svc.namespace}.{zone}")
    return out


def _external(svc: Service, base: str) -> list[Record]:
    """``svc.ns.<external zone>`` (--external-zone, CoreDNS's k8s_external): the Service's external and
    LoadBalancer addresses, and an SRV per named port; no PTRs (the addresses are not the cluster's)."""
    out: list[Record] = [(base, address_type(ip), ip) for ip in svc.external_ips]
    for p in svc.ports:
        if p.name:
            out.append((_srv_name(p, base), SRV, SrvData(0, 100, p.port, base)))
    return out


def import_records(imp: ServiceImport | None, slices: Sequence[ImportedSlice], zones: Sequence[str]) -> list[Record]:
    """Every record a ServiceImport owns in the multicluster zones (--multicluster-zone; KEP-1645's DNS
    specification): a ClusterSetIP import's IPs and an SRV per port, or a headless import's ready
    endpoints, each also as ``<hostname>.<cluster id>.<svc>.<ns>.svc.<zone>``, with an SRV per
    (endpoint, named port). No PTRs, as CoreDNS: the specification asks for them only where the
    address has none, and a clusterset's addresses are mostly the members' own (a local Service's IP,
    a local pod's), whose PTR already names them in the cluster zone."""
    if imp is None:
        return []  # slices without their ServiceImport are not served
    out: list[Record] = []
    for zone in zones:
        base = f"{imp.name}.{imp.namespace}.svc.{zone}"
        if imp.type == CLUSTER_IP:
            out += cluster_ip_records(imp, base, reverse=False)
        else:
            out += _headless(slices, base, reverse=False, not_ready=False)
    return out


def has_endpoints(endpoint_sets: Iterable[EndpointSet], not_ready: bool = False) -> bool:
    """Whether any endpoint is published: a ready one, or with ``not_ready`` (publishNotReadyAddresses) any."""
    return any(s.addresses or (not_ready and s.not_ready) for eps in endpoint_sets for s in eps.subsets)


def cluster_ip_records(svc: Service | ServiceImport | ServiceData, base: str, reverse: bool) -> list[Record]:
    """A ClusterIP Service's (or ClusterSetIP import's) records as records, no ServiceData."""
    out: list[Record] = [(base, address_type(ip), ip) for ip in svc.ips]
    if not svc.ips:
        out.append((base, EXISTS, ""))  # no address allocated yet: the name still exists
    for p in svc.ports:
        data = SrvData(0, 100, p.port, base)
        out.append((base, SRV, data))
        if p.name:
            out.append((_srv_name(p, base), SRV, data))
    if reverse:
        out += [(reverse_name(ip), PTR, base) for ip in svc.ips]
    return out


def _headless(
    endpoint_sets: Iterable[EndpointSet | ImportedSlice], base: str, reverse: bool, not_ready: bool
) -> list[Record]:
    """A headless Service's endpoints; an imported slice's are named below its cluster's id."""
    out: list[Record] = []
    seen: set[str] = set()
    srv: dict[str, dict[int, list[str]]] = {}  # srv name -> port -> targets
    bare: dict[tuple[str, int], list[str]] = {}  # (srv name or "", port) -> targets, for the bare name's SRV
    for eps in endpoint_sets:
        below = f"{eps.cluster}.{base}" if isinstance(eps, ImportedSlice) else base
        for subset in eps.subsets:
            # publishNotReadyAddresses: not-ready endpoints are published like ready ones.
            for address, hostname in subset.endpoints(not_ready):
                if address in seen:
                    continue  # one address in several slices is answered once
                seen.add(address)
                rtype = address_type(address)
                target = f"{hostname or endpoint_label(address)}.{below}"
                out.append((base, rtype, address))
                out.append((target, rtype, address))
                if reverse:
                    out.append((reverse_name(address), PTR, target))
                for p in subset.ports:
                    name = _srv_name(p, base) if p.name else ""
                    bare.setdefault((name, p.port), []).append(target)
                    if name:
                        srv.setdefault(name, {}).setdefault(p.port, []).append(target)
    shared: dict[tuple[str, int], SrvGroup] = {}
    for name, by_port in srv.items():
        weight = max(1, 100 // sum(map(len, by_port.values())))
        for port, targets in by_port.items():
            data = shared[(name, port)] = SrvGroup(0, weight, port, tuple(targets))
            out.append((name, SRV, data))
    if bare:
        # Every record of the bare name has the same weight (one choice among equals, as
        # in each per-port set), so the per-port groups can be reused as they are.
        weight = max(1, 100 // sum(map(len, bare.values())))
        for key, targets in bare.items():
            data = shared.get(key) or SrvGroup(0, weight, key[1], tuple(targets))
            out.append((base, SRV, data))
    return out


def namespace_records(namespace: str, zones: Sequence[str], pods: bool = False) -> list[Record]:
    """An existing namespace is an empty non-terminal even before it holds a Service; with
    pod records (--pods insecure) ``ns.pod.Z`` too, below which the resolver answers them."""
    out: list[Record] = [(f"{namespace}.svc.{zone}", EXISTS, "") for zone in zones]
    if pods:
        out += [(f"{namespace}.pod.{zone}", EXISTS, "") for zone in zones]
    return out


def pod_address(label: str) -> str | None:
    """The address a pod record's first label spells (``10-1-2-3``, ``fd00--1``), or None."""
    if "-" not in label or label.strip("0123456789abcdef-"):
        return None
    try:
        if label.count("-") == 3 and "--" not in label:
            return canonical_ip(label.replace("-", "."))
        return canonical_ip(label.replace("-", ":"))
    except ValueError:
        return None


CLUSTER, EXTERNAL, MULTICLUSTER = "cluster", "external", "multicluster"  # what a zone serves


def zone_records(zone: str, primary: str, serial: int, ttl: int, ns_address: str | None,
                 role: str = CLUSTER) -> list[Record]:
    """The apex of a served zone (cluster or reverse, ``EXTERNAL`` or ``MULTICLUSTER``): SOA, NS, and
    for cluster zones the fixed names (a multicluster zone's schema version is its own). The name server
    of an external or multicluster zone is its own ``ns.dns.<zone>``."""
    external = role != CLUSTER
    owner = zone if external else primary  # the zone whose name server this is
    ns_name = f"ns.dns.{owner}"
    out: list[Record] = [
        (zone, SOA, SoaData(ns_name, f"hostmaster.{owner}", serial, 7200, 1800, 86400, ttl)),
        (zone, NS, ns_name),
    ]
    if zone not in REVERSE_ZONES and role != EXTERNAL:
        version = MULTICLUSTER_SCHEMA_VERSION if role == MULTICLUSTER else SCHEMA_VERSION
        out += [(f"dns-version.{zone}", TXT, version), (f"svc.{zone}", EXISTS, "")]
    if zone == owner and ns_address and zone not in REVERSE_ZONES:
        out.append((ns_name, address_type(ns_address), ns_address))
    return out
