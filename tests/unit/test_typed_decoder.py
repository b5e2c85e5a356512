"""The typed watch-event decoder (msgspec) against the dict path (json + from_object): for any event,
well-formed or not, the same record or the same refusal, the same key and resourceVersion."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd.cluster.model import ENDPOINT_SLICE, SERVICE, from_object
from dnsd.cluster.sources.kubernetes.client import Gone, each_item
from dnsd.cluster.sources.kubernetes.held import Held, raw_key
from dnsd.cluster.sources.kubernetes.stream import parse_event
from dnsd.cluster.sources.kubernetes.typed import event_decoder, page_reader, to_record
from tests.fakes.kube_api import endpoint_slice, service

pytestmark = pytest.mark.unit


def _service() -> dict[str, Any]:
    obj = service("shop", "web", cluster_ip="10.0.0.10", ports=[("http", 80, "TCP"), ("dns", 53, "UDP")])
    obj["metadata"].update(resourceVersion="7", annotations={"a": "b"}, managedFields=[{"manager": "x"}])
    obj["spec"]["externalIPs"] = ["192.0.2.1"]
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}, {"hostname": "lb.example"}]}}
    return obj


def _slice() -> dict[str, Any]:
    obj = endpoint_slice("shop", "web-abcde", "web", endpoints=[
        {"addresses": ["10.1.0.1"], "conditions": {"ready": True}, "hostname": "web-0",
         "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"}, "nodeName": "n1", "zone": "z"},
        {"addresses": ["10.1.0.2", "10.1.0.3"], "conditions": {"ready": False},
         "targetRef": {"kind": "Pod", "name": "web-1"}},
        {"addresses": ["fd00::1"], "targetRef": {"name": "web.2"}},
    ], ports=[("http", 8080, "TCP"), ("", 53, "UDP")])
    obj["metadata"]["resourceVersion"] = "8"
    return obj


# Where a mutation lands (keys, and list indexes), and what it puts there: values of every JSON type,
# right and wrong ones.
SERVICE_PATHS = [
    (), ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "resourceVersion"),
    ("spec",), ("spec", "type"), ("spec", "ports"), ("spec", "ports", 0), ("spec", "ports", 0, "port"),
    ("spec", "ports", 0, "name"), ("spec", "ports", 0, "protocol"), ("spec", "ports", 1, "protocol"),
    ("spec", "ports", 1, "name"), ("spec", "clusterIP"), ("spec", "clusterIPs"),
    ("spec", "clusterIPs", 0), ("spec", "externalIPs"), ("spec", "externalName"), ("spec", "publishNotReadyAddresses"),
    ("status",), ("status", "loadBalancer"), ("status", "loadBalancer", "ingress"), ("type",), ("object",),
]
SLICE_PATHS = [
    (), ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "labels"),
    ("metadata", "labels", "kubernetes.io/service-name"), ("metadata", "labels", "multicluster.kubernetes.io/service-name"),
    ("metadata", "labels", "multicluster.kubernetes.io/source-cluster"), ("addressType",), ("endpoints",),
    ("endpoints", 0), ("endpoints", 1, "addresses"), ("endpoints", 1, "addresses", 0), ("endpoints", 0, "conditions"),
    ("endpoints", 1, "conditions", "ready"), ("endpoints", 0, "hostname"), ("endpoints", 2, "hostname"),
    ("endpoints", 1, "targetRef"), ("endpoints", 1, "targetRef", "name"), ("endpoints", 1, "targetRef", "kind"),
    ("ports",), ("ports", 0), ("ports", 0, "port"), ("ports", 0, "protocol"), ("ports", 1, "protocol"),
    ("ports", 1, "name"), ("metadata", "resourceVersion"), ("type",), ("object",),
]
VALUES = st.sampled_from([
    None, "", 0, 1, -1, 70000, True, False, 1.5, 2**70, "x", "None", "Pod", "ExternalName", "ClusterIP", "IPv4", "IPv6",
    "FQDN", "TCP", "10.0.0.1", "010.0.0.1", "fd00::0:1", "web", "Web", "a.b", "ADDED", "DELETED", "BOOKMARK", "ERROR",
    [], [None], ["10.0.0.2"], [1], ["x"], [{}], [{"port": 80}], [["TCP"]], {}, {"ready": False}, {"TCP": 1},
    {"name": "x", "port": 1},
    {"ip": "10.0.0.3"}, {"kubernetes.io/service-name": "web"},
]) | st.just("DELETE")


def mutate(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    path = ("object", *path) if path[:1] != ("type",) and path[:1] != ("object",) else path
    parent: Any = event
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return event  # an earlier mutation took that part away
    last = path[-1] if path else None
    if last is None:
        return event
    try:
        if value == "DELETE":
            del parent[last]
        else:
            parent[last] = value
    except (KeyError, IndexError, TypeError):
        pass
    return event


def outcome(decode: Any, convert: Any, line: bytes, kind: str, pod_names: bool) -> tuple[Any, ...]:
    """What a reflector gets from one line: the event's fields and its record, or the error's type and text."""
    try:
        event = decode(line)
    except (ValueError, Gone) as exc:  # anything else would be a crash: the reflector's list fails, and again
        return ("event refused", type(exc).__name__, str(exc))
    head = (event.type, event.rv, event.initial_end, raw_key(kind, event.object))
    try:
        return (*head, convert(event.object))
    except ValueError as exc:  # the object's refusal, with its reason; any other exception is a crash
        return (*head, "refused", str(exc))


def through_held(line: bytes, kind: str, pod_names: bool) -> None:
    """A listed object and a watched one, whatever they hold, are kept or refused: never a crash."""
    try:
        event = event_decoder(kind, pod_names)(line)
    except (ValueError, Gone):
        return
    held = Held("k8s:test", kind, pod_names)
    listing = held.listing()
    held.add(event.object, listing)
    held.commit(listing)
    held.upsert(event.object)


def same_both_ways(event: dict[str, Any], kind: str, pod_names: bool, *, raw: bytes | None = None) -> None:
    line = raw if raw is not None else json.dumps(event).encode()
    by_dict = outcome(parse_event, lambda o: from_object(o, kind, pod_names=pod_names), line, kind, pod_names)
    typed = outcome(event_decoder(kind, pod_names), lambda o: to_record(o, kind, pod_names), line, kind, pod_names)
    assert typed == by_dict
    through_held(line, kind, pod_names)


@pytest.mark.parametrize("pod_names", [False, True])
@pytest.mark.parametrize("kind", [SERVICE, ENDPOINT_SLICE])
def test_well_formed_objects_give_the_same_records(kind: str, pod_names: bool) -> None:
    obj = _service() if kind == SERVICE else _slice()
    for event_type in ("ADDED", "MODIFIED", "DELETED"):
        same_both_ways({"type": event_type, "object": obj}, kind, pod_names)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([SERVICE, ENDPOINT_SLICE]), pod_names=st.booleans(), data=st.data())
def test_any_mutation_gives_the_same_record_or_the_same_refusal(kind: str, pod_names: bool, data: st.DataObject) -> None:
    paths = SERVICE_PATHS if kind == SERVICE else SLICE_PATHS
    event: dict[str, Any] = {"type": "ADDED", "object": _service() if kind == SERVICE else _slice()}
    for path, value in data.draw(st.lists(st.tuples(st.sampled_from(paths), VALUES), min_size=1, max_size=3)):
        event = mutate(event, path, value)
    same_both_ways(event, kind, pod_names)


@pytest.mark.parametrize("raw", [
    b'{"type":"ADDED","object":{"metadata":{"name":"a","name":"web","resourceVersion":"9"},'
    b'"spec":{"clusterIP":"10.0.0.1"}}}',  # a repeated key: the last one counts, as with json
    b'{"type":"ADDED","object":{"metadata":{"name":"web"},"spec":{"ports":[{"port":NaN}]}}}',  # json only
    b'{"type":"ADDED","object":{"metadata":{"name":"web"},"spec":{"clusterIP":"\\ud800"}}}',  # a lone surrogate
    b'{"type":"ADDED","object":[]}', b"{not json", b"[]", b'{"type":"ADDED"}',
    b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old"}}',
    b'{"type":"ERROR","object":{"kind":"Status","code":500,"reason":"sad"}}',
    b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"12",'
    b'"annotations":{"k8s.io/initial-events-end":"true"}}}}',
    b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"12","annotations":[]}}}',
    b'{"type":"ADDED","object":{"metadata":null,"spec":{}}}',
])
@pytest.mark.parametrize("kind", [SERVICE, ENDPOINT_SLICE])
def test_odd_lines_read_as_json_reads_them(raw: bytes, kind: str) -> None:
    same_both_ways({}, kind, False, raw=raw)


def test_a_gone_event_is_gone_through_the_typed_decoder() -> None:
    with pytest.raises(Gone, match="too old"):
        event_decoder(SERVICE)(b'{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old"}}')


def test_a_bad_object_through_the_typed_decoder_is_reported_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A slice whose endpoint has a field of an unexpected type and one with a bad address, among good ones:
    each bad one is named with its reason, and nothing else is lost."""
    decode = event_decoder(ENDPOINT_SLICE)
    good = _slice()
    odd_type = mutate({"type": "ADDED", "object": _slice()}, ("endpoints", 0, "conditions"), "yes")["object"]
    odd_type["metadata"]["name"] = "web-oddty"
    bad_ip = mutate({"type": "ADDED", "object": _slice()}, ("endpoints", 1, "addresses", 0), "10.1.0.999")["object"]
    bad_ip["metadata"]["name"] = "web-badip"
    held = Held("k8s:endpointslices", ENDPOINT_SLICE)
    listing = held.listing()
    caplog.set_level(logging.WARNING)
    for obj in (odd_type, good, bad_ip):
        held.add(decode(json.dumps({"type": "ADDED", "object": obj}).encode()).object, listing)
    _ops, changes = held.commit(listing)
    assert changes == 1 and list(held.objects) == [(ENDPOINT_SLICE, "shop", "web-abcde")]
    assert "invalid EndpointSlice shop/web-badip: bad IP address '10.1.0.999'" in caplog.text
    # conditions "yes" does not fit the typed decoder: the dict path reads the object, and refuses it.
    assert "invalid EndpointSlice shop/web-oddty: endpoints[0].conditions must be a mapping" in caplog.text


