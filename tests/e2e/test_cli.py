"""The command line as users meet it: ``dnsd serve | records | check``, flags, DNSD_* variables, workers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from tests.helpers import ROOT, ZONES, Dnsd, answers, free_port, rcode, wait_for

WEB = "web.default.svc.cluster.local"
SERVE_FLAGS = [
    "--manifests", "--kubernetes", "--kubeconfig", "--endpoints-api", "--namespace", "--label-selector",
    "--domain", "--address", "--port", "--ttl", "--workers", "--http-address", "--log-level",
    "--upstream", "--stub-domain", "--forward-cache-size", "--forward-max-ttl", "--serve-stale", "--allow-from",
]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without DNSD_* (a developer's shell must not change the results)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}
    # DNSD_UPSTREAM=none: a test server must never forward to this machine's resolver (off-machine).
    return {**env, "PYTHONUNBUFFERED": "1", "DNSD_UPSTREAM": "none", **extra}


def dnsd(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0,
         command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """A one-shot dnsd command (``python -m dnsd`` unless ``command`` is given)."""
    return subprocess.run(
        [*(command or [sys.executable, "-m", "dnsd"]), *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=env if env is not None else clean_env(),
    )


def ask(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=port, timeout=2)


def zone_line(line: str) -> tuple[str, int, str, str, str]:
    """(name, ttl, class, type, rdata) of one zone-file line."""
    name, ttl, klass, rtype, rdata = line.split(None, 4)
    return name, int(ttl), klass, rtype, rdata


# == help ================================================================================
@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]], ids=["dnsd", "dnsd serve"])
def test_help_lists_every_flag_and_the_env_form(argv: list[str]) -> None:
    result = dnsd(*argv)
    assert result.returncode == 0, result.stderr
    text = re.sub(r"-\n\s*", "-", result.stdout)  # argparse wraps long flags at their hyphens
    missing = [flag for flag in SERVE_FLAGS if flag not in text]
    assert not missing, f"`dnsd {' '.join(argv)}` does not mention {missing}:\n{result.stdout}"
    assert "DNSD_" in result.stdout, "the DNSD_<FLAG> environment form is not mentioned"


def test_serve_help_names_the_variable_of_each_flag() -> None:
    out = " ".join(dnsd("serve", "--help").stdout.split())  # argparse wraps lines anywhere
    for flag in SERVE_FLAGS:
        variable = "DNSD_" + flag[2:].replace("-", "_").upper()
        assert variable in out, f"{flag}: {variable} not shown"


def test_top_level_help_lists_the_subcommands() -> None:
    result = dnsd("--help")
    assert result.returncode == 0
    for command in ("serve", "records", "check", "top"):
        assert command in result.stdout


def test_no_subcommand_is_a_usage_error() -> None:
    result = dnsd()
    assert result.returncode == 2
    assert "usage: dnsd" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("dnsd") is None, reason="the dnsd console script is not installed")
@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["records"], ["check", str(ZONES)]])
def test_console_script_matches_python_m(argv: list[str]) -> None:
    script = shutil.which("dnsd")
    assert script is not None
    by_module, by_script = dnsd(*argv), dnsd(*argv, command=[script])
    assert by_module.returncode == by_script.returncode == 0
    assert without_serials(by_module.stdout) == without_serials(by_script.stdout)


def without_serials(zone_text: str) -> str:
    """Zone text with SOA serials masked: the serial is the load time, so two runs a second apart differ."""
    return re.sub(r"(\sSOA\s+\S+\s+\S+\s+)\d+", r"\1SERIAL", zone_text)


# == flag and variable validation =============================================================
@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--ttl", "3601"], "argument --ttl: must be between 0 and 3600"),
    (["serve", "--ttl", "-1"], "argument --ttl: must be between 0 and 3600"),
    (["records", "--ttl", "3601"], "argument --ttl: must be between 0 and 3600"),
    (["serve", "--port", "65536"], "argument --port: must be between 0 and 65535"),
    (["serve", "--port", "-1"], "argument --port: must be between 0 and 65535"),
    (["serve", "--address", "localhost"], "argument --address: 'localhost' is not an IP address"),
    (["serve", "--workers", "0"], "argument --workers: must be at least 1"),
    (["serve", "--udp-max-payload", "511"], "argument --udp-max-payload: must be between 512 and 4096"),
    (["serve", "--udp-max-payload", "65535"], "argument --udp-max-payload: must be between 512 and 4096"),
    (["serve", "--cache-bytes", "lots"], "argument --cache-bytes: 'lots' is not a size (e.g. 32M)"),
    (["serve", "--cache-bytes", "100K"], "argument --cache-bytes: must be at least 1M"),
    (["serve", "--workers", "2", "--shared-dir", "/nonexistent-dnsd"], "--shared-dir: '/nonexistent-dnsd' is not a directory"),
    (["serve", "--workers", "2", "--shared-dir", "/etc/hostname"], "--shared-dir: '/etc/hostname' is not a directory"),
])
def test_bad_flag_values_are_rejected(argv: list[str], message: str) -> None:
    # --http-address "" and a free port: should validation ever let one through, it cannot collide.
    extra = [] if "--port" in argv else ["--port", str(free_port())]
    result = dnsd(*argv, *extra, "--http-address", "", timeout=15) if argv[0] == "serve" else dnsd(*argv, timeout=15)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "usage: dnsd" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("variable", "value", "argv"), [
    ("DNSD_TTL", "3601", ["records"]),
    ("DNSD_TTL", "-1", ["records"]),
    ("DNSD_TTL", "five", ["records"]),
    ("DNSD_PORT", "70000", ["serve", "--http-address", ""]),
])
def test_bad_variable_values_are_rejected_like_flags(variable: str, value: str, argv: list[str]) -> None:
    result = dnsd(*argv, env=clean_env(**{variable: value}), timeout=15)
    assert "Traceback" not in result.stderr, f"{variable}={value} crashes dnsd:\n{result.stderr[-600:]}"
    assert result.returncode == 2
    assert variable in result.stderr  # the user must learn which variable is wrong


def test_bad_serve_variable_does_not_break_check() -> None:
    # `dnsd check` has no --ttl: a DNSD_TTL meant for the server must not stop it.
    result = dnsd("check", str(ZONES), env=clean_env(DNSD_TTL="99999"), timeout=15)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 0


class Served:
    """``dnsd serve`` started by hand (not through the Dnsd harness, which always passes --port)."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self._log = open(log, "w+b")  # noqa: SIM115 - open for the process's life
        self.proc = subprocess.Popen([sys.executable, "-m", "dnsd", "serve", *args], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_answering(self, name: str = "dns-version.cluster.local", rdtype: str = "TXT", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                ask(self.port, name, rdtype)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        raise AssertionError(f"no answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def serve_by_hand(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(args: list[str], env: dict[str, str], port: int) -> Served:
        served = Served(args, env, port, tmp_path / f"dnsd-{len(started)}.log")
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def test_variables_take_effect(serve_by_hand: Callable[..., Served]) -> None:
    port = free_port()
    env = clean_env(DNSD_PORT=str(port), DNSD_TTL="42", DNSD_DOMAIN="cluster.local,example.internal")
    server = serve_by_hand(["--workers", "1", "--http-address", ""], env, port)
    server.wait_answering()
    for zone in ("cluster.local", "example.internal"):
        msg = ask(port, f"web.default.svc.{zone}")
        assert answers(msg) == [f"web.default.svc.{zone}. A 10.96.0.10"]
        assert [rrset.ttl for rrset in msg.answer] == [42]
        assert rcode(ask(port, zone, "SOA")) == "NOERROR"
        assert rcode(ask(port, f"nope.default.svc.{zone}")) == "NXDOMAIN"
    assert rcode(ask(port, "web.default.svc.other.zone")) == "REFUSED"
    assert server.stop() == 0, server.log()


def test_records_follow_variables() -> None:
    result = dnsd("records", env=clean_env(DNSD_TTL="42", DNSD_DOMAIN="cluster.local,example.internal"))
    assert result.returncode == 0, result.stderr
    lines = [zone_line(line) for line in result.stdout.splitlines()]
    assert ("web.default.svc.example.internal.", 42, "IN", "A", "10.96.0.10") in lines
    assert ("web.default.svc.cluster.local.", 42, "IN", "A", "10.96.0.10") in lines


def test_flag_beats_variable() -> None:
    result = dnsd("records", "--ttl", "7", env=clean_env(DNSD_TTL="42"))
    assert result.returncode == 0, result.stderr
    assert ("web.default.svc.cluster.local.", 7, "IN", "A", "10.96.0.10") in [zone_line(x) for x in result.stdout.splitlines()]


# == dnsd records =================================================================================
def test_records_of_the_bundled_zones() -> None:
    result = dnsd("records")
    assert result.returncode == 0, result.stderr
    raw = result.stdout.splitlines()
    assert raw == sorted(raw), "zone-file lines come sorted"
    lines = [zone_line(line) for line in raw]
    assert all(name.endswith(".") and klass == "IN" for name, _, klass, _, _ in lines)
    assert (f"{WEB}.", 5, "IN", "A", "10.96.0.10") in lines
    assert ("dns-version.cluster.local.", 28800, "IN", "TXT", '"1.1.0"') in lines
    soa = [rdata.split() for name, _, _, rtype, rdata in lines if rtype == "SOA" and name == "cluster.local."]
    assert len(soa) == 1
    mname, rname, serial, *timers = soa[0]
    assert (mname, rname) == ("ns.dns.cluster.local.", "hostmaster.cluster.local.")
    assert int(serial) > 0 and timers == ["7200", "1800", "86400", "5"]
    assert ("10.0.96.10.in-addr.arpa.", 5, "IN", "PTR", f"{WEB}.") in lines
    assert ("search.shop.svc.cluster.local.", 5, "IN", "CNAME", "search.example.com.") in lines
    assert not any(rdata == "10.244.3.22" for *_, rdata in lines), "a not-ready endpoint is not a record"


def test_records_with_another_domain() -> None:
    result = dnsd("records", "--domain", "example.internal")
    assert result.returncode == 0, result.stderr
    lines = [zone_line(line) for line in result.stdout.splitlines()]
    assert ("web.default.svc.example.internal.", 5, "IN", "A", "10.96.0.10") in lines
    assert ("10.0.96.10.in-addr.arpa.", 5, "IN", "PTR", "web.default.svc.example.internal.") in lines
    assert "cluster.local" not in result.stdout


def test_records_of_a_manifest_directory(manifest_dir: Path) -> None:
    (manifest_dir / "api.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: team}\n"
        "spec: {clusterIP: 10.96.7.7, ports: [{name: grpc, port: 9000}]}\n"
    )
    result = dnsd("records", "--manifests", str(manifest_dir), "--ttl", "30")
    assert result.returncode == 0, result.stderr
    lines = [zone_line(line) for line in result.stdout.splitlines()]
    assert ("api.team.svc.cluster.local.", 30, "IN", "A", "10.96.7.7") in lines
    assert ("_grpc._tcp.api.team.svc.cluster.local.", 30, "IN", "SRV", "0 100 9000 api.team.svc.cluster.local.") in lines
    assert "web.default" not in result.stdout, "given manifests replace the bundled example"


# == dnsd check ==================================================================================
BAD_MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {name: fine, namespace: default}
spec: {clusterIP: 10.96.5.5}
---
apiVersion: v1
kind: Service
metadata: {namespace: default}
spec: {clusterIP: 10.96.5.6}
---
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: default}
spec: {clusterIP: 10.96.5.300}
---
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: default}
spec:
  clusterIP: 10.96.5.7
  ports: [{name: http, port: 70000}]
---
apiVersion: v1
kind: ServiceList
items:
  - metadata: {name: listed, namespace: default}
    spec: {clusterIP: 10.96.5.8}
  - metadata: {name: listed-bad, namespace: default}
    spec: {clusterIP: not-an-ip}
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default
spec: [
"""


def test_check_good_files() -> None:
    result = dnsd("check", str(ZONES), str(ZONES / "default.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "0 problem(s)" in result.stderr


def test_check_reports_every_bad_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MANIFEST)
    result = dnsd("check", str(bad), str(ZONES))
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    expected = [  # (document number, words the reason must contain)
        ("2", "metadata.name"),
        ("3", "bad IP address '10.96.5.300'"),
        ("4", "port 70000 out of range"),
        ("5", "items[1]"),
        ("6", "invalid YAML"),
    ]
    assert len(lines) == len(expected), result.stdout
    for line, (document, words) in zip(lines, expected, strict=True):
        match = re.fullmatch(rf"{re.escape(str(bad))}:(\d+): (.+)", line)
        assert match, line
        assert match.group(1) == document, line
        assert words in match.group(2), line
    assert "listed-bad" in lines[3] and "not-an-ip" in lines[3]
    assert "5 problem(s)" in result.stderr
    assert str(ZONES) not in result.stdout, "the good files have nothing to report"


def test_check_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = dnsd("check", str(missing))
    assert result.returncode != 0
    assert result.stdout.startswith(f"{missing}:0: ")


# == dnsd serve =====================================================================================
def test_serve_with_a_missing_manifest_path(start_dnsd: Callable[..., Dnsd], tmp_path: Path) -> None:
    # It starts, serves the zone with nothing in it, and picks the file up once it appears.
    path = tmp_path / "later.yaml"
    server = start_dnsd("--manifests", str(path))
    assert rcode(server.query(WEB)) == "NXDOMAIN"
    assert rcode(server.query("cluster.local", "SOA")) == "NOERROR"
    shutil.copy(ZONES / "default.yaml", path)
    wait_for(lambda: answers(server.query(WEB)) == [f"{WEB}. A 10.96.0.10"], timeout=5)


def test_serve_warns_about_a_missing_manifest_path(start_dnsd: Callable[..., Dnsd], tmp_path: Path) -> None:
    # `dnsd check` calls a missing path a problem; `dnsd serve` must at least say so in its log.
    path = tmp_path / "no-such-dir" / "x.yaml"
    server = start_dnsd("--manifests", str(path))
    assert rcode(server.query(WEB)) == "NXDOMAIN"
    log = server.log()
    assert str(path) in log and re.search(r"(WARNING|ERROR).*" + re.escape(str(path)), log), log


def test_serve_picks_up_a_manifest_whose_directory_appears_later(start_dnsd: Callable[..., Dnsd], tmp_path: Path) -> None:
    # --manifests promises hot reload; today the watcher gives up at start when the directory is missing.
    path = tmp_path / "later" / "x.yaml"
    server = start_dnsd("--manifests", str(path))
    path.parent.mkdir()
    shutil.copy(ZONES / "default.yaml", path)
    wait_for(lambda: answers(server.query(WEB)) == [f"{WEB}. A 10.96.0.10"], timeout=2)


# == workers ===================================================================================
def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: no psutil)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def udp_socket_owners(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a UDP socket bound to ``port`` (/proc/net/udp inode -> /proc/PID/fd)."""
    inodes = set()
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    owners.add(pid)
            except OSError:
                continue
    return owners


def http_up(server: Dnsd) -> bool:
    try:
        return server.http("/ready")[0] == 200
    except OSError:  # URLError included: the supervisor opens HTTP a moment after the workers get their data
        return False


def requests_total(server: Dnsd) -> float:
    _, body = server.http("/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith("coredns_dns_requests_total{"))


def test_two_workers_share_the_port_and_stop_cleanly(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd(workers=2)
    wait_for(lambda: answers(server.query(WEB)), timeout=10)  # the workers get the data shortly after listening
    wait_for(lambda: http_up(server), timeout=10)
    # The main process answers too; the other worker was forked by a zygote, which exits once its
    # workers run: the worker is then the main process's only child, and has none of its own.
    wait_for(lambda: len(children(server.proc.pid)) == 1 and not children(children(server.proc.pid)[0]), timeout=10)
    workers = [server.proc.pid, *children(server.proc.pid)]
    assert udp_socket_owners(server.port, workers) == set(workers), "each worker has its own socket on the port"

    before = requests_total(server)
    for _ in range(200):  # a new socket (source port) per query: the kernel spreads them over both workers
        assert answers(server.query(WEB)) == [f"{WEB}. A 10.96.0.10"]
    for _ in range(20):
        assert answers(server.query(WEB, tcp=True)) == [f"{WEB}. A 10.96.0.10"]
    wait_for(lambda: requests_total(server) >= before + 220, timeout=10)  # workers report every second

    everyone = {pid: cmdline(pid) for pid in workers[1:]}
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0, server.log()
    # Gone, or (pid reused) running something else: no orphan is left behind.
    wait_for(lambda: not [pid for pid, cmd in everyone.items() if cmdline(pid) == cmd], timeout=10)
    with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):
        ask(server.port, WEB, tcp=True)


def test_workers_never_answer_servfail_for_manifest_data() -> None:
    # One process loads manifests before it listens; with workers, the port must not answer sooner either.
    server = Dnsd(workers=2)
    query = dns.message.make_query(WEB, "A")
    try:
        replies: list[str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((server.address, server.port))  # connected: "not listening yet" is an immediate error
            sock.settimeout(0.2)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (replies and replies[-1] == "NOERROR"):
                assert server.proc.poll() is None, server.log()
                try:
                    sock.send(query.to_wire())
                    replies.append(rcode(dns.message.from_wire(sock.recv(65535))))
                except (TimeoutError, ConnectionRefusedError):
                    time.sleep(0.01)
        assert replies and replies[-1] == "NOERROR", server.log()
        assert "SERVFAIL" not in replies, f"{replies.count('SERVFAIL')} SERVFAIL before the first answer"
    finally:
        assert server.stop() == 0, server.log()


def test_port_in_use_is_reported() -> None:
    # Held by a socket that does not share it (no SO_REUSEPORT). Another dnsd shares it: test_handover.py.
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        result = dnsd("serve", "--port", str(port), "--workers", "1", "--http-address", "", "--upstream", "none",
                      timeout=20)
    assert result.returncode != 0
    assert f"cannot listen on port {port}" in result.stderr
