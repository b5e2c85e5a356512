"""A real DNS server as the upstream: Knot DNS (Debian ``knot``) serving ``example.test`` on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import pytest
from conftest import Dnsd, answers, free_port, rcode

ZONE = """$ORIGIN example.test.
$TTL 300
@       SOA ns.example.test. hostmaster.example.test. 1 7200 900 86400 60
@       NS  ns
ns      A   127.0.0.1
www     A   192.0.2.80
www     AAAA 2001:db8::80
alias   CNAME www
mail    MX  10 www
big     TXT {txt}
"""


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("knot")
    for sub in ("run", "storage"):
        (tmp / sub).mkdir()
    # 25 strings of 200 bytes: ~5 KB, over UDP's 1232 bytes, so it reaches dnsd by TCP
    txt = " ".join(f'"{chr(97 + i) * 200}"' for i in range(25))
    (tmp / "example.test.zone").write_text(ZONE.format(txt=txt))
    port = free_port()
    conf = tmp / "knot.conf"
    conf.write_text(
        f"server:\n    rundir: {tmp / 'run'}\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n"
        f"    background-workers: 1\ndatabase:\n    storage: {tmp / 'storage'}\n"
        "log:\n  - target: stderr\n    any: warning\n"
        "template:\n  - id: default\n    zonefile-sync: -1\n    journal-content: none\n"
        f"zone:\n  - domain: example.test\n    file: {tmp / 'example.test.zone'}\n"
    )
    log = open(tmp / "knot.log", "wb")  # noqa: SIM115 - open for the process's life
    proc = subprocess.Popen(["knotd", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            dns.query.udp(dns.message.make_query("example.test", "SOA"), "127.0.0.1", port=port, timeout=0.3)
            break
        except (dns.exception.Timeout, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"knotd did not start: {Path(tmp / 'knot.log').read_text()}")
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_knot_as_upstream(start_dnsd: Callable[..., Dnsd], knot: int, tcp: bool) -> None:
    server = start_dnsd("--upstream", f"127.0.0.1:{knot}")
    msg = server.query("WWW.example.test", tcp=tcp)
    assert answers(msg) == ["WWW.example.test. A 192.0.2.80"]
    assert answers(server.query("www.example.test", "AAAA", tcp=tcp)) == ["www.example.test. AAAA 2001:db8::80"]
    nx = server.query("nope.example.test", tcp=tcp)
    assert rcode(nx) == "NXDOMAIN" and nx.authority and nx.authority[0].ttl <= 60
    assert rcode(server.query("www.example.test", "MX", tcp=tcp)) == "NOERROR"  # NODATA passes through
    # ~5 KB: Knot truncates over UDP, dnsd asks again by TCP; a 4096-byte EDNS client still gets TC
    # (5 KB > 4096) and the whole answer over TCP
    big = server.query("big.example.test", "TXT", use_edns=0, payload=4096, tcp=tcp)
    if tcp:
        assert len(list(big.answer[0])) == 1 and not big.flags & dns.flags.TC
    else:
        assert big.flags & dns.flags.TC
    assert answers(server.query("web.default.svc.cluster.local", tcp=tcp)) == ["web.default.svc.cluster.local. A 10.96.0.10"]


def test_knot_big_answer_over_dig(start_dnsd: Callable[..., Dnsd], knot: int) -> None:
    server = start_dnsd("--upstream", f"127.0.0.1:{knot}")
    out = server.dig("big.example.test", "TXT")
    assert "status: NOERROR" in out and "a" * 200 in out, out


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_autopath_through_knot(start_dnsd: Callable[..., Dnsd], knot: int, tcp: bool) -> None:
    """Knot's replies (compressed, a CNAME chain, additional addresses) moved behind the asked name."""
    server = start_dnsd("--upstream", f"127.0.0.1:{knot}", "--autopath", "--autopath-search", "example.test")
    alias = server.query("Alias.default.svc.cluster.local", tcp=tcp)
    assert answers(alias) == ["Alias.default.svc.cluster.local. CNAME alias.example.test.",
                              "alias.example.test. CNAME www.example.test.", "www.example.test. A 192.0.2.80"]
    mx = server.query("mail.default.svc.cluster.local", "MX", tcp=tcp)
    assert answers(mx) == ["mail.default.svc.cluster.local. CNAME mail.example.test.",
                           "mail.example.test. MX 10 www.example.test."]
    assert sorted(f"{rr.name} {rd}" for rr in mx.additional for rd in rr) == [
        "www.example.test. 192.0.2.80", "www.example.test. 2001:db8::80"]
    assert rcode(server.query("nope.default.svc.cluster.local", tcp=tcp)) == "NXDOMAIN"
