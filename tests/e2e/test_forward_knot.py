"""A real DNS server as the upstream: Knot DNS (Debian ``knot``) serving ``example.test`` on loopback."""

from __future__ import annotations

import collections
import multiprocessing
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import pytest

from tests.e2e.test_forward import metric
from tests.helpers import Dnsd, answers, free_port, rcode

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


def _external_flood(port: int, seconds: float, rate: int, result: Any) -> None:
    """In its own process (a thread would share the probe's GIL): unique names under example.test
    at ``rate``/s, open loop (never waiting for answers); counts the answers by rcode."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS 0, 1232 bytes
    sent, rcodes, sample = 0, collections.Counter(), b""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds + 0.5:
        due = int(min(elapsed, seconds) * rate)
        while sent < due:
            name = f"f{sent}".encode()
            query = (sent & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + bytes(
                (len(name),)) + name + b"\x05flood\x07example\x04test\x00\x00\x01\x00\x01" + opt
            try:
                sock.send(query)
            except BlockingIOError:
                break
            sent += 1
        try:
            while True:
                reply = sock.recv(1500)
                rcodes[reply[3] & 0x0F] += 1
                if reply[3] & 0x0F == 5 and not sample:
                    sample = reply
        except (BlockingIOError, ConnectionRefusedError):
            pass
        time.sleep(0.0005)
    result.put((sent, dict(rcodes), sample))


@pytest.mark.parametrize("shed_on", [True, False], ids=["shed", "shed-off"])
def test_a_flood_of_external_names_is_shed_and_cluster_names_stay_fast(start_dnsd: Callable[..., Dnsd], knot: int,
                                                                        shed_on: bool) -> None:
    """Unique external names faster than dnsd can forward them (open loop, 3 s, bounded): the
    forwards that would queue are answered REFUSED at once, and a cluster name asked meanwhile is
    answered fast. (bench/forward measures the same at full speed; see bench/README.md.)"""
    server = start_dnsd("--upstream", f"127.0.0.1:{knot}", "--shed-after", "2" if shed_on else "0")
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    sender = ctx.Process(target=_external_flood, args=(server.port, 3.0, 12_000, result))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("127.0.0.1", server.port))
    probe.settimeout(0.5)
    latencies: list[float] = []
    sender.start()
    try:
        deadline = time.monotonic() + 3.0
        qid = 0
        while time.monotonic() < deadline:
            qid += 1
            started = time.monotonic()
            query = dns.message.make_query("web.default.svc.cluster.local", "A")
            query.id = qid
            probe.send(query.to_wire())
            latency = float("inf")
            try:
                while True:
                    reply = probe.recv(1500)
                    if int.from_bytes(reply[:2], "big") == qid:
                        latency = time.monotonic() - started
                        break
            except TimeoutError:
                pass
            latencies.append(latency)
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))
        sent, rcodes, sample = result.get(timeout=15)
    finally:
        sender.join(5)
        if sender.is_alive():
            sender.kill()
        probe.close()
    shed = metric(server, "dnsd_forward_shed_total") + metric(server, "coredns_forward_max_concurrent_rejects_total")
    if not shed_on:
        # --shed-after 0: nothing shed (over max_concurrent is still REFUSED, as in CoreDNS)
        assert metric(server, "dnsd_forward_shed_total") == 0
        return
    forwarded = rcodes.get(3, 0)  # NXDOMAIN: Knot's answer for the unique names
    assert sent > 20_000, sent
    assert forwarded > 0, rcodes
    # Saturated (this machine forwards ~6k/s per core): the rest was shed, and said so. A machine
    # fast enough to forward all of it would have nothing to shed.
    assert shed > 0 or forwarded > 0.95 * sent, (sent, rcodes, shed)
    if shed:
        assert 0 < rcodes.get(5, 0) <= shed, (rcodes, shed)  # (a few replies may be lost in the sender's buffer)
        refused = dns.message.from_wire(sample)
        assert rcode(refused) == "REFUSED" and refused.edns == 0, "the shed reply carries the question and OPT"
        assert str(refused.question[0].name).endswith(".flood.example.test.")
    fast = sorted(latencies)
    print(f"flood: {sent} sent, rcodes {rcodes}, {shed:.0f} shed; cluster name p50 {fast[len(fast) // 2] * 1000:.2f} ms, "
          f"p99 {fast[int(len(fast) * 0.99)] * 1000:.2f} ms over {len(fast)} probes")
    within = sum(1 for x in fast if x <= 0.05)
    assert within >= 0.97 * len(fast), f"{within}/{len(fast)} cluster answers within 50 ms: {fast[-10:]}"
    assert fast[len(fast) // 2] < 0.01, f"cluster-name median {fast[len(fast) // 2] * 1000:.1f} ms"
    # shed work is not lost work: the server still forwards once the flood is over
    assert rcode(server.query("www.example.test")) == "NOERROR"
