"""DnsServer: a real dnsd in a subprocess on a free loopback port, for integration tests.

It serves the objects of a private manifest directory, one file per object; ``apply`` and
``delete`` write there, then ask dnsd to rescan at once (``POST /reload``, which returns once
every serving process answers from the result), so each change is served before they return.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import dns.resolver

import dnsd
from dnsd.cluster.model import KINDS, NAMESPACE
from dnsd.testing import lookup
from dnsd.testing.objects import Key, ObjectFiles, Source, objects
from dnsd.testing.options import serve_flags

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # to ready; ~0.15 s on an idle machine (docs/performance.md)


class DnsServer:
    """A real dnsd on a free loopback port (UDP and TCP), for the length of a ``with`` block.

    ``manifests``: what it holds at start: a path (file or directory), YAML text, a dict or a list of
    dicts (as :meth:`apply` takes); copied in, so later edits to those files are not followed.
    ``domain``: the cluster zone. ``upstream``: where names outside the zones go (a server such as
    ``"127.0.0.1:5353"``, or a list of them); None: nowhere (``--upstream none``: REFUSED), so a test
    never reaches this machine's resolver. ``options``: flags of ``dnsd serve``, by name:
    ``workers=2`` -> ``--workers 2``, ``autopath=True`` -> ``--autopath``, a list -> the flag repeated
    (``workers`` is 1 unless given). An unknown option is a TypeError.
    """

    def __init__(self, manifests: Source | None = None, *, domain: str = "cluster.local",
                 upstream: str | Sequence[str] | None = None, **options: Any) -> None:
        self.domain = domain.lower().strip(".")
        self.host = HOST
        self.port = 0  # set by start()
        self.http_port = 0
        options.setdefault("workers", 1)
        self._flags = serve_flags(options)
        upstreams = [upstream] if isinstance(upstream, str) else list(upstream or ["none"])
        self._flags += [part for server in upstreams for part in ("--upstream", server)]
        self._zones = [self.domain, *_as_list(options.get("external_zone"))]
        self._pod_names = bool(options.get("endpoint_pod_names"))
        self._initial = objects(manifests, self._pod_names) if manifests is not None else []
        self._process: _Process | None = None
        self._files: ObjectFiles | None = None
        self._cleanup: weakref.finalize | None = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the dnsd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The dnsd main process's ID once started (to kill it in a test of how your code copes)."""
        return self._proc.pid if self._proc else None

    @property
    def _proc(self) -> subprocess.Popen[bytes] | None:
        return self._process.proc if self._process else None

    def start(self) -> DnsServer:
        """Start dnsd and return once it answers (``/ready``); RuntimeError with its log if it cannot."""
        if self._process is not None:
            raise RuntimeError("this DnsServer was started already")
        process = self._process = _Process(Path(tempfile.mkdtemp(prefix="dnsd-testing-")))
        self._cleanup = weakref.finalize(self, process.close)  # at exit too, if stop() is never called
        files = self._files = ObjectFiles(process.workdir / "manifests")
        files.directory.mkdir()
        for key, obj in self._initial:
            files.write(key, obj)
        error = ""
        for _ in range(5):  # another process may take a free port before dnsd binds it
            self.port, self.http_port = _free_ports()
            process.spawn([sys.executable, "-m", "dnsd", "serve", "--port", str(self.port), "--address", HOST,
                           "--http-address", f"{HOST}:{self.http_port}", "--manifests", str(files.directory),
                           "--domain", self.domain, *self._flags])
            error = self._await_ready() or ""
            if not error:
                return self
            process.kill()
            if "Address already in use" not in error:
                break
        self.stop()
        raise RuntimeError(error)

    def _await_ready(self) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT
        proc = self._proc
        while time.monotonic() < deadline:
            if proc is None or proc.poll() is not None:
                return f"dnsd exited with status {proc and proc.returncode} before it was ready:\n{self.logs()}"
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return None
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)
        return f"dnsd was not ready within {START_TIMEOUT:g} s:\n{self.logs()}"

    def stop(self) -> None:
        """Stop dnsd (SIGTERM, then SIGKILL after 5 s, for every process it started) and remove its files."""
        if self._cleanup is not None:
            self._cleanup()

    def logs(self) -> str:
        """What dnsd logged so far."""
        return self._process.logs() if self._process else ""

    def apply(self, obj: Source) -> None:
        """Add or replace objects, as ``kubectl apply``: a dict, a list of dicts, YAML or JSON text (one or
        many documents, ``kind: List`` too) or a path (a file, or a directory of ``*.yaml``/``*.yml``/
        ``*.json``; a str is a path unless it holds a newline or ':' or starts with '{' or '[').
        Served before this returns.
        ValueError naming the object and the reason when dnsd cannot use one, and then nothing changes.
        Kinds dnsd does not read (Deployment, ConfigMap, ...) are left out; a kind close to one it reads
        (``Servce``) is a ValueError."""
        found = objects(obj, self._pod_names)
        files = self._running()
        for key, item in found:
            files.write(key, item)
        self._reload()

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        """Remove one object (``namespace`` is ignored for a Namespace, and deleting one removes nothing
        else). Gone before this returns. KeyError naming it when the cluster holds no such object."""
        canonical = next((k for k in KINDS if k.lower() == kind.lower()), None)
        if canonical is None:
            raise ValueError(f"kind {kind!r}: dnsd holds only {', '.join(KINDS)} objects")
        key: Key = (canonical, "" if canonical == NAMESPACE else namespace, name)
        files = self._running()
        files.remove(key)
        self._reload()

    def reset(self, *sources: Source) -> None:
        """Remove every object, then apply ``sources`` (each as :meth:`apply` takes), served before this
        returns; a ValueError from them leaves the cluster as it was."""
        found = [item for source in sources for item in objects(source, self._pod_names)]
        files = self._running()
        files.clear()
        for key, item in found:
            files.write(key, item)
        self._reload()

    def resolver(self, namespace: str = "default") -> dns.resolver.Resolver:
        """A dnspython Resolver asking this server as a pod in ``namespace`` would: search list
        ``<ns>.svc.<domain> svc.<domain> <domain>``, ndots:5, searching by default, so
        ``srv.resolver("shop").resolve("web", "A")`` finds ``web.shop.svc.<domain>``."""
        self._running()
        return lookup.resolver(self.host, self.port, namespace, self.domain)

    def patch_getaddrinfo(self, namespace: str = "default") -> contextlib.AbstractContextManager[None]:
        """A context manager: inside it ``socket.getaddrinfo`` (so urllib, requests, httpx, asyncio's
        ``loop.getaddrinfo``...) resolves names of the served zones through this server, and short names
        as a pod in ``namespace`` would (its search list, ndots:5); an ExternalName whose target is
        outside the zones resolves the target as the original function does; every other name, and
        numeric addresses, go to the original function, restored on exit."""
        self._running()
        search = lookup.search_list(namespace, self.domain)
        return lookup.patched(lambda original: lookup.Lookup(self.host, self.port, self._zones, search, original,
                                                                        lambda: self.running))

    def _running(self) -> ObjectFiles:
        if self._files is None or self._proc is None:
            raise RuntimeError("this DnsServer is not started: use `with DnsServer() as server:` or .start()")
        if self._cleanup is not None and not self._cleanup.alive:
            raise RuntimeError("this DnsServer was stopped")
        if self._proc.poll() is not None:
            raise RuntimeError(self._died())
        return self._files

    def _died(self) -> str:
        assert self._proc is not None
        return f"dnsd is not running (it exited with status {self._proc.returncode}); its log:\n{self.logs()}"

    def _reload(self) -> None:
        """Have dnsd rescan its manifest directory; returns once every process answers from it."""
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"dnsd refused the change: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as exc:
            assert self._proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1)  # a connection cut by a dying process: its status, once it is gone
            if not self.running:
                raise RuntimeError(self._died()) from None
            raise RuntimeError(f"dnsd did not confirm the change: {exc}") from None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _free_ports() -> tuple[int, int]:
    """A port free for UDP and TCP on 127.0.0.1 (DNS), and another free for TCP (HTTP)."""
    held: list[socket.socket] = []
    try:
        while True:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            with contextlib.suppress(OSError):
                udp.bind((HOST, port))
                http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(http)
                http.bind((HOST, 0))
                return port, http.getsockname()[1]
            if len(held) > 150:
                raise RuntimeError("no free port on 127.0.0.1")
    finally:
        for sock in held:
            sock.close()


def _child_env() -> dict[str, str]:
    """This environment without DNSD_* settings (only DnsServer's options count), importing the dnsd
    this process imported (a checkout's, not an older installed copy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}
    root = str(Path(dnsd.__file__).resolve().parent.parent)
    if root not in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Process:
    """The dnsd process of one DnsServer, its log and its directory; ``close`` leaves none of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log: IO[bytes] = open(workdir / "dnsd.log", "w+b")  # noqa: SIM115 - closed by close()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str]) -> None:
        # A session of its own: stopping it reaches its workers too, and a ^C in the terminal reaches only the tests.
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=_child_env(), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self) -> str:
        if self.log.closed:
            return ""
        self.log.flush()
        return (self.workdir / "dnsd.log").read_bytes().decode(errors="replace")

    def kill(self) -> None:
        """SIGTERM to dnsd and its workers (its process group), SIGKILL after 5 s. A dnsd that died
        already is only reaped: its workers stop when it is gone, and its group ID may be reused."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # not reaped yet: the group is still dnsd's
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        self.kill()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["DnsServer"]
