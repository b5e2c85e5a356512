"""/health, /ready, /metrics, /debug/top and POST /reload on their own port, served from a thread (never on the DNS path).

/ready policy: 503 until every source completed its first full sync, then 200 until
SIGTERM (the lame duck, process/main.py). An API outage keeps /ready at 200, because the
last good data is still served and pulling every replica out of the Service would turn a
control-plane outage into a cluster-wide DNS outage. The outage shows in the logs and in
dnsd_source_healthy / dnsd_watch_last_event_age_seconds.

POST /reload rescans the manifest files at once and answers once every serving process
answers from the result: a test or a script that wrote a file knows the next query sees it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from dnsd.observe.talkers import CAPACITY

log = logging.getLogger(__name__)

TOP_LIMIT = CAPACITY  # /debug/top?limit= at most: what each summary keeps


# What ``reload`` returns: the manifest files' current problems, or None without manifest files.
Reload = Callable[[], list[str] | None]


class _SharedServer(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # As the DNS port: a new dnsd on a node (hostNetwork) binds it while the old one drains.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class HttpServer:
    def __init__(self, address: tuple[str, int], ready: Callable[[], bool], registry: CollectorRegistry,
                 reload: Reload | None = None,
                 top: Callable[[int], dict[str, Any]] | None = None) -> None:
        """``reload``: what POST /reload runs (raising TimeoutError when the processes did not confirm in time);
        ``top``: /debug/top's report for a limit (observe/sketch.py), None when top talkers are off."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    self._reply(200, b"OK\n")
                elif path == "/ready":
                    ok = outer.ready()
                    self._reply(200 if ok else 503, b"OK\n" if ok else b"not ready\n")
                elif path == "/metrics":
                    self._reply(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/debug/top":
                    self._top()
                elif path == "/reload":
                    self._reply(405, b"POST only\n")
                else:
                    self._reply(404, b"not found\n")

            def _top(self) -> None:
                if outer.top is None:
                    self._reply(404, b"top talkers are off (--no-top-talkers)\n")
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                try:
                    limit = int(query.get("limit", ["10"])[0])
                except ValueError:
                    limit = -1
                if not 1 <= limit <= TOP_LIMIT:
                    self._reply(400, f"limit must be a whole number from 1 to {TOP_LIMIT}\n".encode())
                    return
                body = json.dumps(outer.top(limit), separators=(",", ":")).encode()
                self._reply(200, body, "application/json")

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length", "")
                if length.isdigit():  # a body means nothing here: read (some of) it so the reply is not reset
                    self.rfile.read(min(int(length), 1 << 16))
                if self.path.split("?", 1)[0] != "/reload" or outer.reload is None:
                    self._reply(404, b"not found\n")
                    return
                try:
                    problems = outer.reload()
                except TimeoutError as exc:
                    self._reply(504, f"{exc}\n".encode())
                    return
                if problems is None:
                    self._reply(409, b"no manifest files to reload (--manifests)\n")
                elif problems:  # the other files are applied; each bad one keeps its last good version
                    self._reply(422, "".join(f"{line}\n" for line in problems).encode())
                else:
                    self._reply(200, b"reloaded\n")

            def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.client_address[0], *args)

        self.ready = ready
        self.registry = registry
        self.top = top
        self.reload = reload
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
        if ":" in address[0]:
            server_class = type("SharedServer6", (_SharedServer,), {"address_family": socket.AF_INET6})
        self.server = server_class(address, Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # A stop waits for the thread's next poll (0.5 s by default): 0.1 s lets a test's dnsd exit at once.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="dnsd-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP on %s:%d (/health /ready /metrics /debug/top, POST /reload)", self.server.server_address[0],
                 self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
