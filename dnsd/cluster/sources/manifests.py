"""Manifest files as a source: Kubernetes YAML/JSON -> model records, hot-reloaded.

Each file is one origin (``file:<path>``) and is applied whole: a file with any bad
document is reported (``file:document: reason``) and its last good version keeps
being served. A watcher thread rescans on every filesystem event, so edits, new
files and deleted files are served within the debounce interval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from dnsd.cluster.model import Object, from_object
from dnsd.cluster.store import Expect, Op, Replace, Synced

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
SYNC_ORIGIN = "file:"  # the first load of every file, as one unit for the sync state
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LoadResult:
    __slots__ = ("digest", "errors", "objects", "path")

    def __init__(self, path: Path, objects: tuple[Object, ...], errors: list[str], digest: str) -> None:
        self.path, self.objects, self.errors, self.digest = path, objects, errors, digest


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus every manifest below named directories, sorted."""
    files: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            files.add(path)
    return sorted(files)


def documents(doc: Any, where: str) -> Iterator[tuple[str, Any]]:
    """A document, or the items of a ``kind: List`` (``v1/List``, ``ServiceList``, ...)."""
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ValueError("items must be a list")
        item_kind = doc["kind"][: -len("List")] or None
        for i, item in enumerate(items):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {**item, "kind": item_kind}
            yield f"{where}: items[{i}]", item
    else:
        yield where, doc


