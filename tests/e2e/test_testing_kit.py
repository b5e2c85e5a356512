"""dnsd.testing as a user's suite meets it: DnsServer, its resolver and getaddrinfo patch, the pytest
plugin (through pytester, as a separate project loads it), ``dnsd wait`` and ``POST /reload``."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
import yaml

from dnsd.testing import DnsServer
from tests.helpers import ROOT, Dnsd, answers, free_port, rcode

pytest_plugins = ["pytester"]

Z = "cluster.local"


def service(name: str, ip: str, ns: str = "default", **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}], **spec}}


def addresses(srv: DnsServer, name: str, namespace: str = "default", rdtype: str = "A") -> list[str]:
    """The addresses a pod in ``namespace`` gets; [] when the search list finds nothing (the last try, the
    name as it is, is outside the zones: REFUSED with upstream None, as a pod's DNS server that cannot forward)."""
    try:
        return sorted(str(r) for r in srv.resolver(namespace).resolve(name, rdtype))
    except dns.resolver.NXDOMAIN:
        return []
    except dns.resolver.NoNameservers as exc:
        assert "REFUSED" in str(exc)
        return []


def ask(srv: DnsServer, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    import dns.query

    send = dns.query.tcp if tcp else dns.query.udp
    return send(dns.message.make_query(name, rdtype), srv.host, port=srv.port, timeout=2)


@pytest.fixture(scope="module")
def srv() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def clean(srv: DnsServer) -> DnsServer:
    srv.reset()
    return srv


# == DnsServer ===========================================================================
def test_starts_within_a_second_and_leaves_nothing() -> None:
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    before = set(tmp.glob("dnsd-testing-*"))
    started = time.perf_counter()
    with DnsServer() as server:
        seconds = time.perf_counter() - started
        pid, port = server.pid, server.port
        assert server.running and rcode(ask(server, f"dns-version.{Z}", "TXT")) == "NOERROR"
        assert rcode(ask(server, "example.com")) == "REFUSED"  # upstream None: never forwarded
        assert len(set(tmp.glob("dnsd-testing-*")) - before) == 1
    assert seconds < 1.0, seconds
    assert not server.running and not Path(f"/proc/{pid}").exists()
    assert set(tmp.glob("dnsd-testing-*")) - before == set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))


def test_manifests_as_a_path_text_dict_or_list(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text(yaml.safe_dump(service("a", "10.96.0.1")))
    (tmp_path / "b.json").write_text(json.dumps({"kind": "List", "items": [service("b", "10.96.0.2")]}))
    text = yaml.safe_dump_all([service("c", "10.96.0.3"), service("d", "10.96.0.4", ns="shop")])
    for source, expected in [
        (tmp_path, {"a": "10.96.0.1", "b": "10.96.0.2"}),
        (str(tmp_path / "b.json"), {"b": "10.96.0.2"}),
        (text, {"c": "10.96.0.3", "d.shop": "10.96.0.4"}),
        (service("e", "10.96.0.5"), {"e": "10.96.0.5"}),
        ([service("f", "10.96.0.6"), service("g", "10.96.0.7")], {"f": "10.96.0.6", "g": "10.96.0.7"}),
    ]:
        with DnsServer(source) as server:
            for name, ip in expected.items():
                assert addresses(server, name) == [ip], (source, name)


def test_apply_and_delete_are_served_before_they_return(clean: DnsServer) -> None:
    srv = clean
    for i in range(1, 31):  # no sleep anywhere: each change is seen by the very next query
        srv.apply(service("web", f"10.96.1.{i}"))
        assert answers(ask(srv, f"web.default.svc.{Z}")) == [f"web.default.svc.{Z}. A 10.96.1.{i}"]
    srv.apply(yaml.safe_dump_all([service("api", "10.96.2.1", ns="shop"), {"kind": "Namespace", "metadata": {"name": "shop"}}]))
    assert addresses(srv, "api", "shop") == ["10.96.2.1"]
    srv.delete("Service", "web")
    assert rcode(ask(srv, f"web.default.svc.{Z}")) == "NXDOMAIN"
    srv.delete("service", "api", namespace="shop")
    assert rcode(ask(srv, f"api.shop.svc.{Z}")) == "NXDOMAIN"


def test_changes_reach_every_worker_before_return() -> None:
    with DnsServer(workers=2) as srv:
        for i in range(1, 21):
            srv.apply([service(f"w{n}", f"10.96.3.{i}") for n in range(6)])  # names steered to both processes
            for n in range(6):
                for tcp in (False, True):
                    assert answers(ask(srv, f"w{n}.default.svc.{Z}", tcp=tcp)) == [f"w{n}.default.svc.{Z}. A 10.96.3.{i}"]


def test_bad_objects_raise_and_change_nothing(clean: DnsServer) -> None:
    srv = clean
    srv.apply(service("web", "10.96.4.1"))
    good_and_bad = yaml.safe_dump_all([service("web", "10.96.4.2"), service("db", "10.96.4.300")])
    with pytest.raises(ValueError, match=r"document 2: Service default/db: bad IP address '10.96.4.300'"):
        srv.apply(good_and_bad)
    for bad, message in [
        ({"kind": "Servce", "metadata": {"name": "x"}}, "kind 'Servce' is not one dnsd reads: did you mean Service"),
        ({"metadata": {"name": "x"}}, "no kind"),
        ([service("ok", "10.96.4.3"), "text"], r"\[1\]: not a Kubernetes object"),
        (service("Web", "10.96.4.4"), "Service default/Web: metadata.name"),
        ({**service("web", "10.96.4.5"), "spec": {"clusterIP": "10.96.4.5", "ports": [{"port": 70000}]}}, "out of range"),
        ({"kind": "EndpointSlice", "metadata": {"name": "s"}, "endpoints": []}, "kubernetes.io/service-name"),
        ("kind: Service\nmetadata: {name: web\n", "invalid YAML"),
    ]:
        with pytest.raises(ValueError, match=message):
            srv.apply(bad)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        srv.apply("no-such-dir/x.yaml")
    assert addresses(srv, "web") == ["10.96.4.1"] and addresses(srv, "ok") == []
    srv.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})  # not read: left out


