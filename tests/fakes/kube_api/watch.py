"""WATCH: resume from a resourceVersion, initial events, streamed lists (watch-list), bookmarks,
selector transitions, 410 for compacted RVs, and server-side timeouts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import time

from aiohttp import web

from .requestlog import RequestRecord
from .resources import ADDED, DELETED, JSON, MODIFIED, ResourceType
from .selectors import Predicate, matches_selectors, parse_field_selector, parse_label_selector
from .status import HTTPStatus, status_body, truthy
from .store import Entry, Event, with_rv

_INITIAL_BATCH = 500  # initial events per write (~1.5 MB of EndpointSlices)


@dataclasses.dataclass(eq=False)
class Watcher:
    rt: ResourceType
    namespace: str | None
    labels: list[Predicate]
    fields: list[tuple[str, bool, str]]
    bookmarks: bool
    cursor: int  # RV up to which this watcher has seen everything
    queue: collections.deque[Event]
    wake: asyncio.Event
    record: RequestRecord
    request: web.Request
    dropped: bool = False

    def matches(self, e: Entry) -> bool:
        if self.namespace is not None and e.key[0] != self.namespace:
            return False
        return matches_selectors(e, self.labels, self.fields)


class Watching:
    """The watch handler of FakeKubeAPI (state in its ``__init__``; stalls from ``faults``)."""

    async def _watch(
        self, request: web.Request, record: RequestRecord, rt: ResourceType, ns: str | None, name: str | None
    ) -> web.StreamResponse:
        q = record.params
        try:
            labels = parse_label_selector(q.get("labelSelector"))
            fields = parse_field_selector(q.get("fieldSelector"))
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else self.watch_timeout
            rv_param = q.get("resourceVersion", "")
            start_rv = None if rv_param in ("", "0") else int(rv_param)
        except ValueError as exc:
            raise HTTPStatus(400, str(exc)) from None
        if name is not None:  # /watch/namespaces/ns/services/name form
            fields.append(("metadata.name", True, name))
        if self.ignore_watch_list:
            q = {k: v for k, v in q.items() if k not in ("sendInitialEvents", "resourceVersionMatch")}
        send_initial = truthy(q["sendInitialEvents"]) if "sendInitialEvents" in q else start_rv is None
        if "sendInitialEvents" in q:
            # As kube-apiserver validates watch-list requests.
            if not self.watch_list:
                raise HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: "
                                  "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled")
            if q.get("resourceVersionMatch") != "NotOlderThan":
                raise HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: "
                                  "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
            if not truthy(q.get("allowWatchBookmarks")):
                raise HTTPStatus(422, "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: Forbidden: "
                                  "sendInitialEvents requires allowWatchBookmarks=true")
        deadline = time.monotonic() + timeout if timeout else math.inf

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        w = Watcher(
            rt,
            ns,
            labels,
            fields,
            truthy(q.get("allowWatchBookmarks")),
            0,
            collections.deque(),
            asyncio.Event(),
            record,
            request,
        )
        initial: list[Entry] = []
        with self._lock:
            if not send_initial and start_rv is not None and start_rv < self._compacted_rv:
                expired = f"too old resource version: {start_rv} ({self._compacted_rv})"
            else:
                expired = None
                if send_initial:
                    initial = self._sorted_snapshot(rt).entries  # never changed once made: read outside the lock
                    w.cursor = self._rv
                else:
                    assert start_rv is not None
                    w.cursor = start_rv
                    w.queue.extend(ev for ev in self._backlog if ev.rv > start_rv and ev.entry.rt is rt)
                self._watchers.add(w)
        try:
            await resp.prepare(request)
            record.status = 200  # the status line is out: that's what the client sees
            if expired is not None:
                # Real apiserver: HTTP 200, then a single ERROR event, then EOF.
                record.end = "expired"
                await resp.write(json.dumps({"type": "ERROR", "object": status_body(410, expired)}).encode() + b"\n")
                await resp.write_eof()
                return resp
            # In pieces, each sent before the next is made, as the real server streams them: one write of
            # a million endpoints' events was ~4 copies of 350 MB before the first byte left.
            for i in range(0, len(initial), _INITIAL_BATCH):
                await resp.write(b"".join(b'{"type":"ADDED","object":' + e.full + b"}\n"
                                          for e in initial[i:i + _INITIAL_BATCH] if w.matches(e)))
            if send_initial and w.bookmarks and "sendInitialEvents" in q:
                await resp.write(self._bookmark(w, initial_end=True))
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                w.wake.clear()
                if w.dropped:
                    record.end = "dropped"
                    return resp
                now = time.monotonic()
                if self._stalled():
                    # Send nothing at all until unstalled (or dropped).
                    wait = None if self._stall_until == math.inf else self._stall_until - now  # type: ignore[operator]
                    await self._wait(w.wake, wait)
                    next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                if now >= deadline:
                    # Book-keeping first, so it is final once the client sees EOF.
                    self._unregister(w)
                    record.end, record.ended = "timeout", time.monotonic()
                    await resp.write_eof()  # clean end of the chunked stream
                    return resp
                out = self._drain(w)
                if w.bookmarks and now >= next_bookmark:
                    out.append(self._bookmark(w))
                    next_bookmark = now + self.bookmark_interval
                if out:
                    await resp.write(b"".join(out))
                wait = min(deadline, next_bookmark if w.bookmarks else math.inf) - time.monotonic()
                await self._wait(w.wake, None if wait == math.inf else max(0.0, wait))
        except ConnectionError:
            # Client went away while we were writing.
            record.end = record.end or ("dropped" if w.dropped else "client")
            return resp
        finally:
            self._unregister(w)

    def _unregister(self, w: Watcher) -> None:
        with self._lock:
            self._watchers.discard(w)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _drain(self, w: Watcher) -> list[bytes]:
        with self._lock:
            events = list(w.queue)
            w.queue.clear()
            # Everything up to the global RV has been queued (same lock), so a
            # bookmark may report it even if it belongs to another resource.
            w.cursor = max(w.cursor, self._rv)
        out = []
        for ev in events:
            line = self._event_line(w, ev)
            if line is not None:
                out.append(line)
        return out

    @staticmethod
    def _event_line(w: Watcher, ev: Event) -> bytes | None:
        prev_ok = ev.prev is not None and w.matches(ev.prev)
        if ev.type == DELETED:
            typ, entry = (DELETED, ev.entry) if prev_ok else (None, ev.entry)
        else:
            cur_ok = w.matches(ev.entry)
            if cur_ok:
                typ, entry = (MODIFIED if prev_ok else ADDED), ev.entry
            elif prev_ok:
                # Stopped matching the selector: the cacher sends the previous
                # state, stamped with this event's RV, as DELETED.
                assert ev.prev is not None
                typ, entry = DELETED, with_rv(ev.prev, ev.rv)
            else:
                typ = None
        if typ is None:
            return None
        return b'{"type":"' + typ.encode() + b'","object":' + entry.full + b"}\n"

    @staticmethod
    def _bookmark(w: Watcher, *, initial_end: bool = False) -> bytes:
        meta: JSON = {"resourceVersion": str(w.cursor)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": w.rt.kind, "apiVersion": w.rt.api_version, "metadata": meta}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"
