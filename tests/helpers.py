"""What the tests share: the real dnsd on a loopback port, and small helpers to talk to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
ZONES = ROOT / "zones"


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (dnsd binds both; ::1 for IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Dnsd:
    """One dnsd process: ``query``/``tcp`` with dnspython, ``dig`` with the real dig."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, http: bool = True, workers: int | None = 1,
                 cpus: set[int] | None = None, port: int | None = None) -> None:
        """``workers`` None leaves dnsd's default; ``cpus`` runs it with that CPU affinity."""
        self.port = port or free_port()
        self.http_port = free_port() if http else None
        self.address = "127.0.0.1"
        cmd = [sys.executable, "-m", "dnsd", "serve", "--port", str(self.port), *args]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        if "--address" not in args:
            cmd += ["--address", self.address]
        if "--upstream" not in args and "DNSD_UPSTREAM" not in (env or {}):
            cmd += ["--upstream", "none"]  # never forward to this machine's resolver (off-machine)
        cmd += ["--http-address", f"127.0.0.1:{self.http_port}" if http else ""]
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dnsd-test-{self.port}.log"
        self._log = open(self.log_path, "w+b")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )

    def wait_listening(self, timeout: float = 20.0) -> Dnsd:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.query("dns-version.cluster.local", "TXT", timeout=0.3)
                return self
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"dnsd did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 2.0,
              use_edns: int | bool = False, payload: int = 1232, want_dnssec: bool = False) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload, want_dnssec=want_dnssec)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(q, self.address, port=self.port, timeout=timeout)

    def raw_udp(self, payload: bytes, timeout: float = 1.0) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(payload, (self.address, self.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

    def dig(self, *args: str) -> str:
        out = subprocess.run(
            ["dig", f"@{self.address}", "-p", str(self.port), "+time=2", "+tries=1", *args],
            capture_output=True, text=True, timeout=20,
        )
        return out.stdout

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""  # not listening (yet)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._log.close()
        return self.proc.returncode


def answers(msg: dns.message.Message) -> list[str]:
    """The answer section as sorted 'name TYPE rdata' strings (TTL left out)."""
    return sorted(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd}" for rrset in msg.answer for rd in rrset)


def rcode(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")


def have_dig() -> bool:
    return shutil.which("dig") is not None