@pytest.mark.parametrize("typed", [True, False])
def test_unhashable_fields_are_refused_by_name_and_the_rest_kept(typed: bool, caplog: pytest.LogCaptureFixture) -> None:
    """A port whose protocol is a list or a mapping, and a namespace that is a list, once crashed the
    conversion (TypeError: unhashable), which failed the whole list and retried it for ever."""
    def bad(name: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        obj = mutate({"type": "ADDED", "object": _service()}, path, value)["object"]
        obj["metadata"]["name"] = name
        return obj

    objs = [bad("proto-list", ("spec", "ports", 0, "protocol"), ["TCP"]), _service(),
            bad("proto-map", ("spec", "ports", 1, "protocol"), {"UDP": 1}), bad("ns-list", ("metadata", "namespace"), ["x"])]
    held = Held("k8s:services", SERVICE)
    listing = held.listing()
    caplog.set_level(logging.WARNING)
    for obj in objs:
        line = json.dumps({"type": "ADDED", "object": obj}).encode()
        held.add((event_decoder(SERVICE) if typed else parse_event)(line).object, listing)
    _ops, changes = held.commit(listing)
    assert changes == 1 and list(held.objects) == [(SERVICE, "shop", "web")]
    assert "invalid Service shop/proto-list: spec.ports[0]: protocol ['TCP'] is not TCP, UDP or SCTP" in caplog.text
    assert "invalid Service shop/proto-map: spec.ports[1]: protocol {'UDP': 1} is not TCP, UDP or SCTP" in caplog.text
    assert "skipping an invalid Service named 'ns-list': metadata.namespace ['x'] is not a valid DNS label" in caplog.text


def page_outcome(read: Any, body: bytes, kind: str, pod_names: bool) -> tuple[Any, ...]:
    """What a reflector gets from one list page: each item's key and record (or refusal), and the page's metadata."""
    items: list[Any] = []

    def handle(item: Any) -> None:
        try:
            record: Any = to_record(item, kind, pod_names)
        except ValueError as exc:
            record = ("refused", str(exc))
        items.append((raw_key(kind, item), record))

    try:
        page = read(body, handle)
    except ValueError as exc:
        return ("page refused", type(exc).__name__, str(exc), items)
    return (page.get("metadata"), items)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from([SERVICE, ENDPOINT_SLICE]), pod_names=st.booleans(), data=st.data())
