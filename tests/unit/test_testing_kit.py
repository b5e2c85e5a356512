"""dnsd.testing's pure parts: options to flags, the names a pod's lookup tries, objects checked and filed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dnsd.testing.lookup import Lookup, search_list
from dnsd.testing.objects import ObjectFiles, as_path, objects
from dnsd.testing.options import serve_flags


def test_options_become_flags() -> None:
    assert serve_flags({"workers": 2, "autopath": True, "no_loadbalance": False, "ttl": None,
                        "namespace": ["a", "b"], "autopath_search": ("x.org", "y.org"), "pods": "disabled"}) == [
        "--workers", "2", "--autopath", "--namespace", "a", "--namespace", "b",
        "--autopath-search", "x.org", "y.org", "--pods", "disabled"]


@pytest.mark.parametrize(("options", "message"), [
    ({"wrokers": 1}, "did you mean 'workers'"),
    ({"zzz": 1}, "see dnsd serve --help"),
    ({"http_address": "x"}, "picks a free loopback port"),
    ({"workers": True}, "takes a value"),
    ({"ttl": [1, 2]}, "takes one value"),
])
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        serve_flags(options)


def test_candidates_follow_ndots_5() -> None:
    lookup = Lookup("127.0.0.1", 53, ["cluster.local"], search_list("shop", "cluster.local"), socket.getaddrinfo)
    assert lookup._candidates("web") == ["web.shop.svc.cluster.local", "web.svc.cluster.local", "web.cluster.local", "web"]
    assert lookup._candidates("a.b.c.d.e.f")[0] == "a.b.c.d.e.f"
    assert lookup._candidates("web.shop.svc.cluster.local.") == ["web.shop.svc.cluster.local"]
    assert lookup._ours("web.shop.svc.cluster.local") and not lookup._ours("web") and not lookup._ours("xcluster.local")


def test_paths_text_and_objects() -> None:
    assert as_path("manifests/a.yaml") == Path("manifests/a.yaml")
    assert as_path("kind: Service") is None and as_path("{}") is None and as_path({"kind": "x"}) is None
    svc = {"kind": "Service", "metadata": {"name": "web"}, "spec": {"clusterIP": "10.0.0.1"}}
    later = {**svc, "spec": {"clusterIP": "10.0.0.2"}}
    assert objects([svc, later, {"kind": "ConfigMap", "metadata": {"name": "c"}}]) == [(("Service", "default", "web"), later)]
    assert objects({"kind": "Namespace", "metadata": {"name": "shop"}})[0][0] == ("Namespace", "", "shop")


def test_object_files_are_one_per_object(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    files.write(("EndpointSlice", "default", "Web/1"), {"a": 1})
    files.write(("EndpointSlice", "default", "web/1"), {"a": 2})
    files.write(("EndpointSlice", "default", "web/1"), {"a": 3})
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json"]
    files.remove(("EndpointSlice", "default", "Web/1"))
    with pytest.raises(KeyError, match="EndpointSlice default/Web/1 is not in the cluster"):
        files.remove(("EndpointSlice", "default", "Web/1"))
    files.clear()
    assert list(tmp_path.iterdir()) == []
