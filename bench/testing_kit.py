"""What dnsd.testing costs a test suite, and how soon a written manifest file is served.

    python bench/testing_kit.py            # ~1 minute

1. start to ready: ``with DnsServer(): pass`` timed (the ``with`` block entered; then the whole block,
   stop included), 10 times;
2. the ``dnsd_server`` fixture's cost per test: a throwaway project of 200 tests that take it against
   200 that do not, each in its own pytest run (the first test of the run pays the session's dnsd start);
3. the file reload loop of a suite in another language: write a manifest file (temp + rename) into
   ``dnsd serve --manifests DIR``, then ask every 2 ms until the new address is served (the watcher, no
   signal), 40 times; and the same with ``POST /reload`` after the write (served when it returns).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dnsd.testing import DnsServer  # noqa: E402


def start_to_ready(rounds: int = 10) -> None:
    entered, whole = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        with DnsServer():
            entered.append(time.perf_counter() - started)
        whole.append(time.perf_counter() - started)
    print(f"start to ready: median {statistics.median(entered):.3f} s, max {max(entered):.3f} s; "
          f"with stop: median {statistics.median(whole):.3f} s ({rounds} runs)")


def fixture_overhead(tests: int = 200) -> None:
    with tempfile.TemporaryDirectory() as project:
        Path(project, "test_with.py").write_text(
            f"import pytest\n@pytest.mark.parametrize('i', range({tests}))\ndef test_with(dnsd_server, i): pass\n")
        Path(project, "test_without.py").write_text(
            f"import pytest\n@pytest.mark.parametrize('i', range({tests}))\ndef test_without(i): pass\n")
        seconds = {}
        for name in ("test_without.py", "test_with.py"):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name], cwd=project,
                           check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            seconds[name] = time.perf_counter() - started
    extra = seconds["test_with.py"] - seconds["test_without.py"]
    print(f"dnsd_server fixture: {tests} tests {seconds['test_with.py']:.2f} s, without it {seconds['test_without.py']:.2f} s: "
          f"{extra:.2f} s more in all (the session's dnsd start included), {extra / tests * 1000:.1f} ms a test")


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            try:
                udp.bind(("127.0.0.1", tcp.getsockname()[1]))
            except OSError:
                continue
            return int(tcp.getsockname()[1])


def reload_loop(rounds: int = 40) -> None:
    with tempfile.TemporaryDirectory() as directory:
        port, http = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-m", "dnsd", "serve", "--manifests", directory, "--port", str(port),
                                 "--http-address", f"127.0.0.1:{http}", "--workers", "1", "--upstream", "none",
                                 "--log-level", "warning"], cwd=ROOT)
        try:
            assert subprocess.run([sys.executable, "-m", "dnsd", "wait", "--http", f"127.0.0.1:{http}"], cwd=ROOT).returncode == 0
            for post in (False, True):
                seen = []
                for i in range(rounds):
                    ip = f"10.96.{int(post)}.{i + 1}"
                    started = time.perf_counter()
                    Path(directory, ".web.tmp").write_text(json.dumps(
                        {"kind": "Service", "metadata": {"name": "web"}, "spec": {"clusterIP": ip}}))
                    os.replace(Path(directory, ".web.tmp"), Path(directory, "web.json"))
                    if post:
                        request = urllib.request.Request(f"http://127.0.0.1:{http}/reload", method="POST")
                        urllib.request.urlopen(request, timeout=10).read()
                    deadline = started + 5
                    while time.perf_counter() < deadline:
                        reply = dns.query.udp(dns.message.make_query("web.default.svc.cluster.local", "A"),
                                              "127.0.0.1", port=port, timeout=1)
                        if [r.address for rrset in reply.answer for r in rrset] == [ip]:
                            break
                        time.sleep(0.002)
                    seen.append(time.perf_counter() - started)
                how = "write + POST /reload" if post else "write, then poll (the watcher)"
                print(f"{how}: served after median {statistics.median(seen) * 1000:.0f} ms, "
                      f"max {max(seen) * 1000:.0f} ms ({rounds} changes)")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    start_to_ready()
    fixture_overhead()
    reload_loop()
