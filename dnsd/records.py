"""Pure record building: one Service (+ its endpoints) -> the DNS records it owns.

A record is a ``(name, rtype, rdata)`` triple: ``name`` lowercase without the final
dot, ``rdata`` a small hashable value (an IP string, a target name, or an SRV tuple).
The TTL is the server's, applied when answers are rendered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .model import CLUSTER_IP, EXTERNAL_NAME, HEADLESS, EndpointSet, Port, Service

A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33
EXISTS = 0  # marker type: the name exists (an empty non-terminal) but holds no data
SCHEMA_VERSION = "1.1.0"
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


class SrvData(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


class SoaData(NamedTuple):
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


Record = tuple[str, int, object]


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
    svc: Service | None, endpoint_sets: Sequence[EndpointSet], zones: Sequence[str]
) -> list[Record]:
    """Every record a Service owns in every cluster zone; PTRs in the first zone only."""
    if svc is None:
        return []  # endpoints without their Service are not served
    out: list[Record] = []
    for i, zone in enumerate(zones):
        base = f"{svc.name}.{svc.namespace}.svc.{zone}"
        if svc.type == EXTERNAL_NAME:
            # Only the alias: CoreDNS answers no port/protocol names under an ExternalName Service.
            out.append((base, CNAME, svc.external_name))
        elif svc.type == CLUSTER_IP:
            out += _cluster_ip(svc, base, reverse=i == 0)
        elif svc.type == HEADLESS:
            out += _headless(endpoint_sets, base, reverse=i == 0)
    return out


def _cluster_ip(svc: Service, base: str, reverse: bool) -> list[Record]:
    out: list[Record] = [(base, address_type(ip), ip) for ip in svc.ips]
    if not svc.ips:
        out.append((base, EXISTS, ""))  # no address allocated yet: the name still exists
    out += [(_srv_name(p, base), SRV, SrvData(0, 100, p.port, base)) for p in svc.ports if p.name]
    if reverse:
        out += [(reverse_name(ip), PTR, base) for ip in svc.ips]
    return out


def _headless(endpoint_sets: Iterable[EndpointSet], base: str, reverse: bool) -> list[Record]:
    out: list[Record] = []
    seen: set[str] = set()
    srv: dict[str, list[tuple[int, str]]] = {}  # srv name -> (port, target)
    for eps in endpoint_sets:
        for subset in eps.subsets:
            named = [p for p in subset.ports if p.name]
            for ep in subset.endpoints:
                if ep.address in seen:
                    continue  # one address in several slices is answered once
                seen.add(ep.address)
                rtype = address_type(ep.address)
                target = f"{ep.hostname or endpoint_label(ep.address)}.{base}"
                out.append((base, rtype, ep.address))
                out.append((target, rtype, ep.address))
                if reverse:
                    out.append((reverse_name(ep.address), PTR, target))
                for p in named:
                    srv.setdefault(_srv_name(p, base), []).append((p.port, target))
    for name, entries in srv.items():
        weight = max(1, 100 // len(entries))
        out += [(name, SRV, SrvData(0, weight, port, target)) for port, target in entries]
    return out


def namespace_records(namespace: str, zones: Sequence[str]) -> list[Record]:
    """An existing namespace is an empty non-terminal even before it holds a Service."""
    return [(f"{namespace}.svc.{zone}", EXISTS, "") for zone in zones]


def zone_records(zone: str, primary: str, serial: int, ttl: int, ns_address: str | None) -> list[Record]:
    """The apex of a served zone (cluster or reverse): SOA, NS, and for cluster zones the fixed names."""
    ns_name = f"ns.dns.{primary}"
    out: list[Record] = [
        (zone, SOA, SoaData(ns_name, f"hostmaster.{primary}", serial, 7200, 1800, 86400, ttl)),
        (zone, NS, ns_name),
    ]
    if zone not in REVERSE_ZONES:
        out += [(f"dns-version.{zone}", TXT, SCHEMA_VERSION), (f"svc.{zone}", EXISTS, "")]
        if zone == primary and ns_address:
            out.append((ns_name, address_type(ns_address), ns_address))
    return out