def test_deleting_what_is_not_there(clean: DnsServer) -> None:
    clean.apply(service("web", "10.96.5.1"))
    with pytest.raises(KeyError, match="Service shop/web is not in the cluster"):
        clean.delete("Service", "web", namespace="shop")
    with pytest.raises(ValueError, match="dnsd holds only"):
        clean.delete("Deployment", "web")
    clean.delete("Service", "web")
    with pytest.raises(KeyError, match="Service default/web"):
        clean.delete("Service", "web")


def test_options_are_flags_and_unknown_ones_are_refused() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'wrokers'.*did you mean 'workers'"):
        DnsServer(wrokers=2)
    with pytest.raises(TypeError, match="'port': DnsServer picks a free port"):
        DnsServer(port=53)
    with pytest.raises(TypeError, match="'autopath' is a switch"):
        DnsServer(autopath="yes")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="--ttl"):
        DnsServer(ttl=99999).start()
    assert time.monotonic() - started < 5
    with DnsServer(service("web", "10.96.6.1", ns="shop"), domain="example.internal", ttl=30,
                   namespace=["shop", "other"], no_loadbalance=True) as server:
        reply = ask(server, "web.shop.svc.example.internal")
        assert answers(reply) == ["web.shop.svc.example.internal. A 10.96.6.1"] and reply.answer[0].ttl == 30
        assert server.resolver("shop").resolve("web").rrset[0].address == "10.96.6.1"


def test_a_server_that_dies_is_a_clear_error_not_a_hang() -> None:
    server = DnsServer(service("web", "127.0.0.1")).start()
    try:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while server.running and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"dnsd is not running \(it exited with status -9\)"):
            server.apply(service("web", "127.0.0.2"))
        with pytest.raises(RuntimeError, match="not running"):
            server.delete("Service", "web")
        with pytest.raises(RuntimeError, match="not running"):
            server.patch_getaddrinfo()
        assert time.monotonic() - started < 1
    finally:
        server.stop()
    with DnsServer(service("web", "127.0.0.1")) as server, server.patch_getaddrinfo():
        assert server.pid is not None
        resolver = server.resolver()
        os.kill(server.pid, signal.SIGKILL)
        started = time.monotonic()  # not yet reaped, or gone: "not running" either way
        with pytest.raises(socket.gaierror, match="not running"):
            socket.getaddrinfo("web", 80)
        with pytest.raises(dns.exception.Timeout):
            resolver.resolve("web")
        assert time.monotonic() - started < 8  # at most a query's 2 s, then the resolver's 3 s lifetime


