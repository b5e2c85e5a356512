"""``dnsd top`` as a person meets it: in a real terminal (tmux, read back with capture-pane), against a real
dnsd on loopback and its /debug/top, with queries sent from several client addresses; ``q`` and Ctrl-C end
it cleanly. The unreachable address and the one-frame mode for pipes use a fake HTTP port.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.query
import pytest

from tests.fakes.top_http import FakeTopHttp, document, window
from tests.fakes.upstream import FakeUpstream
from tests.helpers import ROOT, Dnsd, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

CLIENTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
WEB = "web.default.svc.cluster.local"
NOPE = "nope.default.svc.cluster.local"
EXT = "www.example.com"
QPS = re.compile(r"qps ([\d,]+\.\d)/s")


class Tmux:
    """One command in a detached tmux session of its own server (-L), 160x50; the pane stays after it exits."""

    def __init__(self, command: list[str], width: int = 160, height: int = 50) -> None:
        self.socket = f"dnsd-top-test-{free_port()}"
        # The exit status is printed once the command ends, so the test can read it on the screen.
        line = f"{shlex.join(command)}; echo \"dnsd top exited with $?\"; sleep 120"
        # os.environ, not the process's own: under pytest, readline has put COLUMNS=80 and LINES=24 into the
        # latter, and rich would believe them over the terminal's real size.
        subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", str(width),
                        "-y", str(height), "-c", str(ROOT), line], check=True, timeout=10, env=dict(os.environ))

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def wait(self, *texts: str, patterns: tuple[str, ...] = (), timeout: float = 30.0) -> str:
        """The screen once it shows every text in ``texts`` and matches every regular expression in ``patterns``."""
        def shown() -> str | None:
            screen = self.screen()
            return screen if all(t in screen for t in texts) and all(re.search(p, screen) for p in patterns) else None

        try:
            return str(wait_for(shown, timeout, 0.1))
        except AssertionError:
            raise AssertionError(f"not on screen within {timeout}s: {texts}\n{self.screen()}") from None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Tmux]]:
    opened: list[Tmux] = []

    def open_top(address: str, *flags: str) -> Tmux:
        # Every flag given: a DNSD_* variable in the developer's shell must not change what is shown.
        term = Tmux([sys.executable, "-m", "dnsd", "top", "--http", address, "--limit", "10", "--window", "1m", *flags])
        opened.append(term)
        return term

    yield open_top
    for term in opened:
        term.close()


def ask(server: Dnsd, name: str, source: str) -> None:
    dns.query.udp(dns.message.make_query(name, "A"), server.address, port=server.port, timeout=2, source=source)


def test_top_shows_rates_clients_and_names_then_q_quits(terminal: Callable[..., Tmux]) -> None:
    """Two workers: each counts what it answered and the main process merges their counts (each second)."""
    with FakeUpstream() as upstream:
        server = Dnsd("--upstream", upstream.server, workers=2).wait_listening()
        try:
            for i, client in enumerate(CLIENTS):  # 127.0.0.2 asks 9 times, 127.0.0.3 6 times, 127.0.0.4 3 times
                for _ in range(3 - i):
                    for name in (WEB, NOPE, EXT):
                        ask(server, name, client)
            term = terminal(f"127.0.0.1:{server.http_port}", "--interval", "0.5")
            # Each client in the clients table with its exact count: the sketches are exact while not full,
            # and a process that keeps up counts every query.
            rows = tuple(rf"\n +\d +{re.escape(client)} +{count} " for client, count in zip(CLIENTS, (9, 6, 3), strict=True))
            screen = term.wait("Top clients", WEB, NOPE, EXT, "Upstreams", upstream.server, "workers 2", patterns=rows)
            nxdomain = screen[screen.index("Top NXDOMAIN names"):]
            assert NOPE in nxdomain and EXT in nxdomain  # NXDOMAIN on the left, forwarded on the right
            assert "Traceback" not in screen
            # queries while it watches: the rate between two scrapes shows them
            deadline = time.monotonic() + 20
            seen = 0.0
            while seen <= 0 and time.monotonic() < deadline:
                for _ in range(20):
                    ask(server, WEB, CLIENTS[0])
                seen = max((float(m.replace(",", "")) for m in QPS.findall(term.screen())), default=0.0)
            assert seen > 0, term.screen()
            term.keys("w")
            term.wait("window 15m", "last 15m:")
            term.keys("q")
            screen = term.wait("dnsd top exited with 0")
            assert "Traceback" not in screen
        finally:
            assert server.stop() == 0, server.log()


def test_unreachable_then_back_then_ctrl_c(terminal: Callable[..., Tmux]) -> None:
    port = free_port()
    term = terminal(f"127.0.0.1:{port}", "--interval", "0.3")
    screen = term.wait(f"cannot reach http://127.0.0.1:{port}/metrics: connection refused; retrying every 0.3s")
    assert "Traceback" not in screen
    time.sleep(1)  # it keeps retrying, and stays up
    assert "dnsd top exited" not in term.screen()
    fake = FakeTopHttp(top=None, port=port)  # on the address top has been asking
    with fake:
        screen = term.wait("qps ", "no /debug/top")
        assert "cannot reach" not in screen
        term.keys("C-c")
        screen = term.wait("dnsd top exited with 0")
        assert "Traceback" not in screen and "KeyboardInterrupt" not in screen


def test_top_into_a_pipe_prints_one_frame() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}  # no COLUMNS (see Tmux): 160 wide
    with FakeTopHttp(top=document({"1m": window(60, {"127.0.0.9": 5}, {WEB: 5})})) as fake:
        out = subprocess.run([sys.executable, "-m", "dnsd", "top", "--http", fake.address, "--interval", "0.2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert "qps 0.0/s" in out.stdout and "127.0.0.9" in out.stdout and WEB in out.stdout
    assert "q quit" not in out.stdout
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "dnsd", "top", "--http", f"127.0.0.1:{port}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and f"cannot reach http://127.0.0.1:{port}/metrics: connection refused" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize(("flags", "says"), [(["--http", "localhost"], "--http"), (["--interval", "0"], "--interval"),
                                             (["--limit", "0"], "--limit"), (["--window", "5m"], "--window")])
def test_bad_flags_are_usage_errors(flags: list[str], says: str) -> None:
    out = subprocess.run([sys.executable, "-m", "dnsd", "top", *flags], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