def _json_documents(text: str) -> Iterator[Any]:
    """A .json file is one document; json is ~10x faster than a YAML loader on large lists."""
    try:
        yield json.loads(text)
    except json.JSONDecodeError as exc:
        raise yaml.YAMLError(f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None


def load_documents(text: str, name: str) -> Iterator[Any]:
    """One file's documents, parsed as they are read: JSON for a ``.json`` name, else YAML (``yaml.YAMLError``)."""
    return _json_documents(text) if name.endswith(".json") else yaml.load_all(text, Loader=_Loader)


def parse(text: str, name: str, pod_names: bool = False) -> tuple[list[Object], list[str]]:
    """Objects and ``name:document: reason`` errors of one file's text (documents count from 1)."""
    objects: list[Object] = []
    errors: list[str] = []
    index = 0
    docs = load_documents(text, name)
    try:
        for index, doc in enumerate(docs, start=1):
            if doc is None:
                continue  # an empty document (e.g. a trailing ---)
            try:
                for where, item in documents(doc, f"{name}:{index}"):
                    try:
                        obj = from_object(item, pod_names=pod_names)
                    except ValueError as exc:
                        errors.append(f"{where}: {_describe(item)}{exc}")
                        continue
                    if obj is None:
                        log.debug("%s: ignoring kind %r", where, item.get("kind") if isinstance(item, dict) else item)
                    else:
                        objects.append(obj)
            except ValueError as exc:
                errors.append(f"{name}:{index}: {exc}")
    except yaml.YAMLError as exc:
        if str(exc).startswith("invalid JSON"):
            errors.append(f"{name}:{index + 1}: {exc}")
            return objects, errors
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        errors.append(f"{name}:{index + 1}: invalid YAML/JSON{line}: {problem}")
    return objects, errors


def _describe(item: Any) -> str:
    if isinstance(item, dict) and isinstance(item.get("metadata"), dict):
        meta = item["metadata"]
        return f"{item.get('kind')} {meta.get('namespace') or 'default'}/{meta.get('name')}: "
    return ""


def load_file(path: Path, skip_digest: str | None = None, pod_names: bool = False) -> LoadResult | None:
    """Read and parse one file; None when its content still has ``skip_digest`` (nothing to do)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return LoadResult(path, (), [f"{path}:0: cannot read: {exc.strerror}"], "")
    digest = hashlib.sha1(data).hexdigest()
    if digest == skip_digest:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LoadResult(path, (), [f"{path}:0: not UTF-8 text: {exc.reason}"], digest)
    objects, errors = parse(text, str(path), pod_names)
    return LoadResult(path, tuple(objects), errors, digest)


class ManifestSource:
    def __init__(
        self, paths: Iterable[str | Path], emit: Callable[[list[Op]], None], debounce_ms: int = 50,
        pod_names: bool = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.pod_names = pod_names
        self.emit = emit
        self.debounce_ms = debounce_ms
        self._digests: dict[Path, str] = {}  # last good version of each file
        self._examined: dict[Path, str] = {}  # last version parsed, good or bad
        self.errors: dict[Path, list[str]] = {}  # current problems, for logs and metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the watcher and SIGHUP may rescan at once

    def load(self) -> None:
        """Load every file once, synchronously (before serving starts)."""
        for path in self.paths:
            if not path.exists():
                log.warning("%s: no such file or directory; serving nothing from it until it appears", path)
        self.emit([Expect(SYNC_ORIGIN)])
        self.rescan()
        self.emit([Synced(SYNC_ORIGIN)])

    def reload(self) -> None:
        """Re-read every file, even those whose bytes did not change (SIGHUP): their problems are logged again."""
        with self._lock:
            self._examined.clear()
        self.rescan()

    def rescan(self) -> list[str]:
        """Apply what changed in the files since the last scan; the files' current problems."""
        with self._lock:
            self._rescan()
            return [error for errors in self.errors.values() for error in errors]

    def _rescan(self) -> None:
        ops: list[Op] = []
        files = expand(self.paths)
        for gone in set(self._examined) - set(files):
            del self._examined[gone]
            self.errors.pop(gone, None)
            if self._digests.pop(gone, None) is not None:
                log.info("%s: removed; its records are withdrawn", gone)
                ops.append(Replace(f"file:{gone}", ()))
        for path in files:
            result = load_file(path, self._examined.get(path), self.pod_names)
            if result is None:
                continue  # the same bytes as last time: same objects, or same problems
            self._examined[path] = result.digest
            if result.errors:
                if self.errors.get(path) != result.errors:
                    for error in result.errors:
                        log.error("%s", error)
                    kept = "keeping its last good version" if path in self._digests else "nothing from it is served"
                    log.error("%s: not applied (%d problem(s)); %s", path, len(result.errors), kept)
                self.errors[path] = result.errors
                continue
            if self.errors.pop(path, None):
                log.info("%s: fixed", path)
            if self._digests.get(path) == result.digest:
                continue
            self._digests[path] = result.digest
            log.info("%s: loaded %d object(s)", path, len(result.objects))
            ops.append(Replace(f"file:{path}", result.objects))
        if ops:
            self.emit(ops)

    def start(self) -> None:
        """Watch the files and directories in a daemon thread."""
        self._thread = threading.Thread(target=self._watch, name="dnsd-manifests", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        from watchfiles import watch

        # Watch directories, not files: editors replace files by rename, which ends a file watch.
        # A path whose directory does not exist yet cannot be watched: rescan it every second.
        roots = sorted({p if p.is_dir() else p.parent for p in self.paths if p.is_dir() or p.parent.is_dir()})
        orphans = any(not (p.is_dir() or p.parent.is_dir()) for p in self.paths)
        if not roots:
            while not self._stop.wait(1.0):
                self.rescan()
            return
        try:
            # Every second without events too: a file read mid-write (not replaced atomically)
            # is broken until rechecked, and its last event may already have been consumed.
            # The first quiet second rescans too: a change between load() and the watch being set
            # up has no event (it cost a test a missed namespace under load).
            settled = False
            for changes in watch(
                *roots, debounce=self.debounce_ms, step=20, stop_event=self._stop, raise_interrupt=False,
                recursive=True, rust_timeout=1000, yield_on_timeout=True,
            ):
                if not changes and not (orphans or self.errors) and settled:
                    continue
                settled = True
                try:
                    self.rescan()
                except Exception:  # the watcher must outlive any surprise
                    log.exception("rescan failed")
        except Exception:
            log.exception("file watching stopped")