# == the resolver and getaddrinfo ==========================================================
def test_resolver_searches_as_a_pod(clean: DnsServer) -> None:
    clean.apply([service("web", "10.96.7.1", ns="shop"), service("web", "10.96.7.2")])
    assert addresses(clean, "web", "shop") == ["10.96.7.1"]
    assert addresses(clean, "web") == ["10.96.7.2"]
    assert addresses(clean, "web.shop") == ["10.96.7.1"]
    resolver = clean.resolver("shop")
    assert resolver.ndots == 5 and resolver.use_search_by_default
    assert [str(n) for n in resolver.search] == [f"shop.svc.{Z}.", f"svc.{Z}.", f"{Z}."]
    assert resolver.resolve("_http._tcp.web", "SRV").rrset[0].port == 80


@pytest.fixture
def web_server() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering 'hello from <path>'."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_urllib_reaches_a_local_server_by_its_cluster_name(clean: DnsServer, web_server: int) -> None:
    clean.apply(service("orders", "127.0.0.1", ns="shop"))
    original = socket.getaddrinfo
    with clean.patch_getaddrinfo("shop"):
        assert socket.getaddrinfo is not original
        for host in ("orders", "orders.shop", f"orders.shop.svc.{Z}", "127.0.0.1"):
            with urllib.request.urlopen(f"http://{host}:{web_server}/{host}", timeout=5) as reply:
                assert reply.read().decode() == f"hello from /{host}"
        with pytest.raises(urllib.error.URLError, match="Name or service not known"):
            urllib.request.urlopen(f"http://missing.shop.svc.{Z}:{web_server}/", timeout=5)
    assert socket.getaddrinfo is original


def test_asyncio_getaddrinfo_and_connections_go_through_the_patch(clean: DnsServer, web_server: int) -> None:
    clean.apply(service("orders", "127.0.0.1", ns="shop"))

    async def fetch() -> tuple[list, bytes]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo("orders", web_server, type=socket.SOCK_STREAM)
        reader, writer = await asyncio.open_connection("orders.shop", web_server)
        writer.write(b"GET /async HTTP/1.0\r\nHost: orders\r\n\r\n")
        body = await reader.read()
        writer.close()
        return infos, body

    with clean.patch_getaddrinfo("shop"):
        infos, body = asyncio.run(fetch())  # the default loop: getaddrinfo in its executor
    assert infos == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", web_server))]
    assert body.endswith(b"hello from /async")


def test_aiohttp_and_requests_reach_it_too(clean: DnsServer, web_server: int) -> None:
    import aiohttp

    clean.apply(service("orders", "127.0.0.1", ns="shop"))

    async def fetch() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"http://orders:{web_server}/aiohttp") as reply:
            return await reply.text()

    with clean.patch_getaddrinfo("shop"):
        assert asyncio.run(fetch()) == "hello from /aiohttp"  # its default resolver: loop.getaddrinfo
        requests = pytest.importorskip("requests")
        assert requests.get(f"http://orders.shop:{web_server}/requests", timeout=5).text == "hello from /requests"


def test_httpx_and_psycopg_when_installed(clean: DnsServer, web_server: int) -> None:
    """Not in the test extra: run where they are installed (psycopg 3.2+ resolves in Python, then hands libpq the address)."""
    httpx = pytest.importorskip("httpx")
    conninfo = pytest.importorskip("psycopg.conninfo")
    clean.apply(service("orders", "127.0.0.1", ns="shop"))

    async def fetch() -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://orders.shop:{web_server}/httpx-async")).text

    with clean.patch_getaddrinfo("shop"):
        assert httpx.get(f"http://orders:{web_server}/httpx").text == "hello from /httpx"
        assert asyncio.run(fetch()) == "hello from /httpx-async"
        attempts = conninfo.conninfo_attempts(conninfo.conninfo_to_dict("host=orders port=5432"))
        assert [a["hostaddr"] for a in attempts] == ["127.0.0.1"]


