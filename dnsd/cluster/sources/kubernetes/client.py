"""The API client: credentials that follow rotation, raw list/watch calls, and error wording.

client-go re-reads token files and re-runs credential plugins when a request gets 401; the
Python client reads a kubeconfig ``tokenFile`` once and caches the in-cluster token for a
minute. ``Credentials`` closes that gap: every request takes the current client from it, a
401 rebuilds the client from its sources (token file, in-cluster token and CA, kubeconfig
exec/auth-provider plugins) at once, and it is rebuilt at least once a minute regardless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

REFRESH_EVERY = 60.0  # seconds: token files are re-read at least this often

_QUERY_NAMES = {
    "_continue": "continue", "label_selector": "labelSelector", "limit": "limit", "watch": "watch",
    "resource_version": "resourceVersion", "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds", "send_initial_events": "sendInitialEvents",
    "resource_version_match": "resourceVersionMatch",
}


def _tls_material(client: ApiClient) -> tuple[Any, ...]:
    """What a new connection pool would be built from (file contents, not names: in-cluster
    the CA file keeps its name when it is rotated)."""
    cfg = client.configuration

    def content(path: str | None) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    return (cfg.host, cfg.verify_ssl, cfg.tls_server_name, cfg.proxy,
            content(cfg.ssl_ca_cert), content(cfg.cert_file), content(cfg.key_file))


def _bearer(client: ApiClient) -> str | None:
    with contextlib.suppress(Exception):
        token: str | None = client.configuration.auth_settings().get("BearerToken", {}).get("value")
        return token
    return None


class Credentials:
    """The current ApiClient; rebuilt from ``build`` on a 401 and every ``REFRESH_EVERY`` s."""

    def __init__(self, build: Callable[[], ApiClient], refresh_every: float = REFRESH_EVERY) -> None:
        self._build = build
        self._refresh_every = refresh_every
        self._lock = threading.Lock()
        self._client = build()  # config problems surface here, in the caller's thread
        self._loaded = time.monotonic()  # for the periodic refresh
        # Which credentials each thread's last request went out with: a 401 to a request sent
        # before another thread's reload is retried with the reloaded ones, not reloaded again.
        self._used = threading.local()
        self.reloads = 0  # reloads that changed something; also the credentials' generation

    @property
    def host(self) -> str:
        host: str = self._client.configuration.host
        return host

    def client(self) -> ApiClient:
        if time.monotonic() - self._loaded >= self._refresh_every:
            self.reload("periodic refresh")
        self._used.generation = self.reloads
        return self._client

    def reload(self, why: str) -> bool:
        """Read every credential source again; True if the token or TLS material changed.

        The old client is not closed: reflectors may still read watches through its pool,
        and it goes when they let go of it.
        """
        with self._lock:
            now = time.monotonic()
            periodic = why == "periodic refresh"
            if periodic and now - self._loaded < self._refresh_every:
                return False  # another thread just did it
            if not periodic and getattr(self._used, "generation", self.reloads) != self.reloads:
                return True  # another reflector's 401 (or the refresh) changed them since our request
            self._loaded = now
            try:
                new = self._build()
            except Exception as exc:  # e.g. the token file is being replaced: keep the old
                log.warning("reloading API credentials (%s) failed: %s", why, exc)
                return False
            old = self._client
            tls_changed = _tls_material(new) != _tls_material(old)
            token_changed = _bearer(new) != _bearer(old)
            if tls_changed:
                self._client = new
            elif token_changed:
                # Same TLS: keep the pooled connections, take the new token and its refresh hook.
                old.configuration.api_key = new.configuration.api_key
                old.configuration.api_key_prefix = new.configuration.api_key_prefix
                old.configuration.refresh_api_key_hook = new.configuration.refresh_api_key_hook
            changed = tls_changed or token_changed
            if changed:
                self.reloads += 1
            level = logging.INFO if changed or why != "periodic refresh" else logging.DEBUG
            log.log(level, "reloaded API credentials (%s): %s", why,
                    "new CA or client certificate" if tls_changed else "new token" if token_changed else "unchanged")
            return changed

    def close(self) -> None:
        self._client.close()


_DECODER = json.JSONDecoder()
_SPACE = frozenset(" \t\n\r")


def each_item(body: bytes, handle: Callable[[Any], None]) -> dict[str, Any]:
    """Parse a list page, passing each element of its ``items`` to ``handle`` as soon as it is
    decoded; return the page without its items (``metadata``, ``kind``...).

    ``json.loads`` would build the whole page first, in fresh pymalloc arenas that a few
    survivors then pin for good. One item at a time, each item's objects reuse the last one's
    memory. ValueError when the page is not a JSON object.
    """
    text = body.decode()
    end = len(text)

    def skip(i: int) -> int:
        while i < end and text[i] in _SPACE:
            i += 1
        return i

    def expect(i: int, chars: str) -> int:
        i = skip(i)
        if i >= end or text[i] not in chars:
            raise ValueError(f"list response: expected {chars!r} at offset {i}")
        return i + 1

    page: dict[str, Any] = {}
    i = expect(0, "{")
    if skip(i) < end and text[skip(i)] == "}":
        return page
    while True:
        key, i = _DECODER.raw_decode(text, skip(i))
        i = expect(i, ":")
        i = skip(i)
        if key == "items" and i < end and text[i] == "[":
            i = skip(i + 1)
            if i < end and text[i] == "]":
                i += 1
            else:
                while True:
                    item, i = _DECODER.raw_decode(text, skip(i))
                    handle(item)
                    del item
                    i = expect(i, ",]")
                    if text[i - 1] == "]":
                        break
        else:
            page[key], i = _DECODER.raw_decode(text, i)
        i = expect(i, ",}")
        if text[i - 1] == "}":
            break
    if skip(i) != end:
        raise ValueError("list response: data after the object")
    return page


def list_call(creds: Credentials, path: str, **fixed: Any) -> Callable[..., Any]:
    """A GET of ``path`` returning the raw urllib3 response; ApiException for a non-2xx status.

    The generated API classes (CoreV1Api, ...) would import the client's pydantic models, large
    and slow to import, that dnsd never builds: list/watch calls are built here instead.
    """

    def call(_preload_content: bool = False, _request_timeout: Any = None, **params: Any) -> Any:
        client = creds.client()
        query = [(_QUERY_NAMES[k], v) for k, v in {**fixed, **params}.items() if v is not None]
        request = client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    return call


class Gone(Exception):
    """A watch stream's 410 ERROR event: the resourceVersion it watched from was compacted away;
    only a relist helps."""


def gone(error: BaseException) -> bool:
    """410, from the request or from the stream."""
    return isinstance(error, Gone) or (isinstance(error, ApiException) and error.status == 410)


def _root(error: BaseException) -> BaseException:
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return error.reason
    return error


def unreachable(error: BaseException) -> bool:
    """The API did not answer at all (refused, reset, timed out): only its return helps, and
    the shared probe notices that sooner and more cheaply than each reflector's retries."""
    error = _root(error)
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        return False  # a TLS misconfiguration: the API is there, retrying faster will not help
    return isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.TimeoutError
                      | urllib3.exceptions.ProtocolError | ConnectionError)


