"""/health, /ready, /metrics and POST /reload on their own port, served from a thread (never on the DNS path).

/ready policy: 503 until every source completed its first full sync, then 200 for
good — an API outage after that keeps /ready at 200, because the last good data is
still served and pulling every replica out of the Service would turn a control-plane
outage into a cluster-wide DNS outage. The outage shows in the logs and in
dnsd_source_healthy / dnsd_watch_last_event_age_seconds.

POST /reload rescans the manifest files at once and answers once every serving process
answers from the result: a test or a script that wrote a file knows the next query sees it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)


# What ``reload`` returns: the manifest files' current problems, or None without manifest files.
Reload = Callable[[], list[str] | None]


class HttpServer:
    def __init__(self, address: tuple[str, int], ready: Callable[[], bool], registry: CollectorRegistry,
                 reload: Reload | None = None) -> None:
        """``reload``: what POST /reload runs (raising TimeoutError when the processes did not confirm in time)."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/health":
                    self._reply(200, b"OK\n")
                elif path == "/ready":
                    ok = outer.ready()
                    self._reply(200 if ok else 503, b"OK\n" if ok else b"not synced\n")
                elif path == "/metrics":
                    self._reply(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/reload":
                    self._reply(405, b"POST only\n")
                else:
                    self._reply(404, b"not found\n")

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
        self.reload = reload
        server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
        if ":" in address[0]:
            import socket

            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = server_class(address, Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # A stop waits for the thread's next poll (0.5 s by default): 0.1 s lets a test's dnsd exit at once.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), name="dnsd-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP on %s:%d (/health /ready /metrics, POST /reload)", self.server.server_address[0], self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