@pytest.mark.parametrize("family", [0, socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("kind", [0, socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_getaddrinfo_has_the_real_shape(srv: DnsServer, family: int, kind: int) -> None:
    srv.reset(service("dual", "10.96.8.1", ns="shop", clusterIPs=["10.96.8.1", "fd00::8:1"], ipFamilies=["IPv4", "IPv6"]))
    real = socket.getaddrinfo
    with srv.patch_getaddrinfo("shop"):
        got = socket.getaddrinfo("dual", 8080, family, kind)
    want = [info for ip in ("10.96.8.1", "fd00::8:1") if family in (0, socket.AF_INET6 if ":" in ip else socket.AF_INET)
            for info in real(ip, 8080, family, kind)]
    assert got == want


def test_getaddrinfo_flags_ports_and_other_names(clean: DnsServer) -> None:
    def alias(name: str, target: str) -> dict:
        return {"kind": "Service", "metadata": {"name": name}, "spec": {"type": "ExternalName", "externalName": target}}

    clean.apply([service("web", "10.96.9.1"), alias("alias", f"web.default.svc.{Z}"), alias("local", "localhost")])
    real = socket.getaddrinfo
    with clean.patch_getaddrinfo():
        assert socket.getaddrinfo("web", "http", socket.AF_INET, flags=socket.AI_CANONNAME)[0][3] == f"web.default.svc.{Z}"
        assert socket.getaddrinfo("alias", 80, socket.AF_INET, socket.SOCK_STREAM, flags=socket.AI_CANONNAME) == [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, f"web.default.svc.{Z}", ("10.96.9.1", 80))]
        assert socket.getaddrinfo(f"web.default.svc.{Z}.", 80, socket.AF_INET6, socket.SOCK_STREAM,
                                  flags=socket.AI_V4MAPPED)[0][4] == ("::ffff:10.96.9.1", 80, 0, 0)
        assert socket.getaddrinfo("local", 80, socket.AF_INET, socket.SOCK_STREAM) == real("localhost", 80, socket.AF_INET,
                                                                                            socket.SOCK_STREAM)
        assert socket.getaddrinfo("localhost", 80) == real("localhost", 80)  # not in the zones: the real resolver
        assert socket.getaddrinfo("::1", 80) == real("::1", 80)
        assert socket.getaddrinfo(None, 80, flags=socket.AI_PASSIVE) == real(None, 80, flags=socket.AI_PASSIVE)
        for args in [("web", "no-such-service"), ("web", 80, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST)]:
            with pytest.raises(socket.gaierror) as patched_error:
                socket.getaddrinfo(*args)
            with pytest.raises(socket.gaierror) as real_error:
                real("127.0.0.1" if args[1] == "no-such-service" else "web", *args[1:])
            assert patched_error.value.errno == real_error.value.errno
        with pytest.raises(socket.gaierror) as missing:
            socket.getaddrinfo(f"nope.default.svc.{Z}", 80)
        assert missing.value.errno == socket.EAI_NONAME


# == the pytest plugin, as another project uses it ==========================================
PLUGIN_TESTS = '''
import socket, pytest

SVC = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"clusterIP": "10.96.10.1"}}

def a(server, name, ns="shop"):
    import dns.resolver
    try:
        return [r.address for r in server.resolver(ns).resolve(name)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        return []

def test_starts_empty_and_applies(dnsd_server):
    assert a(dnsd_server, "web") == [] and a(dnsd_server, "db") == []
    dnsd_server.apply(SVC)
    assert a(dnsd_server, "web") == ["10.96.10.1"]

def test_the_next_test_starts_clean(dnsd_server):
    assert a(dnsd_server, "web") == []

@pytest.mark.dnsd_manifests("manifests/db.yaml", {**SVC, "spec": {"clusterIP": "10.96.10.2"}})
def test_marker_preloads(dnsd_server):
    assert a(dnsd_server, "db") == ["10.96.10.3"] and a(dnsd_server, "web") == ["10.96.10.2"]
    assert a(dnsd_server, "shared") == ["10.96.10.9"]

@pytest.mark.dnsd_options(workers=2, domain="example.internal")
def test_options_give_a_server_of_its_own(dnsd_server):
    dnsd_server.apply(SVC)
    assert dnsd_server.resolver("shop").resolve("web").canonical_name.to_text() == "web.shop.svc.example.internal."

def test_getaddrinfo(dnsd_server):
    dnsd_server.apply(SVC)
    with dnsd_server.patch_getaddrinfo("shop"):
        assert socket.getaddrinfo("web", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4] == ("10.96.10.1", 80)

def test_a_killed_server(dnsd_server):
    import os, signal
    os.kill(dnsd_server.pid, signal.SIGKILL)

def test_after_the_killed_one(dnsd_server):
    dnsd_server.apply(SVC)
    assert a(dnsd_server, "web") == ["10.96.10.1"] and a(dnsd_server, "db") == []
'''


def _project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndnsd_manifests = shared.yaml\n")
    pytester.makefile(".yaml", shared=yaml.safe_dump(service("shared", "10.96.10.9", ns="shop")))
    (pytester.path / "manifests").mkdir()
    (pytester.path / "manifests" / "db.yaml").write_text(yaml.safe_dump(service("db", "10.96.10.3", ns="shop")))
    pytester.makepyfile(test_app=PLUGIN_TESTS)


def test_plugin_through_pytester(pytester: pytest.Pytester) -> None:
    _project(pytester)
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=7)
    markers = pytester.runpytest("--markers").stdout.str()
    assert "@pytest.mark.dnsd_manifests(*sources)" in markers and "@pytest.mark.dnsd_options(**options)" in markers


def test_plugin_from_the_installed_package_in_a_fresh_interpreter(pytester: pytest.Pytester) -> None:
    probe = "import dnsd, sys; sys.stdout.write(dnsd.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    installed = subprocess.run([sys.executable, "-c", probe], cwd=pytester.path, capture_output=True, text=True,
                               env=env).stdout
    ours = sorted((ROOT / "dnsd" / "testing").glob("*.py"))
    theirs = Path(installed).parent / "testing" if installed else None
    if theirs is None or any(not (theirs / p.name).is_file() or (theirs / p.name).read_bytes() != p.read_bytes()
                             for p in ours):
        pytest.skip(f"the installed dnsd ({installed or 'none'}) is not this checkout's: pip install . first")
    _project(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)


def test_per_test_overhead_of_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_many="""
import pytest
@pytest.mark.parametrize("i", range(40))
def test_with(dnsd_server, i): pass
@pytest.mark.parametrize("i", range(40))
def test_without(i): pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "--durations=0", "-vv")
    result.assert_outcomes(passed=80)
    setups = [float(line.split("s", 1)[0]) for line in result.outlines if " setup " in line and "test_with[" in line
              and "[0]" not in line]
    assert setups and max(setups) < 0.5, setups


# == dnsd wait, POST /reload ===============================================================
def dnsd_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNSD_")}
    return subprocess.run([sys.executable, "-m", "dnsd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env=env)


def test_dnsd_wait(srv: DnsServer) -> None:
    ok = dnsd_cmd("wait", "--http", f"127.0.0.1:{srv.http_port}", "--dns", f"127.0.0.1:{srv.port}", "--timeout", "5")
    assert ok.returncode == 0, ok.stderr
    closed = free_port()
    started = time.monotonic()
    late = dnsd_cmd("wait", "--http", f"127.0.0.1:{closed}", "--dns", f"127.0.0.1:{closed}", "--timeout", "0.5")
    assert late.returncode == 1 and time.monotonic() - started < 5
    assert f"not ready after 0.5 s: http://127.0.0.1:{closed}/ready:" in late.stderr and "A at 127.0.0.1" in late.stderr
    usage = dnsd_cmd("wait")
    assert usage.returncode == 2 and "--http" in usage.stderr


def test_reload_endpoint(start_dnsd, manifest_dir: Path, kubeconfig: str) -> None:
    good = manifest_dir / "good.yaml"
    good.write_text(yaml.safe_dump(service("web", "10.96.11.1")))
    server: Dnsd = start_dnsd("--manifests", str(manifest_dir))

    def post(target: Dnsd) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{target.http_port}/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=15) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    good.write_text(yaml.safe_dump(service("web", "10.96.11.2")))
    assert post(server) == (200, "reloaded\n")
    assert answers(server.query(f"web.default.svc.{Z}")) == [f"web.default.svc.{Z}. A 10.96.11.2"]
    (manifest_dir / "bad.yaml").write_text("kind: Service\nmetadata: {name: x}\nspec: {clusterIP: 1.2.3.400}\n")
    status, body = post(server)
    assert status == 422 and f"{manifest_dir / 'bad.yaml'}:1: Service default/x: bad IP address" in body
    assert server.http("/reload")[0] == 405
    api_only = start_dnsd("--kubeconfig", kubeconfig)
    assert post(api_only)[0] == 409


# == docs/testing.md's compose example ========================================================
def test_compose_example_parses_and_its_manifests_check() -> None:
    compose_dir = ROOT / "examples" / "compose"
    compose = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    dnsd_ip = compose["services"]["dnsd"]["networks"]["app"]["ipv4_address"]
    assert compose["services"]["app"]["dns"] == [dnsd_ip]
    command = compose["services"]["dnsd"]["command"]
    assert command[command.index("--upstream") + 1] == "127.0.0.11"  # its own embedded DNS
    result = dnsd_cmd("check", str(compose_dir / "manifests"))
    assert result.returncode == 0, result.stdout + result.stderr
