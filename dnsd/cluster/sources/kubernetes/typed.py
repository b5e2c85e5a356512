"""Watch events of Services and EndpointSlices decoded straight into what dnsd reads of them.

A streamed list of a big cluster is mostly what DNS never reads (targetRef, nodeName, zone,
managedFields, annotations...). ``json.loads`` builds every key of it as a dict; msgspec decodes into
Structs that declare only the fields dnsd reads and skips the rest, and the conversion then reads
attributes (docs/performance.md, typed decoding). The converters call the model's own builders
(``build_service``, ``build_slice``, ``endpoint_hostname``), so a record is what ``from_object``
makes of the same object.

The fast path only takes what it can read exactly as ``from_object`` would: anything the Structs
refuse (a field of an unexpected type, NaN, an ERROR or BOOKMARK event...) is decoded again with
``json`` and goes through the dict path, with its checks and its wording. Leaves are ``Any`` where
the model validates them, so a bad value reaches the same check with the same message.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from dnsd.cluster.addresses import packed_ip
from dnsd.cluster.model import (
    ENDPOINT_SLICE,
    SERVICE,
    Object,
    Subset,
    build_service,
    build_slice,
    endpoint_hostname,
    from_object,
    object_names,
    packed_subset,
)
from dnsd.cluster.ports import convert_ports_json
from dnsd.cluster.sources.kubernetes.client import each_item
from dnsd.cluster.sources.kubernetes.stream import Event, parse_event

# Not tracked by the collector (gc=False): they hold no cycles, and a list decoded at once would
# otherwise make every collection walk them.


_NULL = msgspec.Raw(b"null")


class _Meta(msgspec.Struct, gc=False):
    name: Any = None
    namespace: Any = None
    labels: Any = None
    resourceVersion: Any = None


class _Spec(msgspec.Struct, gc=False):
    type: Any = None
    ports: Any = None
    publishNotReadyAddresses: Any = None
    externalName: Any = None
    clusterIP: Any = None
    clusterIPs: Any = None
    externalIPs: Any = None


class _Service(msgspec.Struct, gc=False):
    metadata: _Meta | None = None
    spec: _Spec | None = None
    status: Any = None


class _Conditions(msgspec.Struct, gc=False):
    ready: Any = None


class _Endpoint(msgspec.Struct, gc=False):
    addresses: Any = None
    conditions: _Conditions | None = None
    hostname: Any = None


class _NamedEndpoint(_Endpoint, gc=False):
    """With --endpoint-pod-names only: otherwise each endpoint's targetRef is not even decoded."""

    targetRef: Any = None


class _Slice(msgspec.Struct, gc=False):
    metadata: _Meta | None = None
    addressType: Any = "IPv4"  # absent means IPv4; null is not
    endpoints: list[_Endpoint] | None = None
    ports: msgspec.Raw = _NULL  # their JSON text: converted once per distinct text (convert_ports_json)


class _NamedSlice(_Slice, gc=False):
    endpoints: list[_NamedEndpoint] | None = None  # type: ignore[assignment]


class _ServiceEvent(msgspec.Struct, gc=False):
    type: Any
    object: _Service


class _SliceEvent(msgspec.Struct, gc=False):
    type: Any
    object: _Slice


class _NamedSliceEvent(msgspec.Struct, gc=False):
    type: Any
    object: _NamedSlice


class _RawPage(msgspec.Struct, gc=False):
    """A list page: its items kept as their JSON text, each decoded in turn (as each_item does)."""

    metadata: Any = None
    items: list[msgspec.Raw] | None = None


Typed = _Service | _Slice
_OBJECT_EVENTS = ("ADDED", "MODIFIED", "DELETED")  # a tuple: a type may be unhashable (a list)


def event_decoder(kind: str, pod_names: bool = False) -> Callable[[bytes], Event]:
    """``parse_event`` for ``kind``: typed for Services and EndpointSlices, else it is parse_event."""
    if kind == SERVICE:
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_ServiceEvent)
    elif kind == ENDPOINT_SLICE:
        decoder = msgspec.json.Decoder(_NamedSliceEvent if pod_names else _SliceEvent)
    else:
        return parse_event
    decode = decoder.decode

    def typed_event(line: bytes) -> Event:
        try:
            event = decode(line)
        except msgspec.DecodeError:
            return parse_event(line)  # not for the fast path: json says what is wrong, if anything
        meta = event.object.metadata
        if event.type not in _OBJECT_EVENTS or meta is None:
            return parse_event(line)  # ERROR, BOOKMARK, an object without metadata: rare, read as before
        return Event(event.type, event.object, meta.resourceVersion, False)

    return typed_event


