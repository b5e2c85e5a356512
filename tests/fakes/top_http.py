"""A fake dnsd HTTP port for ``dnsd top``: /metrics and /debug/top?limit=N on loopback, from a thread.

``metrics`` is the text /metrics answers. ``top`` is the /debug/top document (the schema of dnsd/top/talkers.py),
cut to ``limit`` rows per table as the real endpoint does (400 above its capacity); None answers 404,
as a dnsd without it.
Every path asked is recorded in ``asked``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers import free_port

# /metrics of a real dnsd forwarding to tests/fakes/upstream.py (a few cluster, NXDOMAIN and forwarded names)
CANNED_METRICS = (Path(__file__).parent / "top_metrics.txt").read_text()


def table(counts: Counter[str] | dict[str, int], error: int = 0) -> list[dict[str, Any]]:
    return [{"key": k, "count": n, "error": error} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def document(windows: dict[str, dict[str, Any]], capacity: int = 128, workers: int = 1) -> dict[str, Any]:
    """A /debug/top answer; each window: {"seconds", "queries", "clients", "names", "nxdomain", "forwarded"}."""
    return {"generated": time.time(), "capacity": capacity, "workers": workers, "windows": windows}


def window(seconds: int, clients: dict[str, int], names: dict[str, int], nxdomain: dict[str, int] | None = None,
           forwarded: dict[str, int] | None = None) -> dict[str, Any]:
    return {"seconds": seconds, "queries": sum(clients.values()), "clients": table(clients), "names": table(names),
            "nxdomain": table(nxdomain or {}), "forwarded": table(forwarded or {})}


class FakeTopHttp:
    def __init__(self, metrics: str = CANNED_METRICS, top: dict[str, Any] | None = None, port: int | None = None) -> None:
        self.metrics = metrics
        self.top = top
        self.asked: list[str] = []
        self.port = port or free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.asked.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/metrics":
                    self._reply(200, outer.metrics.encode(), "text/plain; version=0.0.4; charset=utf-8")
                elif parts.path == "/debug/top" and outer.top is not None:
                    limit = int(parse_qs(parts.query).get("limit", ["10"])[0])
                    if not 1 <= limit <= outer.top.get("capacity", 128):  # as dnsd: 400, not a shorter list
                        self._reply(400, b"limit out of range\n", "text/plain")
                        return
                    self._reply(200, json.dumps(outer._cut(limit)).encode(), "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _cut(self, limit: int) -> dict[str, Any]:
        assert self.top is not None
        doc = json.loads(json.dumps(self.top))
        for win in doc["windows"].values():
            for name in ("clients", "names", "nxdomain", "forwarded"):
                win[name] = win.get(name, [])[:limit]
        return doc

    def __enter__(self) -> FakeTopHttp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