def test_a_list_page_gives_the_same_records_typed_or_not(kind: str, pod_names: bool, data: st.DataObject) -> None:
    """The paginated list's pages (a server without streamed lists): page_reader against each_item."""
    paths = SERVICE_PATHS if kind == SERVICE else SLICE_PATHS
    items = []
    for n in range(data.draw(st.integers(0, 3))):
        event: dict[str, Any] = {"type": "ADDED", "object": _service() if kind == SERVICE else _slice()}
        event["object"]["metadata"]["name"] = f"web-{n}"
        for path, value in data.draw(st.lists(st.tuples(st.sampled_from(paths), VALUES), max_size=2)):
            if path[:1] not in (("type",), ("object",)):
                event = mutate(event, path, value)
        items.append(event.get("object"))  # mutate() may have taken it away: a null item
    page: Any = {"kind": "List", "metadata": {"resourceVersion": "5", "continue": "x"}, "items": items}
    page = data.draw(st.sampled_from([page, {**page, "items": None}, {"metadata": None}, [], {**page, "items": {}}]))
    body = json.dumps(page).encode()
    typed = page_outcome(page_reader(kind, pod_names), body, kind, pod_names)
    assert typed == page_outcome(each_item, body, kind, pod_names)


@pytest.mark.parametrize("body", [
    b'{"metadata":{"resourceVersion":"3"},"items":[{"metadata":{"name":"web"},"spec":{"ports":[{"port":NaN}]}}]}',
    b'{"metadata":{"resourceVersion":"3"},"items":[null,{"metadata":{"name":"web"}}]}', b"{not json", b"",
    b'{"items":[]} trailing', b'{"metadata":{"resourceVersion":"3"},"items":[{"metadata":{"name":"\\ud800"}}]}',
])
def test_odd_pages_read_as_each_item_reads_them(body: bytes) -> None:
    for kind in (SERVICE, ENDPOINT_SLICE):
        assert page_outcome(page_reader(kind), body, kind, False) == page_outcome(each_item, body, kind, False)