def reason(error: BaseException) -> str:
    """A short, bounded label for dnsd_source_errors_total{reason}."""
    if isinstance(error, ApiException):
        return {401: "unauthorized", 403: "forbidden", 404: "not_found", 410: "gone", 422: "invalid",
                429: "throttled"}.get(error.status or 0, "server_error" if (error.status or 0) >= 500 else "http_error")
    error = _root(error)
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        return "tls"
    if isinstance(error, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return "connect"
    if isinstance(error, urllib3.exceptions.TimeoutError):
        return "timeout"
    if isinstance(error, urllib3.exceptions.ProtocolError | ConnectionError):
        return "connection_broken"
    if isinstance(error, Gone):
        return "gone"
    if isinstance(error, ValueError):
        return "bad_response"
    return "other"


def describe(error: BaseException) -> str:
    """One short line for logs: no response headers, the API's own message when there is one."""
    if isinstance(error, ApiException):
        message = ""
        with contextlib.suppress(Exception):
            message = json.loads(error.body or "").get("message", "")
        return f"HTTP {error.status} {error.reason or ''}".rstrip() + (f": {message}" if message else "")
    error = _root(error)
    if isinstance(error, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    if isinstance(error, urllib3.exceptions.SSLError):
        return f"TLS: {error.args[0] if error.args else error}"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        cause = error.args[1] if len(error.args) > 1 else None
        return f"connection broken ({type(cause).__name__})" if cause is not None else "connection broken"
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {str(error).rpartition(': ')[2]}"
    if isinstance(error, json.JSONDecodeError):
        return f"bad JSON: {error}"
    if isinstance(error, Gone):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def retry_after(error: BaseException) -> float:
    """Seconds the API asked us to wait (429 from priority and fairness, 503 while starting)."""
    if isinstance(error, ApiException) and error.status in (429, 503) and error.headers:
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, float(error.headers.get("Retry-After") or 0))
    return 0.0
