"""URL routing (verb, resource, namespace, name) and the discovery documents (``/api``, ``/apis``, ``/version``)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from .resources import BY_GROUP, RESOURCE_TYPES, ResourceType
from .status import HTTPStatus, json_response, truthy


def route(path: str, query: Mapping[str, str]) -> tuple[str, str, ResourceType | None, str | None, str | None]:
    """(verb, resource-or-path, rt, namespace, name); raises 404 for unknown paths."""
    parts = [p for p in path.split("/") if p]
    path = "/" + "/".join(parts)  # the client asks for "/api/", "/version/"...
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:3] == ["apis", "discovery.k8s.io", "v1"]:
        group, rest = "discovery.k8s.io", parts[3:]
    elif parts[:3] == ["apis", "multicluster.x-k8s.io", "v1alpha1"]:
        group, rest = "multicluster.x-k8s.io", parts[3:]
    else:
        return "discovery", path, None, None, None
    watch = truthy(query.get("watch"))
    if rest[:1] == ["watch"]:  # deprecated /watch/ path prefix
        watch, rest = True, rest[1:]
    if not rest:
        return "discovery", path, None, None, None
    ns: str | None = None
    name: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, res, name = rest[1], rest[2], (rest[3] if len(rest) == 4 else None)
        if len(rest) > 4:
            raise HTTPStatus(404, "the server could not find the requested resource")
    elif len(rest) <= 2:
        res, name = rest[0], (rest[1] if len(rest) == 2 else None)
    else:
        raise HTTPStatus(404, "the server could not find the requested resource")
    rt = BY_GROUP.get((group, res))
    if rt is None or (ns is not None and not rt.namespaced) or (name is not None and rt.namespaced and ns is None):
        raise HTTPStatus(404, "the server could not find the requested resource")
    if name is not None and not watch:
        return "get", rt.resource, rt, ns, name
    return ("watch" if watch else "list"), rt.resource, rt, ns, name


def discovery(path: str, host: str, port: int) -> web.StreamResponse:
    path = "/" + path.strip("/")
    if path in ("/healthz", "/livez", "/readyz"):
        return web.Response(text="ok", content_type="text/plain")
    if path == "/version":
        return json_response(
            {
                "major": "1",
                "minor": "37",
                "gitVersion": "v1.37.0-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )
    if path == "/api":
        return json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}],
            }
        )
    group_version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
    group = {"name": "discovery.k8s.io", "versions": [group_version], "preferredVersion": group_version}
    if path == "/apis":
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]})
    if path == "/apis/discovery.k8s.io":
        return json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
    for gv, grp in (("/api/v1", ""), ("/apis/discovery.k8s.io/v1", "discovery.k8s.io")):
        if path == gv:
            return json_response(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": gv.removeprefix("/api/").removeprefix("/apis/"),
                    "resources": [
                        {
                            "name": rt.resource,
                            "singularName": rt.singular,
                            "namespaced": rt.namespaced,
                            "kind": rt.kind,
                            "verbs": ["get", "list", "watch"],
                        }
                        for rt in RESOURCE_TYPES
                        if rt.group == grp
                    ],
                }
            )
    raise HTTPStatus(404, "the server could not find the requested resource")
