"""Forwarding, the forward cache and serve-stale, against a scripted upstream on loopback,
asked over UDP and TCP by real clients (dnspython, dig)."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, answers, free_port, rcode, wait_for

EXT = "www.example.com"
FAST = ["--upstream-timeout", "0.4", "--forward-timeout", "1.0", "--policy", "sequential"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream2() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.address = "192.0.2.2"
        yield server


def ttls(msg: dns.message.Message) -> list[int]:
    return [rrset.ttl for rrset in msg.answer]


def metric(server: Dnsd, name: str, labels: str = "") -> float:
    _, body = server.http("/metrics")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_forwards_and_caches(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream, tcp: bool) -> None:
    server = start_dnsd("--upstream", upstream.server, *FAST)
    msg = server.query("WWW.Example.com", tcp=tcp)
    assert rcode(msg) == "NOERROR"
    assert answers(msg) == ["WWW.Example.com. A 192.0.2.1"]  # the asker's spelling comes back
    assert msg.flags & dns.flags.RA
    assert upstream.count(EXT) == 1
    first = next(s for s in upstream.seen if s.name.lower() == "www.example.com.")  # (the loop probes come too)
    assert first.name == "www.example.com." and first.rd and first.edns  # asked in lower case, RD, EDNS
    # cluster names are still ours
    assert answers(server.query("web.default.svc.cluster.local", tcp=tcp)) == ["web.default.svc.cluster.local. A 10.96.0.10"]
    time.sleep(1.1)
    again = server.query(EXT, tcp=tcp)
    assert answers(again) == [f"{EXT}. A 192.0.2.1"]
    assert upstream.count(EXT) == 1, "the second answer comes from the cache"
    assert 290 <= ttls(again)[0] <= 299, "TTLs count down with the entry's age"
    assert metric(server, "coredns_cache_hits_total") >= 1
    assert metric(server, "coredns_forward_requests_total") == 1


def test_dig_gets_forwarded_answers(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, *FAST)
    for extra in ([], ["+tcp"], ["+noedns"]):
        out = server.dig(EXT, *extra)
        assert "status: NOERROR" in out and "192.0.2.1" in out, out


def test_every_upstream_query_has_a_fresh_id_and_source_port(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    ports: list[int] = []
    server = start_dnsd("--upstream", upstream.server, *FAST)
    original = upstream._udp

    def record(data: bytes, sock: socket.socket, client: tuple[str, int]) -> None:
        ports.append(client[1])
        original(data, sock, client)

    upstream._udp = record  # type: ignore[method-assign]
    for i in range(30):
        assert rcode(server.query(f"n{i}.example.com")) == "NOERROR"
    ids = [s.qid for s in upstream.seen if s.name.startswith("n")]
    assert len(ids) == 30 and len(set(ids)) >= 28
    assert len(set(ports)) >= 28


def test_concurrent_upstream_queries_each_have_their_own_random_port(start_dnsd: Callable[..., Dnsd],
                                                                     upstream: FakeUpstream) -> None:
    """The sockets are opened ahead of need (sockets.py), yet every query still has its own socket
    on a port the kernel picked at random: ports hardly repeat, consecutive queries are not on
    neighbouring ports, and the IDs are random too."""
    ports: list[int] = []
    server = start_dnsd("--upstream", upstream.server, *FAST)
    original = upstream._udp

    def record(data: bytes, sock: socket.socket, client: tuple[str, int]) -> None:
        if b"\x07example\x03com\x00" in data:
            ports.append(client[1])
        original(data, sock, client)

    upstream._udp = record  # type: ignore[method-assign]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: server.query(f"c{i}.example.com", timeout=5), range(200)))
    assert all(rcode(m) == "NOERROR" for m in replies), sorted(rcode(m) for m in replies)[:5]
    seen = [s for s in upstream.seen if s.name.endswith(".example.com.") and s.proto == "udp"]
    assert len(seen) == 200 and len(ports) == 200
    # ~28k ephemeral ports: 200 random draws repeat one now and then (the birthday bound), a
    # shared or sequentially reused socket would repeat many
    assert len(set(ports)) >= 196, f"{200 - len(set(ports))} ports used twice"
    close = sum(1 for a, b in itertools.pairwise(ports) if abs(a - b) < 16)
    assert close < 5, f"{close} consecutive queries on neighbouring ports: {ports[:20]}"
    assert len({s.qid for s in seen}) >= 190


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_nxdomain_is_cached_for_the_soa_minimum(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream, tcp: bool) -> None:
    upstream.mode = "nxdomain"
    server = start_dnsd("--upstream", upstream.server, *FAST)
    msg = server.query("nope.example.com", tcp=tcp)
    assert rcode(msg) == "NXDOMAIN"
    assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
    assert msg.authority[0].ttl == 30  # RFC 2308: min(SOA TTL 60, MINIMUM 30)
    msg = server.query("nope.example.com", tcp=tcp)
    assert rcode(msg) == "NXDOMAIN" and upstream.count("nope.example.com") == 1
    assert metric(server, "coredns_cache_hits_total", 'type="denial"') == 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_servfail_is_passed_on_and_not_cached(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream, tcp: bool) -> None:
    upstream.mode = "servfail"
    server = start_dnsd("--upstream", upstream.server, *FAST)
    assert rcode(server.query(EXT, tcp=tcp)) == "SERVFAIL"
    assert rcode(server.query(EXT, tcp=tcp)) == "SERVFAIL"
    assert upstream.count(EXT) == 2


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_truncated_upstream_reply_is_retried_over_tcp(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                      tcp: bool) -> None:
    upstream.mode = "tc"
    server = start_dnsd("--upstream", upstream.server, *FAST)
    msg = server.query(EXT, tcp=tcp)
    assert answers(msg) == [f"{EXT}. A 192.0.2.1"]
    assert not msg.flags & dns.flags.TC
    assert upstream.count(EXT, "udp") == 1 and upstream.count(EXT, "tcp") == 1


def test_big_answers_reach_clients_that_can_take_them(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.mode = "big"  # 100 A records, ~1.6 KB: TC from the upstream over UDP, so dnsd asks by TCP
    server = start_dnsd("--upstream", upstream.server, "--udp-max-payload", "4096", *FAST)
    full = server.query(EXT, use_edns=0, payload=4096)
    assert len(full.answer[0]) == 100 and not full.flags & dns.flags.TC
    plain = server.query(EXT)  # no EDNS: 512 bytes at most, TC set, whole records only
    assert plain.flags & dns.flags.TC and len(plain.to_wire()) <= 512
    assert not plain.answer or 0 < len(plain.answer[0]) < 100
    small = server.query(EXT, use_edns=0, payload=1232)
    assert small.flags & dns.flags.TC and small.edns == 0 and len(small.to_wire()) <= 1232
    assert len(server.query(EXT, tcp=True).answer[0]) == 100
    assert upstream.count(EXT, "tcp") == 1, "every later answer, cut or whole, came from the cache"
    out = server.dig(EXT, "+noedns")  # dig retries over TCP on TC, as resolvers do
    assert "198.51.100.100" in out, out


def test_udp_replies_stay_within_udp_max_payload(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.mode = "big"
    server = start_dnsd("--upstream", upstream.server, *FAST)  # default 1232, whatever the client offers
    msg = server.query(EXT, use_edns=0, payload=4096)
    assert msg.flags & dns.flags.TC and len(msg.to_wire()) <= 1232
    assert len(server.query(EXT, tcp=True).answer[0]) == 100


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_identical_questions_in_flight_go_upstream_once(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                        tcp: bool) -> None:
    upstream.mode, upstream.delay = "slow", 0.3
    server = start_dnsd("--upstream", upstream.server, "--upstream-timeout", "2", "--policy", "sequential")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _i: server.query(EXT, tcp=tcp, timeout=3), range(10)))
    assert all(answers(m) == [f"{EXT}. A 192.0.2.1"] for m in results)
    assert upstream.count(EXT) == 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_all_upstreams_failing_is_servfail_in_bounded_time(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                           upstream2: FakeUpstream, tcp: bool) -> None:
    upstream.mode = upstream2.mode = "silent"
    server = start_dnsd("--upstream", upstream.server, "--upstream", upstream2.server, *FAST)
    started = time.monotonic()
    assert rcode(server.query(EXT, tcp=tcp, timeout=5)) == "SERVFAIL"
    assert time.monotonic() - started < 1.0 + 0.5  # --forward-timeout 1.0
    assert upstream.count(EXT) == 1 and upstream2.count(EXT) == 1


@pytest.mark.parametrize("mode", ["wrong_source", "wrong_id", "wrong_question", "garbage"])
def test_spoofed_or_broken_replies_are_dropped_and_counted(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                           mode: str) -> None:
    upstream.mode = mode
    server = start_dnsd("--upstream", upstream.server, *FAST)
    assert rcode(server.query(EXT, timeout=5)) == "SERVFAIL"
    assert rcode(server.query("other.example.com", tcp=True, timeout=5)) == "SERVFAIL"
    reason = {"wrong_source": "address", "wrong_id": "id", "wrong_question": "question", "garbage": "garbage"}[mode]
    assert metric(server, "dnsd_forward_dropped_replies_total", f'reason="{reason}"') >= 1
    upstream.mode = "answer"  # the same upstream, now well behaved: nothing stuck
    wait_for(lambda: answers(server.query("third.example.com", timeout=3)) == ["third.example.com. A 192.0.2.1"], 5)


def test_slow_upstream_is_skipped_then_health_checked_back(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                           upstream2: FakeUpstream) -> None:
    upstream.mode = "silent"
    server = start_dnsd("--upstream", upstream.server, "--upstream", upstream2.server, "--max-fails", "2",
                        "--health-check", "0.2", *FAST)
    for i in range(2):  # two failures in a row: the first upstream is marked down
        assert answers(server.query(f"a{i}.example.com", timeout=3)) == [f"a{i}.example.com. A 192.0.2.2"]
    started = time.monotonic()
    assert answers(server.query("b.example.com", tcp=True)) == ["b.example.com. A 192.0.2.2"]
    assert time.monotonic() - started < 0.3, "a down upstream is skipped, not waited for"
    assert upstream.count("b.example.com") == 0
    wait_for(lambda: metric(server, "coredns_forward_healthcheck_failures_total") >= 1, 3)
    upstream.mode = "answer"
    wait_for(lambda: answers(server.query(f"c{time.monotonic()}.example.com"))[0].endswith("192.0.2.1"), 5)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_serve_stale_when_every_upstream_fails(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream, tcp: bool) -> None:
    upstream.ttl = 1
    server = start_dnsd("--upstream", upstream.server, "--serve-stale", "60", "--prefetch", "0", *FAST)
    assert ttls(server.query(EXT, tcp=tcp)) == [1]
    upstream.mode = "silent"
    time.sleep(1.2)
    stale = server.query(EXT, tcp=tcp, timeout=5)
    assert answers(stale) == [f"{EXT}. A 192.0.2.1"] and ttls(stale) == [30]
    assert metric(server, "coredns_cache_served_stale_total") >= 1
    assert rcode(server.query("never-seen.example.com", tcp=tcp, timeout=5)) == "SERVFAIL"
    upstream.mode, upstream.ttl, upstream.address = "answer", 300, "192.0.2.9"
    wait_for(lambda: answers(server.query(EXT, tcp=tcp, timeout=5)) == [f"{EXT}. A 192.0.2.9"], 5)


def test_serve_stale_off(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.ttl = 1
    server = start_dnsd("--upstream", upstream.server, "--serve-stale", "0", "--prefetch", "0", *FAST)
    server.query(EXT)
    upstream.mode = "silent"
    time.sleep(1.2)
    assert rcode(server.query(EXT, timeout=5)) == "SERVFAIL"


def test_hot_entries_are_prefetched_before_they_expire(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.ttl = 3
    server = start_dnsd("--upstream", upstream.server, "--prefetch", "2", *FAST)
    server.query(EXT)
    server.query(EXT)
    time.sleep(2.8)  # the last 10% of the TTL
    server.query(EXT)
    wait_for(lambda: upstream.count(EXT) == 2, 2)
    time.sleep(0.5)  # past the first answer's expiry: the refreshed entry answers, no miss
    msg = server.query(EXT)
    assert answers(msg) == [f"{EXT}. A 192.0.2.1"] and upstream.count(EXT) == 2
    assert metric(server, "coredns_cache_prefetch_total") >= 1


def test_reverse_names_fall_through_to_upstream(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, *FAST)
    assert answers(server.query("10.0.96.10.in-addr.arpa", "PTR")) == [
        "10.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
    upstream.mode = "nxdomain"
    assert rcode(server.query("8.8.8.8.in-addr.arpa", "PTR")) == "NXDOMAIN"
    assert upstream.count("8.8.8.8.in-addr.arpa") == 1
    assert upstream.count("10.0.96.10.in-addr.arpa") == 0


def test_upstream_none_is_authoritative_only(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd("--upstream", "none")
    assert rcode(server.query(EXT)) == "REFUSED"
    assert rcode(server.query("8.8.8.8.in-addr.arpa", "PTR")) == "NXDOMAIN"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_stub_domains(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream, upstream2: FakeUpstream, tcp: bool) -> None:
    server = start_dnsd("--upstream", upstream.server, "--stub-domain", f"corp.internal={upstream2.server}",
                        "--stub-domain", f"shop.svc.cluster.local={upstream2.server}", *FAST)
    assert answers(server.query("db.corp.internal", tcp=tcp)) == ["db.corp.internal. A 192.0.2.2"]
    assert answers(server.query(EXT, tcp=tcp)) == [f"{EXT}. A 192.0.2.1"]
    # a stub domain inside a served zone wins for its subtree, and only there
    assert answers(server.query("db.shop.svc.cluster.local", tcp=tcp)) == ["db.shop.svc.cluster.local. A 192.0.2.2"]
    assert answers(server.query("web.default.svc.cluster.local", tcp=tcp)) == ["web.default.svc.cluster.local. A 10.96.0.10"]
    assert upstream.count("db.corp.internal") == 0


def test_stub_domain_without_default_upstream(start_dnsd: Callable[..., Dnsd], upstream2: FakeUpstream) -> None:
    server = start_dnsd("--upstream", "none", "--stub-domain", f"corp.internal={upstream2.server}", *FAST)
    assert answers(server.query("db.corp.internal")) == ["db.corp.internal. A 192.0.2.2"]
    assert rcode(server.query(EXT)) == "REFUSED"


def test_own_listen_address_as_upstream_is_a_loop(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    port = free_port()
    server = start_dnsd("--upstream", f"127.0.0.1:{port}", "--upstream", upstream.server, *FAST, port=port)
    assert answers(server.query(EXT)) == [f"{EXT}. A 192.0.2.1"]
    log = server.log()
    assert len(re.findall(r"forwarding loop: upstream 127\.0\.0\.1:\d+ is dnsd itself", log)) == 1, log
    assert metric(server, "dnsd_forward_loops_detected_total") == 1
    assert answers(server.query("web.default.svc.cluster.local")) == ["web.default.svc.cluster.local. A 10.96.0.10"]


def test_upstream_that_sends_our_queries_back_is_a_loop(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                        upstream2: FakeUpstream) -> None:
    port = free_port()
    upstream.mode, upstream.loop_to = "loop", ("127.0.0.1", port)
    server = start_dnsd("--upstream", upstream.server, "--upstream", upstream2.server, *FAST, port=port)
    wait_for(lambda: "forwarding loop" in server.log(), 5)
    assert len(re.findall("forwarding loop", server.log())) == 1, server.log()
    assert metric(server, "dnsd_forward_loops_detected_total") == 1
    seen = upstream.count()
    for i in range(5):
        assert answers(server.query(f"x{i}.example.com")) == [f"x{i}.example.com. A 192.0.2.2"]
    assert upstream.count() == seen, "the looping upstream is not used any more"
    assert answers(server.query("web.default.svc.cluster.local")) == ["web.default.svc.cluster.local. A 10.96.0.10"]
    assert server.proc.poll() is None


def test_allow_from_limits_who_may_ask(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    closed = start_dnsd("--upstream", upstream.server, "--allow-from", "10.0.0.0/8", *FAST)
    assert rcode(closed.query(EXT)) == "REFUSED"
    assert rcode(closed.query(EXT, tcp=True)) == "REFUSED"
    assert upstream.count() == 0 or all(s.name.endswith("invalid.") for s in upstream.seen)
    opened = start_dnsd("--upstream", upstream.server, "--allow-from", "127.0.0.0/8", *FAST)
    assert answers(opened.query(EXT)) == [f"{EXT}. A 192.0.2.1"]


def test_resolv_conf_nameservers_are_the_upstreams(tmp_path) -> None:
    from dnsd.servers import read_resolv_conf

    conf = tmp_path / "resolv.conf"
    conf.write_text("# test\nsearch example.com\nnameserver 127.0.0.9\nnameserver fe80::1%eth0 ; scoped\n"
                    "nameserver 127.0.0.9\noptions ndots:5\n")
    assert [str(u) for u in read_resolv_conf(str(conf))] == ["127.0.0.9:53", "[fe80::1]:53"]


def test_forward_metrics_use_coredns_names(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, *FAST)
    server.query(EXT)
    server.query(EXT)
    _, body = server.http("/metrics")
    for name in ("coredns_forward_requests_total", "coredns_forward_responses_total",
                 "coredns_forward_request_duration_seconds_bucket", "coredns_forward_healthcheck_failures_total",
                 "coredns_cache_hits_total", "coredns_cache_misses_total", "coredns_cache_entries",
                 "coredns_cache_served_stale_total"):
        assert name in body, name
    assert metric(server, "coredns_forward_responses_total", 'rcode="NOERROR"') == 1
    assert metric(server, "coredns_cache_misses_total") == 1


def test_forwarding_with_two_workers(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, *FAST, workers=2)
    for i in range(10):
        assert answers(server.query(f"w{i}.example.com", tcp=bool(i % 2))) == [f"w{i}.example.com. A 192.0.2.1"]
    wait_for(lambda: metric(server, "coredns_forward_requests_total") >= 10, 5)


@pytest.mark.parametrize(("argv", "message"), [
    (["--upstream", "300.1.1.1"], "argument --upstream: '300.1.1.1' is not IP, IP:PORT or [IPv6]:PORT"),
    (["--upstream", "1.2.3.4:99999"], "argument --upstream: '1.2.3.4:99999': port must be 1-65535"),
    (["--upstream", "dns.google"], "argument --upstream: 'dns.google' is not IP"),
    (["--upstream", "/nonexistent/resolv.conf"], "argument --upstream: cannot read resolv.conf '/nonexistent/resolv.conf'"),
    (["--stub-domain", "corp.internal"], "argument --stub-domain: 'corp.internal' is not ZONE=SERVER"),
    (["--stub-domain", "corp.internal=nope"], "argument --stub-domain: 'nope' is not IP"),
    (["--stub-domain", "=1.2.3.4"], "argument --stub-domain: '=1.2.3.4' is not ZONE=SERVER"),
    (["--allow-from", "10.0.0.0/33"], "argument --allow-from: '10.0.0.0/33' is not an address or CIDR network"),
    (["--upstream", "tls://dns.example"], "argument --upstream: 'tls://dns.example' is not tls://IP[:PORT][#NAME]"),
    (["--upstream", "tls://1.1.1.1#"], "argument --upstream: 'tls://1.1.1.1#': empty TLS server name"),
    (["--upstream", "127.0.0.1:5353", "--upstream-tls-ca", "/nonexistent.pem"],
     "--upstream-tls-ca: cannot load '/nonexistent.pem'"),
])
def test_bad_forwarding_flags_exit_2_naming_the_flag(argv: list[str], message: str) -> None:
    from tests.e2e.test_cli import dnsd

    result = dnsd("serve", "--port", str(free_port()), "--http-address", "", *argv, timeout=15)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("DNSD_UPSTREAM", "127.0.0.1,bogus", "--upstream: 'bogus' is not IP"),
    ("DNSD_STUB_DOMAIN", "corp.internal=127.0.0.1,127.0.0.300", "--stub-domain: '127.0.0.300' is not IP"),
])
def test_bad_forwarding_variables_exit_2(variable: str, value: str, message: str) -> None:
    from tests.e2e.test_cli import clean_env, dnsd

    result = dnsd("serve", "--port", str(free_port()), "--http-address", "", env=clean_env(**{variable: value}),
                  timeout=15)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_resolv_conf_is_a_clear_error(tmp_path) -> None:
    from tests.e2e.test_cli import dnsd

    conf = tmp_path / "resolv.conf"
    conf.write_text("search example.com\n")  # no nameserver line
    result = dnsd("serve", "--port", str(free_port()), "--http-address", "", "--upstream", str(conf), timeout=15)
    assert result.returncode == 2 and "has no nameserver line" in result.stderr, result.stderr
    # unreadable (a directory: chmod 0 would not stop root, who runs CI)
    result = dnsd("serve", "--port", str(free_port()), "--http-address", "", "--upstream", f"{tmp_path}/", timeout=15)
    assert result.returncode == 2, result.stderr
    assert f"cannot read resolv.conf '{tmp_path}/': Is a directory" in result.stderr, result.stderr


def test_stub_domain_variable_keeps_its_servers(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream,
                                                upstream2: FakeUpstream) -> None:
    # DNSD_STUB_DOMAIN splits on commas like every repeatable variable: a piece without "=" is another server
    upstream2.mode = "silent"
    env = {"DNSD_STUB_DOMAIN": f"corp.internal={upstream2.server},{upstream.server}"}
    server = start_dnsd("--upstream", "none", *FAST, env=env)
    assert answers(server.query("db.corp.internal", timeout=3)) == ["db.corp.internal. A 192.0.2.1"]


def test_forward_max_ttl_caps_cached_ttls(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.ttl = 86400
    server = start_dnsd("--upstream", upstream.server, "--forward-max-ttl", "60", *FAST)
    assert ttls(server.query(EXT)) == [60]
    assert ttls(server.query(EXT, tcp=True)) in ([60], [59])


def test_forward_cache_size_bounds_the_entries(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, "--forward-cache-size", "5", *FAST)
    for i in range(12):
        server.query(f"s{i}.example.com")
    wait_for(lambda: metric(server, "coredns_cache_entries") == 5, 3)
    server.query("s11.example.com")  # the most recent ones are kept
    assert upstream.count("s11.example.com") == 1
    server.query("s0.example.com")  # the oldest one was evicted
    assert upstream.count("s0.example.com") == 2


def test_force_tcp(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    server = start_dnsd("--upstream", upstream.server, "--force-tcp", *FAST)
    assert answers(server.query(EXT)) == [f"{EXT}. A 192.0.2.1"]
    assert upstream.count(EXT, "tcp") == 1 and upstream.count(EXT, "udp") == 0


def test_max_concurrent_refuses_the_excess(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.mode, upstream.delay = "slow", 0.5
    server = start_dnsd("--upstream", upstream.server, "--max-concurrent", "1", "--upstream-timeout", "2")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(server.query, "one.example.com", timeout=3)
        time.sleep(0.1)
        second = pool.submit(server.query, "two.example.com", timeout=3)
        assert rcode(second.result()) == "REFUSED"
        assert rcode(first.result()) == "NOERROR"
    assert metric(server, "coredns_forward_max_concurrent_rejects_total") == 1


def test_stale_answers_come_at_once_while_every_upstream_is_down(start_dnsd: Callable[..., Dnsd],
                                                                 upstream: FakeUpstream) -> None:
    upstream.ttl = 1
    server = start_dnsd("--upstream", upstream.server, "--max-fails", "1", "--health-check", "5", "--prefetch", "0", *FAST)
    assert ttls(server.query(EXT)) == [1]
    upstream.mode = "silent"
    time.sleep(1.1)
    assert rcode(server.query("other.example.com", timeout=5)) == "SERVFAIL"  # one failure: the upstream is down
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _i: server.query(EXT, timeout=5), range(4)))
    assert time.monotonic() - started < 0.3, "no wait for a timeout"
    assert all(ttls(m) == [30] for m in replies)


def test_ipv6_upstream(start_dnsd: Callable[..., Dnsd]) -> None:
    try:
        server6 = FakeUpstream("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server6 as upstream:
        upstream.mode = "tc"  # UDP and then TCP, both over IPv6
        server = start_dnsd("--upstream", upstream.server, *FAST)
        assert answers(server.query(EXT)) == [f"{EXT}. A 192.0.2.1"]
        assert upstream.count(EXT, "udp") == 1 and upstream.count(EXT, "tcp") == 1


@pytest.fixture
def dot_upstream(tmp_path) -> Iterator[tuple[FakeUpstream, str]]:
    """A DNS-over-TLS upstream with a self-signed certificate for dot.test; yields it and the CA file."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=dot.test", "-addext", "subjectAltName=DNS:dot.test"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with FakeUpstream(tls=context) as server:
        yield server, str(cert)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_over_tls_upstream(start_dnsd: Callable[..., Dnsd], dot_upstream: tuple[FakeUpstream, str], tcp: bool) -> None:
    upstream, ca = dot_upstream
    server = start_dnsd("--upstream", f"tls://{upstream.server}#dot.test", "--upstream-tls-ca", ca, *FAST)
    assert answers(server.query(EXT, tcp=tcp)) == [f"{EXT}. A 192.0.2.1"]
    assert upstream.count(EXT, "tcp") == 1 and upstream.count(EXT, "udp") == 0


def test_dns_over_tls_checks_the_server_name(start_dnsd: Callable[..., Dnsd], dot_upstream: tuple[FakeUpstream, str]) -> None:
    upstream, ca = dot_upstream
    wrong = start_dnsd("--upstream", f"tls://{upstream.server}#other.test", "--upstream-tls-ca", ca, *FAST)
    assert rcode(wrong.query(EXT, timeout=5)) == "SERVFAIL"
    untrusted = start_dnsd("--upstream", f"tls://{upstream.server}#dot.test", *FAST)  # system CAs: not ours
    assert rcode(untrusted.query(EXT, timeout=5)) == "SERVFAIL"
    assert upstream.count(EXT) == 0, "no question reaches a server whose certificate failed"
