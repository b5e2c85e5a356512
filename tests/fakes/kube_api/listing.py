"""GET and LIST: one object, or a page of a consistent snapshot (``limit``/``continue``, 410 for stale tokens)."""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Mapping

from aiohttp import web

from .resources import JSON, Key, ResourceType
from .selectors import matches_selectors, parse_field_selector, parse_label_selector
from .status import HTTPStatus, json_response


def encode_continue(rv: int, key: Key) -> str:
    # Same shape as the real token: base64(JSON{v, rv, start}).
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, name = raw["start"].rstrip("\x00").split("/", 1)
        return int(raw["rv"]), (ns, name)
    except Exception as exc:
        raise HTTPStatus(400, f"continue key is not valid: {exc}") from None


class Listing:
    """The get and list handlers of FakeKubeAPI (state in its ``__init__``)."""

    def _get(self, rt: ResourceType, ns: str | None, name: str) -> web.Response:
        with self._lock:
            e = self._store[rt.resource].get((ns or "", name))
        if e is None:
            raise HTTPStatus(404, f'{rt.resource} "{name}" not found', {"name": name, "kind": rt.resource})
        return json_response(e.full)

    def _list(self, rt: ResourceType, ns: str | None, q: Mapping[str, str]) -> web.Response:
        try:
            labels = parse_label_selector(q.get("labelSelector"))
            fields = parse_field_selector(q.get("fieldSelector"))
            limit = int(q.get("limit") or 0)
        except ValueError as exc:
            raise HTTPStatus(400, str(exc)) from None
        token = q.get("continue")
        with self._lock:
            if token:
                snap_rv, start = decode_continue(token)
                snap = self._snapshots.get((rt.resource, snap_rv)) if snap_rv >= self._compacted_rv else None
                if snap_rv == -1:  # "inconsistent" token handed out with a 410: latest state
                    snap_rv, snap = self._rv, self._sorted_snapshot(rt)
                if snap is None:
                    raise HTTPStatus(
                        410,
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter, or use the continue "
                        "token in this response to retrieve the remainder of the results. Continuing with "
                        "the provided token results in an inconsistent list - objects that were created, "
                        "modified, or deleted between the time the first chunk was returned and now may "
                        "show up in the list.",
                        # Like the real server: a token to continue inconsistently.
                        metadata={"continue": encode_continue(-1, start)},
                    )
                idx = bisect.bisect_right(snap.keys, start)
            else:
                snap_rv, snap, idx = self._rv, self._sorted_snapshot(rt), 0
            lo, hi = 0, len(snap.keys)
            if ns is not None:
                lo = bisect.bisect_left(snap.keys, (ns,))
                hi = bisect.bisect_left(snap.keys, (ns + "\x00",))
            i = max(idx, lo)
            items: list[bytes] = []
            while i < hi and (not limit or len(items) < limit):
                e = snap.entries[i]
                if matches_selectors(e, labels, fields):
                    items.append(e.body)
                i += 1
            meta: JSON = {"resourceVersion": str(snap_rv)}
            if limit and i < hi:
                meta["continue"] = encode_continue(snap_rv, snap.keys[i - 1])
                if not labels and not fields:
                    meta["remainingItemCount"] = hi - i
                self._snapshots[(rt.resource, snap_rv)] = snap
                self._snapshots.move_to_end((rt.resource, snap_rv))
                while len(self._snapshots) > self._max_snapshots:
                    self._snapshots.popitem(last=False)
        head = json.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta}, separators=(",", ":"))
        body = head[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"
        return json_response(body)
