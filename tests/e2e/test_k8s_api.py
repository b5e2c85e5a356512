"""The fake API server (tests/fakes/kube_api) driven by the real ``kubernetes`` client.

Everything goes through a kubeconfig file and the official client (v37): the
typed CoreV1Api / DiscoveryV1Api, ``kubernetes.watch.Watch``, raw
``_preload_content=False`` calls (what dnsd uses).
These tests pin the behaviour dnsd relies on, so a dnsd test failure can be
trusted to be dnsd's fault and not the fake's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client import models
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_api import FakeKubeAPI, endpoint_slice, endpoints, namespace, service

BOOKMARK_INTERVAL = 0.2


@pytest.fixture
def kube(kubeconfig: str) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def v1(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def disc(kube: client.ApiClient) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(kube)


def in_thread(fn: Callable[[], Any], delay: float = 0.0) -> threading.Thread:
    """Run fn in a background thread (to mutate state while a watch is blocked reading)."""

    def run() -> None:
        time.sleep(delay)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def raw_lines(resp: urllib3.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Parse a raw watch response into events, one JSON object per line."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def client_for(server: FakeKubeAPI, tmp_path: Path) -> client.ApiClient:
    """An ApiClient for an extra server (the fixtures cover the default one)."""
    path = server.write_kubeconfig(tmp_path / f"kubeconfig-{server.port}")
    return config.new_client_from_config(config_file=str(path))


def names(items: list[Any]) -> list[str]:
    return [i.metadata.name for i in items]


# --------------------------------------------------------------------------- shapes


def test_builder_objects_match_the_client_models(api: FakeKubeAPI) -> None:
    # The client's pydantic models forbid unknown fields and are strict: every
    # builder's output, once stored, must round-trip through them unchanged.
    objs = [
        service("d", "plain", cluster_ip="10.0.0.5", labels={"app": "web"}, selector={"app": "web"}),
        service("d", "headless", cluster_ip=None),
        service("d", "ext", type="ExternalName", external_name="db.example.com", ports=()),
        service("d", "dual", cluster_ips=["10.0.0.6", "fd00::6"], ports=[("dns", 53, "UDP"), ("dns-tcp", 53)]),
        endpoint_slice(
            "d",
            "plain-abc",
            "plain",
            ["10.1.0.1", {"addresses": ["10.1.0.2"], "conditions": {"ready": False}, "hostname": "w-1"}],
        ),
        endpoint_slice(
            "d", "plain-v6", "plain", [{"addresses": ["fd00::1"], "conditions": {"ready": True}}], address_type="IPv6"
        ),
        endpoint_slice("d", "plain-empty", "plain"),
        endpoints("d", "plain", ["10.1.0.1", {"ip": "10.1.0.3", "hostname": "w-3"}], not_ready=["10.1.0.2"]),
        endpoints("d", "empty"),
        namespace("d"),
    ]
    model = {
        "Service": models.V1Service,
        "EndpointSlice": models.V1EndpointSlice,
        "Endpoints": models.V1Endpoints,
        "Namespace": models.V1Namespace,
    }
    for obj in objs:
        stored = api.create(obj)
        meta = stored["metadata"]
        assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and int(meta["resourceVersion"]) > 0
        dumped = model[obj["kind"]].model_validate(stored).model_dump(by_alias=True, exclude_none=True, mode="json")
        # An empty EndpointSlice has "endpoints": null, as Go marshals a nil slice.
        assert dumped == {k: v for k, v in stored.items() if v is not None}, obj["metadata"]["name"]
    assert api.get("Service", "d", "headless")["spec"]["clusterIP"] == "None"
    assert "clusterIP" not in api.get("Service", "d", "ext")["spec"]
    assert api.get("Service", "d", "dual")["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert api.get("Namespace", None, "d")["metadata"]["labels"] == {"kubernetes.io/metadata.name": "d"}


def test_typed_list_and_get_through_kubeconfig(api: FakeKubeAPI, v1: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    api.load(
        [
            namespace("default"),
            namespace("kube-system"),
            service("kube-system", "kube-dns", cluster_ip="10.0.0.10", ports=[("dns", 53, "UDP")]),
            service("default", "web", cluster_ip=None),
            endpoint_slice(
                "default", "web-x1", "web", [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}, "hostname": "web-0"}]
            ),
            endpoints("default", "web", ["10.1.0.1"]),
        ]
    )
    svcs = v1.list_service_for_all_namespaces()
    assert isinstance(svcs, models.V1ServiceList)
    assert [(s.metadata.namespace, s.metadata.name) for s in svcs.items] == [("default", "web"), ("kube-system", "kube-dns")]
    assert svcs.metadata.resource_version == str(api.resource_version)
    assert svcs.items[1].spec.ports[0].protocol == "UDP"
    assert names(v1.list_namespaced_service("kube-system").items) == ["kube-dns"]
    assert names(v1.list_namespace().items) == ["default", "kube-system"]
    assert v1.read_namespace("kube-system").status.phase == "Active"
    assert v1.read_namespaced_service("web", "default").spec.cluster_ip == "None"
    assert v1.list_namespaced_endpoints("default").items[0].subsets[0].addresses[0].ip == "10.1.0.1"
    slices = disc.list_endpoint_slice_for_all_namespaces()
    assert slices.items[0].endpoints[0].hostname == "web-0"
    assert slices.items[0].metadata.labels["kubernetes.io/service-name"] == "web"
    assert names(disc.list_namespaced_endpoint_slice("default").items) == ["web-x1"]
    assert disc.read_namespaced_endpoint_slice("web-x1", "default").address_type == "IPv4"
    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_service("nope", "default")
    assert exc.value.status == 404 and json.loads(exc.value.body)["reason"] == "NotFound"
    # Real server: items in a list lack kind/apiVersion; watch events/GET carry them.
    raw = json.loads(v1.list_service_for_all_namespaces_with_http_info(_preload_content=False).read())
    assert raw["kind"] == "ServiceList" and raw["apiVersion"] == "v1" and "kind" not in raw["items"][0]


def test_discovery_endpoints(kube: client.ApiClient) -> None:
    assert client.VersionApi(kube).get_code().minor == "37"
    assert client.CoreApi(kube).get_api_versions().versions == ["v1"]
    assert client.ApisApi(kube).get_api_versions().groups[0].name == "discovery.k8s.io"
    assert {r.name for r in client.CoreV1Api(kube).get_api_resources().resources} == {"services", "endpoints", "namespaces"}
    assert [r.name for r in client.DiscoveryV1Api(kube).get_api_resources().resources] == ["endpointslices"]


def test_auth_is_required(api: FakeKubeAPI) -> None:
    cfg = client.Configuration(host=api.url)
    with client.ApiClient(cfg) as anonymous, pytest.raises(ApiException) as exc:
        client.CoreV1Api(anonymous).list_namespace()
    assert exc.value.status == 401


# ------------------------------------------------------------------------ lists


def test_paginated_list_is_a_consistent_snapshot(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.load([service("ns", f"s{i}") for i in range(5)])
    first = v1.list_service_for_all_namespaces(limit=2)
    assert names(first.items) == ["s0", "s1"]
    assert first.metadata.var_continue and first.metadata.remaining_item_count == 3
    # Changes between pages must not show up in the paginated result.
    api.create(service("ns", "s15"))
    api.delete("Service", "ns", "s3")
    api.update(service("ns", "s2", cluster_ip="10.9.9.9"))
    second = v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata.var_continue)
    third = v1.list_service_for_all_namespaces(limit=2, _continue=second.metadata.var_continue)
    assert names(second.items) == ["s2", "s3"] and second.items[0].spec.cluster_ip == "10.0.0.1"
    assert names(third.items) == ["s4"] and not third.metadata.var_continue
    assert first.metadata.resource_version == second.metadata.resource_version == third.metadata.resource_version
    # A fresh list sees the new state.
    fresh = v1.list_service_for_all_namespaces()
    assert names(fresh.items) == ["s0", "s1", "s15", "s2", "s4"]
    assert int(fresh.metadata.resource_version) == int(first.metadata.resource_version) + 3
    logged = [r.params for r in api.requests("list", "services")]
    assert logged[0] == {"limit": "2"} and logged[1]["continue"] == first.metadata.var_continue


def test_namespaced_pagination(api: FakeKubeAPI, disc: client.DiscoveryV1Api) -> None:
    api.load([endpoint_slice(ns, f"e{i}", "svc") for ns in ("a", "b", "c") for i in range(3)])
    seen, token = [], None
    while True:
        page = disc.list_namespaced_endpoint_slice("b", limit=2, _continue=token)
        seen += [(s.metadata.namespace, s.metadata.name) for s in page.items]
        token = page.metadata.var_continue
        if not token:
            break
    assert seen == [("b", "e0"), ("b", "e1"), ("b", "e2")]


def test_expired_continue_token_gives_410(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.load([service("ns", f"s{i}") for i in range(5)])
    first = v1.list_namespaced_service("ns", limit=2)
    api.restart()  # compaction: the snapshot behind the token is gone
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_service("ns", limit=2, _continue=first.metadata.var_continue)
    assert exc.value.status == 410
    status = json.loads(exc.value.body)
    assert (status["kind"], status["status"], status["reason"], status["code"]) == ("Status", "Failure", "Expired", 410)
    # Like the real server it offers an inconsistent continuation from the latest state.
    rest = v1.list_namespaced_service("ns", _continue=status["metadata"]["continue"])
    assert names(rest.items) == ["s2", "s3", "s4"]


def test_continue_token_expires_with_the_backlog(tmp_path: Path) -> None:
    with FakeKubeAPI(backlog=3) as small, client_for(small, tmp_path) as kc:
        small.load([service("ns", f"s{i}") for i in range(4)])
        api = client.CoreV1Api(kc)
        first = api.list_service_for_all_namespaces(limit=1)
        for i in range(3):  # the backlog still holds events newer than the snapshot
            small.apply(service("other", "churn", cluster_ip=f"10.0.1.{i}"))
        assert names(api.list_service_for_all_namespaces(limit=1, _continue=first.metadata.var_continue).items) == ["s1"]
        small.apply(service("other", "churn", cluster_ip="10.0.2.0"))  # ...now it does not
        with pytest.raises(ApiException) as exc:
            api.list_service_for_all_namespaces(limit=1, _continue=first.metadata.var_continue)
        assert exc.value.status == 410


def test_label_and_field_selectors(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.load(
        [
            service("a", "web", labels={"app": "web", "tier": "front"}),
            service("a", "db", labels={"app": "db", "tier": "back"}),
            service("b", "web", labels={"app": "web"}),
            service("b", "bare"),
        ]
    )

    def sel(**kw: str) -> list[str]:
        return [f"{s.metadata.namespace}/{s.metadata.name}" for s in v1.list_service_for_all_namespaces(**kw).items]

    assert sel(label_selector="app=web") == ["a/web", "b/web"]
    assert sel(label_selector="app==web,tier=front") == ["a/web"]
    assert sel(label_selector="app!=web") == ["a/db", "b/bare"]  # != matches objects without the label
    assert sel(label_selector="tier") == ["a/db", "a/web"]
    assert sel(label_selector="!tier") == ["b/bare", "b/web"]
    assert sel(label_selector="tier in (front, back),app notin (db)") == ["a/web"]
    assert sel(field_selector="metadata.name=web") == ["a/web", "b/web"]
    assert sel(field_selector="metadata.namespace=b,metadata.name!=web") == ["b/bare"]
    # Selector + limit: pages hold up to `limit` matches.
    page = v1.list_service_for_all_namespaces(label_selector="app=web", limit=1)
    assert names(page.items) == ["web"] and page.metadata.var_continue and page.metadata.remaining_item_count is None
    with pytest.raises(ApiException) as exc:
        v1.list_service_for_all_namespaces(label_selector="app in (web")
    assert exc.value.status == 400


# ---------------------------------------------------------------------- watches


def test_watch_from_list_rv_sees_changes_in_order(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.create(service("ns", "old"))
    listed = v1.list_namespaced_service("ns")
    api.create(service("ns", "a"))  # before the watch starts: replayed from the backlog
    api.create(service("other", "elsewhere"))  # other namespace: filtered out

    def later() -> None:
        api.wait_for_watches(1, "services")
        api.update(service("ns", "a", cluster_ip="10.0.0.2"))
        api.apply(service("ns", "a", cluster_ip="10.0.0.2"))  # no-op: no event
        api.create(endpoint_slice("ns", "a-1", "a"))  # other resource
        api.delete("Service", "ns", "a")

    in_thread(later)
    w = watch.Watch()
    events = []
    for ev in w.stream(v1.list_namespaced_service, "ns", resource_version=listed.metadata.resource_version, timeout_seconds=5):
        events.append(ev)
        if len(events) == 3:
            w.stop()
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert isinstance(events[0]["object"], models.V1Service)
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert int(listed.metadata.resource_version) < rvs[0] < rvs[1] < rvs[2] == api.resource_version
    assert events[1]["object"].spec.cluster_ip == "10.0.0.2"
    # DELETED carries the last state, stamped with the deletion RV.
    assert events[2]["raw_object"]["spec"]["clusterIP"] == "10.0.0.2"
    assert w.resource_version == str(rvs[2])


def test_watch_without_rv_starts_with_synthetic_added(api: FakeKubeAPI, disc: client.DiscoveryV1Api) -> None:
    api.load([endpoint_slice("ns", f"e{i}", "svc") for i in range(3)])
    for rv in (None, "0"):
        kw = {} if rv is None else {"resource_version": rv}
        w = watch.Watch()
        got = []
        for ev in w.stream(disc.list_endpoint_slice_for_all_namespaces, timeout_seconds=5, **kw):
            got.append((ev["type"], ev["object"].metadata.name))
            if len(got) == 3:
                w.stop()
        assert got == [("ADDED", "e0"), ("ADDED", "e1"), ("ADDED", "e2")]
        assert isinstance(ev["object"], models.V1EndpointSlice)


def test_send_initial_events_ends_with_annotated_bookmark(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.load([namespace("a"), namespace("b")])
    resp = v1.list_namespace_with_http_info(
        watch=True,
        send_initial_events=True,
        resource_version_match="NotOlderThan",
        allow_watch_bookmarks=True,
        timeout_seconds=5,
        _preload_content=False,
    )
    lines = raw_lines(resp)
    events = [next(lines) for _ in range(3)]
    resp.close()
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_bookmarks_arrive_and_track_the_global_rv(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    start = str(api.resource_version)
    in_thread(lambda: api.create(endpoint_slice("ns", "e", "svc")), delay=BOOKMARK_INTERVAL * 1.5)
    w = watch.Watch()
    seen = []
    t0 = time.monotonic()
    for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=start, allow_watch_bookmarks=True, timeout_seconds=5):
        seen.append((ev["type"], ev["raw_object"]["metadata"]["resourceVersion"], time.monotonic() - t0))
        if len(seen) == 3:
            w.stop()
    assert [t for t, _, _ in seen] == ["BOOKMARK"] * 3
    assert seen[0][2] >= BOOKMARK_INTERVAL * 0.8 and seen[2][2] < BOOKMARK_INTERVAL * 3 + 0.5  # every ~0.2 s
    # A change to another resource still advances the bookmark RV (like the real cacher).
    assert seen[0][1] == start and seen[-1][1] == str(api.resource_version) != start
    assert w.resource_version == seen[-1][1]  # the client resumes from bookmarks too
    # Without allowWatchBookmarks: nothing at all (so the client's read timeout fires).
    resp = v1.list_service_for_all_namespaces(
        watch=True, resource_version=start, _preload_content=False, _request_timeout=(1, 0.5)
    )
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        next(raw_lines(resp))


def test_bookmark_object_shape(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    resp = v1.list_service_for_all_namespaces_with_http_info(
        watch=True, resource_version="0", allow_watch_bookmarks=True, timeout_seconds=1, _preload_content=False
    )
    first = next(raw_lines(resp))
    resp.release_conn()
    assert first == {"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "0"}}}


def test_timeout_seconds_closes_the_stream_cleanly(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    t0 = time.monotonic()
    events = list(watch.Watch().stream(v1.list_namespace, timeout_seconds=1))
    elapsed = time.monotonic() - t0
    assert events == [] and 0.9 <= elapsed < 2.0
    (rec,) = api.requests("watch", "namespaces")
    assert rec.end == "timeout" and rec.params["timeoutSeconds"] == "1" and rec.params["watch"] == "true"
    assert api.open_watches() == 0


def test_watch_from_compacted_rv_gets_410_error_event(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.create(service("ns", "a"))
    old = str(api.resource_version)  # not "0": that means "from the current state"
    api.create(service("ns", "b"))
    api.restart()
    # Raw: HTTP 200, then a single ERROR event carrying a 410 Status, then EOF.
    resp = v1.list_service_for_all_namespaces_with_http_info(watch=True, resource_version=old, _preload_content=False)
    assert resp.status == 200
    events = list(raw_lines(resp))
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    assert status["message"] == f"too old resource version: {old} ({api.resource_version})"
    # Watch.stream: with timeout_seconds it raises at once ...
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(v1.list_service_for_all_namespaces, resource_version=old, timeout_seconds=5))
    assert exc.value.status == 410
    # ... without, the client retries once with the same RV before raising.
    api.reset_stats()
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(v1.list_service_for_all_namespaces, resource_version=old))
    assert exc.value.status == 410 and api.request_count("watch", "services") == 2


def test_watch_falls_off_a_small_backlog(tmp_path: Path) -> None:
    with FakeKubeAPI(backlog=5) as small, client_for(small, tmp_path) as kc:
        v1 = client.CoreV1Api(kc)
        small.create(namespace("ns"))
        start = str(small.resource_version)
        small.load([service("ns", f"s{i}") for i in range(5)])
        ok = v1.list_service_for_all_namespaces_with_http_info(watch=True, resource_version=start, _preload_content=False)
        events = raw_lines(ok)
        assert [next(events)["type"] for _ in range(5)] == ["ADDED"] * 5
        ok.close()
        small.create(service("ns", "one-more"))  # evicts the event right after `start`
        gone = v1.list_service_for_all_namespaces_with_http_info(watch=True, resource_version=start, _preload_content=False)
        assert [e["object"]["code"] for e in raw_lines(gone)] == [410]


def test_watch_label_selector_transitions(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.create(namespace("ns"))
    start = str(api.resource_version)
    api.create(service("ns", "x"))  # not matching: invisible
    api.update(service("ns", "x", labels={"app": "web"}))  # starts matching: ADDED
    api.update(service("ns", "x", labels={"app": "web"}, cluster_ip="10.0.0.9"))  # MODIFIED
    api.update(service("ns", "x", labels={"app": "db"}, cluster_ip="10.0.0.9"))  # stops matching: DELETED
    api.update(service("ns", "x", labels={"app": "db"}, cluster_ip="10.0.0.8"))  # invisible
    api.create(service("ns", "y", labels={"app": "web"}))
    api.delete("Service", "ns", "y")
    w = watch.Watch()
    got = []
    for ev in w.stream(v1.list_namespaced_service, "ns", label_selector="app=web", resource_version=start, timeout_seconds=5):
        got.append(
            (
                ev["type"],
                ev["object"].metadata.name,
                ev["object"].metadata.labels["app"],
                int(ev["object"].metadata.resource_version),
            )
        )
        if len(got) == 5:
            w.stop()
    base = int(start)
    assert got == [
        ("ADDED", "x", "web", base + 2),
        ("MODIFIED", "x", "web", base + 3),
        ("DELETED", "x", "web", base + 4),  # previous state, stamped with the event RV
        ("ADDED", "y", "web", base + 6),
        ("DELETED", "y", "web", base + 7),
    ]


def test_raw_watch_with_preload_content_false(api: FakeKubeAPI, v1: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    api.create(service("ns", "a"))
    resp = v1.list_namespaced_service_with_http_info(
        "ns", watch=True, allow_watch_bookmarks=True, timeout_seconds=1, _preload_content=False, _request_timeout=(2, 2)
    )
    assert isinstance(resp, urllib3.HTTPResponse) and resp.status == 200
    assert resp.headers["Content-Type"] == "application/json" and resp.headers["Transfer-Encoding"] == "chunked"
    in_thread(lambda: api.create(service("ns", "b")), delay=0.05)
    lines = raw_lines(resp)
    types = [(e["type"], e["object"]["kind"], e["object"]["metadata"].get("name")) for e in (next(lines) for _ in range(3))]
    resp.close()
    assert types == [("ADDED", "Service", "a"), ("ADDED", "Service", "b"), ("BOOKMARK", "Service", None)]
    # The same works for discovery.k8s.io (plain method + _preload_content=False).
    api.create(endpoint_slice("ns", "a-1", "a"))
    resp = disc.list_endpoint_slice_for_all_namespaces(watch=True, _preload_content=False)
    assert next(raw_lines(resp))["object"]["kind"] == "EndpointSlice"
    resp.close()
    rec = api.requests("watch", "services")[0]
    assert rec.params == {"allowWatchBookmarks": "true", "timeoutSeconds": "1", "watch": "true"}
    assert rec.headers["Authorization"] == "Bearer fake-token"


# ------------------------------------------------------------------------- faults


def test_fail_next_gives_api_exception(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.fail_next(2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            v1.list_namespace()
        assert exc.value.status == 500
        assert json.loads(exc.value.body) == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "injected failure (500)",
            "reason": "InternalError",
            "code": 500,
        }
    assert v1.list_namespace().items == []
    # Targeted: only the next watch on services fails; it fails before streaming.
    api.fail_next(1, 429, verb="watch", resource="services")
    assert v1.list_service_for_all_namespaces().items == []
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(v1.list_service_for_all_namespaces, timeout_seconds=1))
    assert exc.value.status == 429
    # With Retry-After, urllib3 itself retries 429/503 transparently.
    api.fail_next(1, 503, retry_after=0)
    assert v1.list_namespace().items == []
    assert [r.status for r in api.requests("list", "namespaces")][-2:] == [503, 200]


def test_drop_watches_ends_the_stream(api: FakeKubeAPI, v1: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    api.create(service("ns", "a"))

    def drop() -> None:
        api.wait_for_watches(1, "services")
        time.sleep(0.1)
        assert api.drop_watches() == 1

    in_thread(drop)
    got = []
    # No timeout_seconds: the client would reconnect after a clean EOF, but an
    # abrupt close surfaces as urllib3's ProtocolError.
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for ev in watch.Watch().stream(v1.list_service_for_all_namespaces, allow_watch_bookmarks=True):
            got.append(ev["type"])
    assert got[0] == "ADDED" and api.requests("watch")[0].end == "dropped"
    api.wait_for_watches(0)
    # The server keeps serving afterwards.
    assert names(disc.list_endpoint_slice_for_all_namespaces().items) == []


def test_open_watch_count_per_resource(api: FakeKubeAPI, v1: client.CoreV1Api, disc: client.DiscoveryV1Api) -> None:
    streams = [
        v1.list_service_for_all_namespaces(watch=True, _preload_content=False),
        v1.list_namespaced_service("ns", watch=True, _preload_content=False),
        disc.list_endpoint_slice_for_all_namespaces(watch=True, _preload_content=False),
    ]
    api.wait_until(lambda: api.open_watch_counts() == {"services": 2, "endpointslices": 1})
    assert api.open_watches("Service") == 2 and api.open_watches() == 3
    assert api.request_counts() == {("watch", "services"): 2, ("watch", "endpointslices"): 1}
    streams[0].close()  # client hangs up: the server notices and forgets the watch
    api.wait_until(lambda: api.open_watches("services") == 1)
    assert api.requests("watch", "services")[0].end == "client"
    for s in streams[1:]:
        s.close()
    api.wait_for_watches(0)


def test_stall_freezes_watches_and_hangs_requests(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    w = watch.Watch()
    t0 = time.monotonic()
    got = []
    # _request_timeout (connect, read) is a per-socket-read timeout for a
    # streamed watch: bookmarks keep it alive, a stall trips it.
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        for ev in w.stream(v1.list_namespace, allow_watch_bookmarks=True, timeout_seconds=30, _request_timeout=(1, 0.5)):
            got.append((ev["type"], time.monotonic() - t0))
            if len(got) == 3:
                api.stall(True)
    assert [t for t, _ in got] == ["BOOKMARK"] * 3 and time.monotonic() - t0 < 2
    # New requests hang until unstalled.
    in_thread(api.unstall, delay=0.3)
    t1 = time.monotonic()
    assert v1.list_namespace(_request_timeout=3).items == []
    assert time.monotonic() - t1 >= 0.25
    # A timed stall ends by itself; for a plain GET urllib3 retries read
    # timeouts (3 retries), so a short stall is survived transparently.
    api.stall(0.4)
    assert v1.list_namespace(_request_timeout=0.25).items == []
    api.wait_until(lambda: [r.end for r in api.requests("list", "namespaces")][-2:] == ["client", "ok"])


def test_down_refuses_connections_then_up_serves_same_port_and_objects(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.create(service("ns", "a"))
    listed = v1.list_service_for_all_namespaces()
    port = api.port
    api.down()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as exc:
        v1.list_service_for_all_namespaces()
    assert isinstance(exc.value.reason, urllib3.exceptions.NewConnectionError)
    assert "Connection refused" in str(exc.value.reason)
    api.create(service("ns", "b"))  # changes while down are kept
    api.up()
    assert api.port == port
    assert names(v1.list_service_for_all_namespaces().items) == ["a", "b"]
    # No compaction happened: a watch can resume from the old RV.
    w = watch.Watch()
    for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=listed.metadata.resource_version, timeout_seconds=5):
        assert (ev["type"], ev["object"].metadata.name) == ("ADDED", "b")
        w.stop()


def test_down_ends_open_watches_and_hung_requests(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    resp = v1.list_namespace(watch=True, allow_watch_bookmarks=True, _preload_content=False)
    api.wait_for_watches(1)
    api.stall(True)
    errors: list[Exception] = []

    def hung_list() -> None:
        try:
            v1.list_namespace(_request_timeout=5)
        except Exception as exc:
            errors.append(exc)

    t = in_thread(hung_list)
    api.wait_until(lambda: api.request_count("list") == 1)
    api.down()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(raw_lines(resp))
    t.join(5)
    assert api.open_watches() == 0 and [r.end for r in api.requests()] == ["dropped", "dropped"]
    assert len(errors) == 1  # the hung request's connection was cut (urllib3 retries then hit "refused")
    api.up()
    api.unstall()
    assert v1.list_namespace().items == []


def test_restart_drops_connections_and_invalidates_rvs(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    api.create(service("ns", "a"))
    listed = v1.list_service_for_all_namespaces()

    def restart() -> None:
        api.wait_for_watches(1)
        api.restart()

    in_thread(restart)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(
            watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=listed.metadata.resource_version, timeout_seconds=10
            )
        )
    with pytest.raises(ApiException) as exc:
        list(
            watch.Watch().stream(
                v1.list_service_for_all_namespaces, resource_version=listed.metadata.resource_version, timeout_seconds=10
            )
        )
    assert exc.value.status == 410
    relisted = v1.list_service_for_all_namespaces()
    assert names(relisted.items) == ["a"] and int(relisted.metadata.resource_version) > int(listed.metadata.resource_version)
    assert relisted.items[0].metadata.resource_version == listed.items[0].metadata.resource_version  # objects kept


# ------------------------------------------------------------------------ scale


def test_bulk_load_is_fast(api: FakeKubeAPI, v1: client.CoreV1Api) -> None:
    svcs = [service(f"ns{i % 50}", f"svc{i}", cluster_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(10_000)]
    slices = [
        endpoint_slice(f"ns{i % 50}", f"svc{i}-x", f"svc{i}", [f"10.200.{i // 256 % 256}.{i % 256}"]) for i in range(10_000)
    ]
    t0 = time.monotonic()
    rv = api.load(svcs + slices)
    load_time = time.monotonic() - t0
    assert rv == 20_000 and load_time < 5
    t0 = time.monotonic()
    total, token = 0, None
    while True:  # raw pages, as a client that skips model deserialization would
        page = json.loads(v1.list_service_for_all_namespaces(limit=2_000, _continue=token, _preload_content=False).read())
        total += len(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert total == 10_000 and time.monotonic() - t0 < 3