def page_reader(kind: str, pod_names: bool = False) -> Callable[[bytes, Callable[[Any], None]], dict[str, Any]]:
    """``each_item`` for ``kind``: a page's items typed for Services and EndpointSlices (a real API
    server without streamed lists pages them, the same JSON). A page
    msgspec refuses is read by each_item, which says what is wrong with it; an item the Structs
    refuse is read by ``json``, as the watch events are."""
    if kind == SERVICE:
        item_type: type = _Service
    elif kind == ENDPOINT_SLICE:
        item_type = _NamedSlice if pod_names else _Slice
    else:
        return each_item
    decode_page = msgspec.json.Decoder(_RawPage).decode
    decode_item: Callable[[Any], Any] = msgspec.json.Decoder(item_type).decode

    def typed_page(body: bytes, handle: Callable[[Any], None]) -> dict[str, Any]:
        try:
            page = decode_page(body)
        except msgspec.DecodeError:
            return each_item(body, handle)
        for raw in page.items or ():
            try:
                item = decode_item(raw)
            except msgspec.DecodeError:
                item = json.loads(bytes(raw))  # a JSON value (the page parsed): json reads it as each_item would
            handle(item)
            del item
        return {"metadata": page.metadata}  # what a reflector reads of a page

    return typed_page


def to_record(item: Any, kind: str, pod_names: bool = False) -> Object | None:
    """The model record of a decoded object, typed or a dict; ValueError for a bad one."""
    if item.__class__ is _Service:
        return _service(item)
    if isinstance(item, _Slice):
        return _slice(item, pod_names)
    return from_object(item, kind, pod_names=pod_names)


def names(item: Any) -> tuple[Any, Any] | None:
    """(metadata.name, metadata.namespace) of a typed object, unchecked; None for a dict."""
    if isinstance(item, _Service | _Slice):
        meta = item.metadata
        return (None, None) if meta is None else (meta.name, meta.namespace)
    return None


def _service(obj: _Service) -> Object:
    meta = obj.metadata
    if meta is None:
        raise ValueError(f"{SERVICE} without metadata")
    namespace, name = object_names(SERVICE, meta.name, meta.namespace)
    spec = obj.spec or _NO_SPEC
    return build_service(namespace, name, spec.type, spec.ports, spec.publishNotReadyAddresses, spec.externalName,
                         spec.clusterIPs, spec.clusterIP, spec.externalIPs, obj.status)


_NO_SPEC = _Spec()


def _slice(obj: _Slice, pod_names: bool) -> Object | None:
    meta = obj.metadata
    if meta is None:
        raise ValueError(f"{ENDPOINT_SLICE} without metadata")
    namespace, name = object_names(ENDPOINT_SLICE, meta.name, meta.namespace)
    return build_slice(namespace, name, meta.labels, obj.addressType, lambda: _subset(obj, pod_names))


def _subset(obj: _Slice, pod_names: bool) -> Subset:
    """model._slice_subset's loop over typed endpoints: the same checks in the same order. A slice whose
    endpoints all have IPv4 addresses and no hostname (most) is read by _plain first."""
    if not pod_names:
        plain = _plain(obj.endpoints or ())
        if plain is not None:
            return packed_subset(convert_ports_json(bytes(obj.ports), "ports", allow_null=True), *plain, None)
    ready_addresses: list[bytes] = []
    ready_hostnames: list[str] = []
    other_addresses: list[bytes] = []
    other_hostnames: list[str] = []
    named = False
    for i, ep in enumerate(obj.endpoints or ()):
        hostname = ep.hostname
        if pod_names or hostname:
            hostname = endpoint_hostname(hostname, getattr(ep, "targetRef", None), f"endpoints[{i}]", pod_names)
        else:
            hostname = ""
        addresses = ep.addresses or []
        if not addresses:
            raise ValueError(f"endpoints[{i}] has no addresses")
        if addresses.__class__ is not list:
            raise ValueError(f"endpoints[{i}].addresses must be a list")
        # ready unset means unknown: treated as ready; serving/terminating do not matter.
        conditions = ep.conditions
        if conditions is None or conditions.ready is not False:
            into, hostnames = ready_addresses, ready_hostnames
        else:
            into, hostnames = other_addresses, other_hostnames
        for address in addresses:
            into.append(packed_ip(address))
            hostnames.append(hostname)
        named = named or bool(hostname)
    ports = convert_ports_json(bytes(obj.ports), "ports", allow_null=True)
    return packed_subset(ports, ready_addresses, other_addresses, (*ready_hostnames, *other_hostnames) if named else None)


_pton4 = partial(socket.inet_pton, socket.AF_INET)


def _plain(endpoints: list[_Endpoint] | tuple[()]) -> tuple[list[bytes], list[bytes]] | None:
    """The packed addresses of endpoints, ready and not, when each has a list of IPv4 addresses and no hostname
    (each address packed in C: no Python call per address); None at the first that has not: _subset reads them
    all, with every check."""
    ready: list[bytes] = []
    other: list[bytes] = []
    try:
        for ep in endpoints:
            addresses = ep.addresses
            if ep.hostname or addresses.__class__ is not list or not addresses:
                return None
            conditions = ep.conditions
            (ready if conditions is None or conditions.ready is not False else other).extend(map(_pton4, addresses))
    except (OSError, TypeError):  # not IPv4 text: IPv6, or not an address at all
        return None
    return ready, other


__all__ = ["Typed", "event_decoder", "names", "page_reader", "to_record"]
