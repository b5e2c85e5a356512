"""One reflector's requests as raw responses that stop() can cut short, and the watch events
they stream (newline-delimited JSON, applied as they arrive)."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import urllib3

from dnsd.cluster.sources.kubernetes.client import Gone

_READ_SIZE = 1 << 22  # read1() returns what has arrived, up to this much (see event_lines)
_CONNECT_TIMEOUT = 10.0


class Stopped(Exception):
    """dnsd is stopping: the reflector's thread ends."""


class Requests:
    """The calls of one reflector, one at a time; the open one can be cut from another thread."""

    def __init__(self, call: Callable[..., Any], stop: threading.Event, read_timeout: float) -> None:
        self._call = call
        self._stop = stop
        # (connect, read): the read timeout bounds every socket read, so a dead or stalled
        # connection surfaces even though the watch itself may stay open for many minutes.
        self._timeouts = (min(_CONNECT_TIMEOUT, read_timeout), read_timeout)
        self._lock = threading.Lock()
        self._response: Any = None  # the open urllib3 response, for interrupt() to cut

    @contextlib.contextmanager
    def open(self, **params: Any) -> Iterator[Any]:
        """A raw urllib3 response that interrupt() can cut; closed (not pooled) unless fully read."""
        response = self._call(_preload_content=False, _request_timeout=self._timeouts, **params)
        with self._lock:
            self._response = response
        try:
            if self._stop.is_set():  # stop() ran before we could be interrupted
                raise Stopped
            yield response
        finally:
            with self._lock:
                self._response = None
            # After a complete read urllib3 has already returned the connection to the pool
            # and this is a no-op; otherwise the half-read connection must not be reused.
            response.close()

    def interrupt(self) -> None:
        """Make a blocked read return at once (called from stop(), in another thread)."""
        with self._lock:
            response = self._response
        if response is None:
            return
        # shutdown(SHUT_RD) wakes a recv() blocked in the reflector thread; close() alone does
        # not on Linux. The reflector closes the response itself on its way out.
        try:
            response.shutdown()
        except Exception:
            with contextlib.suppress(Exception):
                response.connection.sock.shutdown(socket.SHUT_RDWR)


def event_lines(response: Any, stop: threading.Event) -> Iterator[list[bytes]]:
    """The lines of a watch stream, a batch per read: each read1() returns whatever the server
    has sent, so events are applied as they arrive rather than when a buffer fills."""
    partial: list[bytes] = []  # the start of a line split across reads
    read1 = _reader(response)
    while True:
        data = read1(_READ_SIZE)
        if not data:
            break
        if b"\n" not in data:
            partial.append(data)
            continue
        if partial:
            partial.append(data)
            data = b"".join(partial)
            partial = []
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            partial.append(tail)
        yield lines
        if stop.is_set():
            raise Stopped
    if stop.is_set():
        raise Stopped  # our shutdown() ended the stream: not the server's clean end
    if any(p.strip() for p in partial):
        raise ValueError("watch stream ended inside an event")


def _reader(response: Any) -> Callable[[int], bytes]:
    """``response.read1``; for a urllib3 response whose body is not compressed, without decoding: urllib3
    would copy every read into a BytesIO of its own (its decoded buffer) before returning it."""
    if isinstance(response, urllib3.HTTPResponse) and response.headers.get("content-encoding", "identity") == "identity":
        return functools.partial(response.read1, decode_content=False)
    return response.read1  # type: ignore[no-any-return]


class Event(NamedTuple):
    type: Any  # ADDED, MODIFIED, DELETED, BOOKMARK (ERROR raises)
    object: Any  # a dict, or what the kind's typed decoder made of it (typed.py)
    rv: Any  # its metadata.resourceVersion
    initial_end: bool  # a bookmark annotated k8s.io/initial-events-end: the end of a streamed list


INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def parse_event(line: bytes) -> Event:
    """A watch event, its object a dict; Gone for a 410 ERROR event."""
    event = json.loads(line)
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ValueError("watch event without an object")
    kind, raw = event.get("type"), event["object"]
    if kind == "ERROR":
        code, message = raw.get("code"), raw.get("message") or raw.get("reason") or ""
        if code == 410:
            raise Gone(message)
        raise ValueError(f"watch ERROR event {code}: {message}")
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        return Event(kind, raw, None, False)  # an object without metadata is refused as such later
    annotations = meta.get("annotations") if kind == "BOOKMARK" else None
    end = isinstance(annotations, dict) and annotations.get(INITIAL_EVENTS_END) == "true"
    return Event(kind, raw, meta.get("resourceVersion"), end)
