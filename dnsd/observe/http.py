"""/health, /ready and /metrics on their own port, served from a thread (never on the DNS path).

/ready policy: 503 until every source completed its first full sync, then 200 until
SIGTERM (the lame duck, process/main.py). An API outage keeps /ready at 200, because the
last good data is still served and pulling every replica out of the Service would turn a
control-plane outage into a cluster-wide DNS outage. The outage shows in the logs and in
dnsd_source_healthy / dnsd_watch_last_event_age_seconds.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)


class _SharedServer(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # As the DNS port: a new dnsd on a node (hostNetwork) binds it while the old one drains.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class HttpServer:
    def __init__(self, address: tuple[str, int], ready: Callable[[], bool], registry: CollectorRegistry) -> None:
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
                else:
                    self._reply(404, b"not found\n")

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
        server_class: type[ThreadingHTTPServer] = _SharedServer
        if ":" in address[0]:
            server_class = type("SharedServer6", (_SharedServer,), {"address_family": socket.AF_INET6})
        self.server = server_class(address, Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="dnsd-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP on %s:%d (/health /ready /metrics)", self.server.server_address[0], self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
