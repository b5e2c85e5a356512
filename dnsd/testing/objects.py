"""The cluster objects a DnsServer holds: what ``apply`` takes, validated as dnsd validates them, and
the one file per object in the server's manifest directory that dnsd reads."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

import yaml

from dnsd.cluster.model import ENDPOINT_SLICE, KINDS, NAMESPACE, SERVICE_NAME_LABEL, from_object
from dnsd.cluster.sources.manifests import documents, expand, load_documents

# What ``apply`` takes: a path (see as_path), YAML or JSON text, an object, or a list of objects.
Source = Union[str, "os.PathLike[str]", Mapping[str, Any], Sequence[Mapping[str, Any]]]
Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for a Namespace


def as_path(source: object) -> Path | None:
    """``source`` as a path, when it names one: a PathLike, or a str holding no newline and no ':'
    (every YAML or JSON object holds a ':') and not starting with '{' or '['; None for text and objects."""
    if isinstance(source, os.PathLike):
        return Path(source)
    text = source.strip() if isinstance(source, str) else ""
    if text and "\n" not in text and ":" not in text and text[0] not in "{[":
        return Path(text)
    return None


def describe(key: Key) -> str:
    """``Service shop/web``, ``Namespace shop``."""
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def objects(source: Source, pod_names: bool = False) -> list[tuple[Key, dict[str, Any]]]:
    """Every object of ``source`` that dnsd reads, validated, with its key; later ones win over earlier
    ones with the same key. ``ValueError`` naming the object (and its file and document) with the
    reason for the first one dnsd cannot use; kinds dnsd does not read (Deployment, ConfigMap, ...)
    are left out, as ``dnsd serve --manifests`` leaves them. ``pod_names``: as --endpoint-pod-names."""
    found: dict[Key, dict[str, Any]] = {}
    for where, item in _items(source):
        key = _check(item, where, pod_names)
        if key is not None:
            found.pop(key, None)
            found[key] = item
    return list(found.items())


def _items(source: Source) -> Iterator[tuple[str, Any]]:
    """(where, document) for each document of ``source``, the items of a ``kind: List`` included."""
    path = as_path(source)
    if path is not None:
        files = expand([path])
        if not files:
            raise FileNotFoundError(f"{path}: no such file, or no *.yaml/*.yml/*.json below it")
        for file in files:
            yield from _texts(file.read_text(encoding="utf-8"), str(file))
    elif isinstance(source, str):
        yield from _texts(source, "document")
    elif isinstance(source, Mapping):
        yield from documents(dict(source), "")
    elif isinstance(source, Sequence):
        for i, item in enumerate(source):
            yield from documents(dict(item) if isinstance(item, Mapping) else item, f"[{i}]")
    else:
        raise TypeError(f"cannot apply a {type(source).__name__}: give a path, YAML text, a dict or a list of dicts")


def _texts(text: str, name: str) -> Iterator[tuple[str, Any]]:
    index = 0
    try:
        for index, doc in enumerate(load_documents(text, name), start=1):
            if doc is not None:  # an empty document (a trailing ---)
                yield from documents(doc, f"{name}:{index}" if name != "document" else f"document {index}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{name}:{index + 1}: invalid YAML/JSON{line}: {problem}") from None


def _check(item: Any, where: str, pod_names: bool) -> Key | None:
    """The key of an object dnsd reads; None for another kind; ValueError for one it cannot use."""
    prefix = f"{where}: " if where else ""
    if not isinstance(item, dict):
        raise ValueError(f"{prefix}not a Kubernetes object: a {type(item).__name__}, not a mapping")
    kind = item.get("kind")
    if kind not in KINDS:
        if not kind:
            raise ValueError(f"{prefix}not a Kubernetes object: no kind")
        close = difflib.get_close_matches(str(kind), KINDS, n=1, cutoff=0.7)
        close = close or [k for k in KINDS if k.lower() == str(kind).lower()]
        if close:
            raise ValueError(f"{prefix}kind {kind!r} is not one dnsd reads: did you mean {close[0]}?")
        return None
    meta = item.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = str(meta.get("name") or "")
    key = (kind, "" if kind == NAMESPACE else str(meta.get("namespace") or "default"), name)
    try:
        obj = from_object(item, pod_names=pod_names)
    except ValueError as exc:
        raise ValueError(f"{prefix}{describe(key)}: {exc}") from None
    if obj is None:  # an EndpointSlice no Service's name refers to
        assert kind == ENDPOINT_SLICE
        raise ValueError(f"{prefix}{describe(key)}: dnsd serves no record of it: an EndpointSlice needs the label "
                         f"{SERVICE_NAME_LABEL} and addressType IPv4 or IPv6")
    return key


class ObjectFiles:
    """One JSON file per object in ``directory``, written atomically (a temporary name dnsd ignores,
    then a rename), so dnsd's watcher never reads half a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.held: dict[Key, Path] = {}

    def write(self, key: Key, obj: dict[str, Any]) -> None:
        path = self.held.get(key) or self.directory / _file_name(key)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(obj, default=str), encoding="utf-8")  # YAML dates are datetimes
        os.replace(partial, path)
        self.held[key] = path

    def remove(self, key: Key) -> None:
        """KeyError naming the object when it is not held."""
        path = self.held.pop(key, None)
        if path is None:
            raise KeyError(f"{describe(key)} is not in the cluster")
        path.unlink(missing_ok=True)

    def clear(self) -> None:
        for path in self.held.values():
            path.unlink(missing_ok=True)
        self.held.clear()


def _file_name(key: Key) -> str:
    """Readable, and unique: EndpointSlice names may hold any character, and differ only in case."""
    readable = ".".join(quote(part or "_", safe="") for part in key).lower()[:120]
    return f"{readable}.{hashlib.sha1('/'.join(key).encode()).hexdigest()[:10]}.json"
