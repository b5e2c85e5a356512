"""Fault switches: dropped watches, stalls, injected HTTP errors, restarts (compaction), token
rotation, and the server going down and up on the same port."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from pathlib import Path

from .requestlog import RequestRecord
from .resources import ResourceType, resource_key, resource_type
from .status import HTTPStatus


@dataclasses.dataclass
class Fault:
    remaining: int
    status: int
    verb: str | None
    resource: str | None
    retry_after: int | None


class FaultSwitches:
    """The faults of FakeKubeAPI: public switches (called from other threads) and their loop side."""

    def drop_watches(self, resource: str | None = None) -> int:
        """Abort open watch streams mid-stream (no final chunk); returns how many."""
        rt = resource_type(resource) if resource else None
        return self._call(self._adrop_watches(rt))

    def stall(self, seconds: float | bool = True) -> None:
        """Freeze: open watches send nothing (no bookmarks either) and new
        requests hang. ``True`` = until ``stall(False)``; a number = that long."""
        if seconds is False or seconds == 0:
            until = None
        elif seconds is True:
            until = math.inf
        else:
            until = time.monotonic() + float(seconds)
        self._call(self._aset_stall(until))

    def unstall(self) -> None:
        self.stall(False)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        verb: str | None = None,
        resource: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next n requests (optionally only of that verb/resource) get
        ``status`` with a Status body. With ``retry_after`` a Retry-After
        header is added (urllib3 then retries 429/503 on its own)."""
        res = resource_key(resource)
        with self._lock:
            self._faults.append(Fault(n, status, verb, res, retry_after))

    def restart(self) -> None:
        """Simulate an apiserver restart + etcd compaction: drop every
        connection; every previously issued RV / continue token gets 410."""
        with self._lock:
            self._rv += 1
            self._compacted_rv = self._rv
            self._backlog.clear()
            self._snapshots.clear()
        self._call(self._adrop_connections())

    def rotate_token(self, token: str | None = None, token_file: str | Path | None = None) -> str:
        """A new bearer token (written to ``token_file`` too); the old one gets 401 from now on."""
        with self._lock:
            self.token = token or f"token-{uuid.uuid4().hex[:12]}"
        if token_file is not None:
            tmp = Path(f"{token_file}.tmp")
            tmp.write_text(self.token)
            tmp.replace(token_file)  # atomically, as the kubelet does
        return self.token

    def down(self, *, refuse: bool = True) -> None:
        """Stop serving and drop every connection. ``refuse``: connections are refused;
        else they are accepted and reset at once (counted in ``reset_connections``)."""
        self._call(self._adown())
        if not refuse:
            self._call(self._alisten_reset())

    def up(self) -> None:
        """Listen again on the same port, with the same objects."""
        self._call(self._alisten())

    # -------------------------------------------------------------- loop side

    async def _adrop_watches(self, rt: ResourceType | None) -> int:
        with self._lock:
            victims = [w for w in self._watchers if rt is None or w.rt is rt]
        for w in victims:
            self._unregister(w)  # counts are final when drop_watches() returns
            w.dropped = True
            w.record.end = "dropped"
            if w.request.transport is not None:
                w.request.transport.abort()
            w.wake.set()
        await asyncio.sleep(0)
        return len(victims)

    async def _adrop_connections(self) -> None:
        # Watches first (so they are recorded as "dropped"), then everything
        # else incl. idle keep-alive connections and hung requests.
        await self._adrop_watches(None)
        assert self._runner is not None
        if self._runner.server is not None:
            for handler in self._runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        tasks = list(self._tasks)
        for task, record in list(self._tasks.items()):
            record.end = record.end or "dropped"
            task.cancel()
        if tasks:  # hung/in-flight requests: done (and logged) when we return
            await asyncio.wait(tasks, timeout=1.0)
        for _ in range(3):  # let connection_lost callbacks run
            await asyncio.sleep(0)

    async def _aset_stall(self, until: float | None) -> None:
        self._set_stall(until)

    def _set_stall(self, until: float | None) -> None:
        assert self._unstalled is not None and self._loop is not None
        self._stall_until = until
        if until is None:
            self._unstalled.set()
            with self._lock:
                watchers = list(self._watchers)
            for w in watchers:
                w.wake.set()
            return
        self._unstalled.clear()
        if until != math.inf:
            self._loop.call_later(max(0.0, until - time.monotonic()), self._expire_stall, until)

    def _expire_stall(self, until: float) -> None:
        if self._stall_until == until:  # not superseded by a later stall()
            self._set_stall(None)

    def _stalled(self) -> bool:
        return self._stall_until is not None and time.monotonic() < self._stall_until

    async def _wait_unstalled(self) -> None:
        assert self._unstalled is not None
        while self._stalled():
            await self._unstalled.wait()

    def _maybe_fail(self, record: RequestRecord) -> None:
        with self._lock:
            for f in self._faults:
                if f.remaining > 0 and f.verb in (None, record.verb) and f.resource in (None, record.resource):
                    f.remaining -= 1
                    self._faults = [x for x in self._faults if x.remaining > 0]
                    if f.retry_after is None:
                        raise HTTPStatus(f.status, f"injected failure ({f.status})")
                    raise HTTPStatus(
                        f.status,
                        f"injected failure ({f.status})",
                        {"retryAfterSeconds": f.retry_after},
                        headers={"Retry-After": str(f.retry_after)},
                    )
