"""The DNS wire as clients meet it: the real dnsd over UDP and TCP, with dnspython, dig and raw sockets.

Rules under test: /work/shared/reference/dns-behaviour.md ("Wire" and "Response codes").
"""

from __future__ import annotations

import random
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest
import yaml

from tests.helpers import Dnsd, answers, have_dig, rcode, wait_for

needs_dig = pytest.mark.skipif(not have_dig(), reason="dig (dnsutils) is not installed")

WEB = "web.default.svc.cluster.local"
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
OUR_OPT = bytes.fromhex("00" "0029" "04d0" "00" "00" "0000" "0000")  # root, OPT, 1232, ext 0, v0, no flags, no options


# -- raw message building ----------------------------------------------------------
def header(qid: int = 0x1234, flags: int = FLAG_RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def wire_name(name: str) -> bytes:
    """Uncompressed wire form, case kept ("" is the root)."""
    labels = [lb.encode() for lb in name.strip(".").split(".") if lb]
    return b"".join(bytes((len(lb),)) + lb for lb in labels) + b"\x00"


def question(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    return wire_name(name) + struct.pack("!HH", qtype, qclass)


def raw_query(name: str, qtype: int = 1, qid: int = 0x1234, flags: int = FLAG_RD) -> bytes:
    return header(qid, flags) + question(name, qtype)


def flags_of(reply: bytes) -> int:
    return struct.unpack("!H", reply[2:4])[0]


def mixed_case(name: str, seed: int) -> str:
    """A 0x20 spelling: each letter's case chosen at random (seeded), at least one of each case."""
    rng = random.Random(seed)
    while True:
        spelled = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)
        if spelled != spelled.lower() and spelled != spelled.upper():
            return spelled


# -- transports ----------------------------------------------------------------------
def udp_exchange(server: Dnsd, payload: bytes, timeout: float = 2.0) -> bytes | None:
    return server.raw_udp(payload, timeout=timeout)


def tcp_connect(server: Dnsd, timeout: float = 2.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((server.address, server.port))
    return sock


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None when the peer closes first."""
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def tcp_send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


def tcp_recv(sock: socket.socket) -> bytes | None:
    """One length-prefixed message, or None when the server closed the connection."""
    prefix = recv_exact(sock, 2)
    if prefix is None:
        return None
    return recv_exact(sock, int.from_bytes(prefix, "big"))


def tcp_exchange(server: Dnsd, payload: bytes, timeout: float = 2.0) -> bytes | None:
    with tcp_connect(server, timeout) as sock:
        tcp_send(sock, payload)
        return tcp_recv(sock)


TRANSPORTS: dict[str, Callable[..., bytes | None]] = {"udp": udp_exchange, "tcp": tcp_exchange}


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes (EOF or reset) within ``timeout``; data arriving first is a failure."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def log_size(server: Dnsd) -> int:
    server.log()  # flushes
    return server.log_path.stat().st_size


def new_log(server: Dnsd, since: int) -> str:
    server.log()
    with open(server.log_path, "rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


# -- manifests --------------------------------------------------------------------------
def headless_service(name: str, count: int, namespace: str = "default") -> list[dict[str, Any]]:
    """A headless Service with ``count`` ready endpoints, at most 100 per EndpointSlice (as Kubernetes does)."""
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }]
    for start in range(0, count, 100):
        endpoints = [{"addresses": [ip_of(i)], "conditions": {"ready": True}} for i in range(start, min(count, start + 100))]
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-{start // 100}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": endpoints,
        })
    return docs


def ip_of(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 1}"


BIG = 200  # endpoints of big.default: its A RRset (~3.2 KB) does not fit 512 or 1232 bytes
SMALL = 6  # endpoints of six.default: 6 SRV fit 512 bytes, their 6 targets' A records do not all fit too


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsd]:
    directory = tmp_path_factory.mktemp("big")
    (directory / "big.yaml").write_text(yaml.safe_dump_all(headless_service("big", BIG) + headless_service("six", SMALL)))
    server = Dnsd("--manifests", str(directory)).wait_listening()
    yield server
    assert server.stop() == 0, server.log()


# == header, question, flags =============================================================
ZONE_QUERIES = [
    (WEB, "A", "NOERROR"),
    ("cart.shop.svc.cluster.local", "AAAA", "NOERROR"),
    ("db.shop.svc.cluster.local", "A", "NOERROR"),
    ("_http._tcp.web.default.svc.cluster.local", "SRV", "NOERROR"),
    ("_postgres._tcp.db.shop.svc.cluster.local", "SRV", "NOERROR"),
    ("search.shop.svc.cluster.local", "A", "NOERROR"),  # the CNAME answers
    ("10.0.96.10.in-addr.arpa", "PTR", "NOERROR"),
    ("dns-version.cluster.local", "TXT", "NOERROR"),
    ("nope.default.svc.cluster.local", "A", "NXDOMAIN"),
    ("svc.cluster.local", "A", "NOERROR"),  # empty non-terminal: NODATA
    ("cluster.local", "SOA", "NOERROR"),
]


@pytest.mark.parametrize(("name", "rdtype", "expected"), ZONE_QUERIES)
def test_udp_and_tcp_give_the_same_reply(zones_server: Dnsd, name: str, rdtype: str, expected: str) -> None:
    query = raw_query(name, dns.rdatatype.from_text(rdtype), qid=0xBEEF)
    over_udp = udp_exchange(zones_server, query)
    over_tcp = tcp_exchange(zones_server, query)
    assert over_udp is not None and over_tcp is not None
    assert over_udp == over_tcp  # byte for byte: one rendering serves both transports
    msg = dns.message.from_wire(over_udp)
    assert rcode(msg) == expected
    assert msg.id == 0xBEEF


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("qid", [0, 1, 0x8000, 0xFFFF])
def test_query_id_is_kept(zones_server: Dnsd, transport: str, qid: int) -> None:
    reply = TRANSPORTS[transport](zones_server, raw_query(WEB, qid=qid))
    assert reply is not None
    assert struct.unpack("!H", reply[:2])[0] == qid


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "qtype"), [
    (WEB, 1),
    ("_https._tcp.kubernetes.default.svc.cluster.local", 33),
    ("metrics.shop.svc.cluster.local", 1),
])
def test_0x20_question_echoed_byte_for_byte(zones_server: Dnsd, transport: str, edns: bool, name: str, qtype: int) -> None:
    # Twice: the first may take the full (parsing) path, the second the precomputed one.
    for seed in (1, 2):
        spelled = mixed_case(name, seed)
        q = question(spelled, qtype)
        opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if edns else b""
        query = header(qid=0x0A0A + seed, ar=int(edns)) + q + opt
        reply = TRANSPORTS[transport](zones_server, query)
        assert reply is not None
        assert reply[12 : 12 + len(q)] == q
        msg = dns.message.from_wire(reply)
        assert rcode(msg) == "NOERROR" and msg.answer
        assert {rrset.name.to_text() for rrset in msg.answer} == {spelled + "."}  # the asker's spelling, not ours


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_0x20_on_a_negative_answer(zones_server: Dnsd, transport: str) -> None:
    # A fresh random name each time: never in the rendered-reply table.
    name = mixed_case(f"n{random.randrange(10**9)}.default.svc.cluster.local", 7)
    q = question(name)
    reply = TRANSPORTS[transport](zones_server, header() + q)
    assert reply is not None
    assert reply[12 : 12 + len(q)] == q
    msg = dns.message.from_wire(reply)
    assert rcode(msg) == "NXDOMAIN"
    assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
    assert msg.authority[0].name == dns.name.from_text("cluster.local")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "rdtype", "expected"), ZONE_QUERIES)
def test_authoritative_flags(zones_server: Dnsd, transport: str, name: str, rdtype: str, expected: str) -> None:
    reply = TRANSPORTS[transport](zones_server, raw_query(name, dns.rdatatype.from_text(rdtype)))
    assert reply is not None
    flags = flags_of(reply)
    assert flags & FLAG_QR
    assert flags & FLAG_AA, "answers from our zones are authoritative"
    assert not flags & FLAG_RA, "no recursion offered"
    assert not flags & FLAG_TC
    assert rcode(dns.message.from_wire(reply)) == expected


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rd_is_copied(zones_server: Dnsd, transport: str) -> None:
    # RFC 1035 4.1.1: RD "is copied into the response". Resolvers query authoritative servers with RD=0.
    wrong = []
    for name in (WEB, "nope.default.svc.cluster.local", "example.com"):  # positive, negative, REFUSED
        for edns in (False, True):
            for rd in (True, False):
                query = dns.message.make_query(name, "A", use_edns=0 if edns else False)
                if not rd:
                    query.flags &= ~dns.flags.RD
                for attempt in ("first", "again"):  # the second time from the table where there is one
                    reply = TRANSPORTS[transport](zones_server, query.to_wire())
                    assert reply is not None
                    assert not flags_of(reply) & FLAG_RA
                    if bool(flags_of(reply) & FLAG_RD) != rd:
                        wrong.append(f"{name} edns={edns} query RD={int(rd)} ({attempt}): reply RD={int(not rd)}")
    assert not wrong, "\n".join(wrong)


@needs_dig
def test_dig_norecurse_gets_rd_clear(zones_server: Dnsd) -> None:
    out = zones_server.dig("+norecurse", WEB)
    assert "status: NOERROR" in out
    assert "flags: qr aa;" in out
    assert "recursion requested but not available" not in out


# == EDNS0 ================================================================================
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_opt_in_query_means_none_in_reply(zones_server: Dnsd, transport: str) -> None:
    reply = TRANSPORTS[transport](zones_server, raw_query(WEB))
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.edns == -1
    assert struct.unpack("!H", reply[10:12])[0] == 0  # ARCOUNT


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("payload", [512, 1232, 4096, 65535])
def test_opt_echoed_with_our_payload_and_no_unknown_options(zones_server: Dnsd, transport: str, payload: int) -> None:
    options = [
        dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8))),  # a client cookie
        dns.edns.GenericOption(65001, b"private"),  # an option code nobody knows
    ]
    query = dns.message.make_query(WEB, "A", use_edns=0, payload=payload, options=options)
    reply = TRANSPORTS[transport](zones_server, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.edns == 0
    assert msg.payload == 1232
    assert msg.options == ()
    assert reply.endswith(OUR_OPT)
    assert answers(msg) == [f"{WEB}. A 10.96.0.10"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_edns_version_1_is_badvers(zones_server: Dnsd, transport: str) -> None:
    query = dns.message.make_query(WEB, "A", use_edns=1)
    reply = TRANSPORTS[transport](zones_server, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.id == query.id
    assert reply[3] & 0x0F == 0  # 16 = header rcode 0 + extended rcode 1 in the OPT
    assert reply[-11:-8] == b"\x00\x00\x29" and reply[-6] == 1  # OPT TTL's first byte: extended rcode
    assert msg.edns == 0  # we answer with the version we speak
    assert not msg.answer
    assert msg.question[0].name == dns.name.from_text(WEB)


@needs_dig
def test_dig_edns(zones_server: Dnsd) -> None:
    out = zones_server.dig("+bufsize=4096", WEB)  # dig also sends a COOKIE option by default
    assert "status: NOERROR" in out
    assert "EDNS: version: 0, flags:; udp: 1232" in out
    assert "COOKIE" not in out
    out = zones_server.dig("+noedns", WEB)
    assert "status: NOERROR" in out and "OPT PSEUDOSECTION" not in out
    out = zones_server.dig("+edns=1", "+noednsnegotiation", WEB)
    assert "status: BADVERS" in out
    out = zones_server.dig("+edns=1", WEB)  # dig falls back to version 0 on BADVERS
    assert "status: NOERROR" in out and "10.96.0.10" in out


def test_small_payload_is_clamped_up_to_512(zones_server: Dnsd) -> None:
    # 2 SRV + 2 A in additional is ~200 bytes: more than the 100 advertised, less than the 512 floor.
    query = dns.message.make_query("_postgres._tcp.db.shop.svc.cluster.local", "SRV", use_edns=0, payload=100)
    reply = udp_exchange(zones_server, query.to_wire())
    assert reply is not None and 100 < len(reply) <= 512
    msg = dns.message.from_wire(reply)
    assert not msg.flags & dns.flags.TC
    assert len(answers(msg)) == 2 and sum(len(rrset) for rrset in msg.additional) == 2


# == truncation ===========================================================================
BIG_NAME = "big.default.svc.cluster.local"
BIG_SRV = "_http._tcp.big.default.svc.cluster.local"


def test_udp_without_edns_truncates_to_whole_rrsets(big_server: Dnsd) -> None:
    query = raw_query(BIG_NAME)
    reply = udp_exchange(big_server, query)
    assert reply is not None
    assert len(reply) <= 512
    msg = dns.message.from_wire(reply)
    assert msg.flags & dns.flags.TC
    assert msg.flags & dns.flags.AA
    assert rcode(msg) == "NOERROR"
    assert msg.answer == [], "the one A RRset does not fit: none of it is sent"
    assert msg.edns == -1
    assert reply[12 : len(query)] == query[12:]


@pytest.mark.parametrize(("name", "rdtype", "payload", "limit", "truncated"), [
    (BIG_NAME, "A", 512, 512, True),
    (BIG_NAME, "A", 1232, 1232, True),
    (BIG_NAME, "A", 100, 512, True),  # clamped up to 512
    (BIG_NAME, "A", 4096, 1232, True),  # capped at --udp-max-payload (1232): 200 A records are ~3.2 KB
    (BIG_SRV, "SRV", 4096, 1232, True),  # 200 SRV are ~11 KB
    (BIG_SRV, "SRV", 65000, 1232, True),  # clamped down
])
def test_udp_with_edns_limit(big_server: Dnsd, name: str, rdtype: str, payload: int, limit: int, truncated: bool) -> None:
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    reply = udp_exchange(big_server, query.to_wire())
    assert reply is not None
    assert len(reply) <= limit
    msg = dns.message.from_wire(reply)
    assert bool(msg.flags & dns.flags.TC) == truncated
    assert len(answers(msg)) == (0 if truncated else BIG)
    assert msg.edns == 0 and msg.payload == 1232


def test_tcp_gives_every_record(big_server: Dnsd) -> None:
    msg = big_server.query(BIG_NAME, tcp=True)
    assert not msg.flags & dns.flags.TC
    assert answers(msg) == sorted(f"{BIG_NAME}. A {ip_of(i)}" for i in range(BIG))


def test_tcp_srv_with_targets_in_additional(big_server: Dnsd) -> None:
    msg = big_server.query(BIG_SRV, "SRV", tcp=True)
    assert not msg.flags & dns.flags.TC
    srvs = [rd for rrset in msg.answer for rd in rrset]
    assert len(srvs) == BIG
    assert {rd.port for rd in srvs} == {80}
    assert {rd.weight for rd in srvs} == {1}  # 100 / 200, at least 1
    targets = {rd.target.to_text() for rd in srvs}
    assert targets == {f"{ip_of(i).replace('.', '-')}.{BIG_NAME}." for i in range(BIG)}
    glue = {rrset.name.to_text(): [rd.address for rd in rrset] for rrset in msg.additional}
    assert glue == {t: [t.split(".")[0].replace("-", ".")] for t in targets}


@needs_dig
def test_dig_retries_over_tcp(big_server: Dnsd) -> None:
    out = big_server.dig(BIG_NAME)  # dig advertises 1232: the UDP reply is truncated
    assert "Truncated, retrying in TCP mode" in out
    assert "ANSWER: 200" in out and "(TCP)" in out
    assert sum(1 for line in out.splitlines() if line.startswith(BIG_NAME + ".") and "\tA\t" in line) == BIG
    out = big_server.dig("+ignore", "+bufsize=512", BIG_NAME)  # the truncated reply itself
    assert "flags: qr aa tc rd" in out and "ANSWER: 0" in out and "(UDP)" in out
    out = big_server.dig("+bufsize=4096", BIG_NAME)  # UDP replies stop at --udp-max-payload (1232)
    assert "ANSWER: 200" in out and "(TCP)" in out and "Truncated" in out


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns512"])
def test_additional_trimmed_without_tc(big_server: Dnsd, edns: bool) -> None:
    # RFC 2181 9: losing additional data only is not truncation.
    name = "_http._tcp.six.default.svc.cluster.local"
    full = big_server.query(name, "SRV", tcp=True)
    assert len(full.to_wire()) > 512 and sum(len(r) for r in full.additional) == SMALL
    query = dns.message.make_query(name, "SRV", use_edns=0 if edns else False, payload=512)
    reply = udp_exchange(big_server, query.to_wire())
    assert reply is not None and len(reply) <= 512
    msg = dns.message.from_wire(reply)
    assert not msg.flags & dns.flags.TC
    assert len(answers(msg)) == SMALL
    glue = [rrset for rrset in msg.additional if rrset.rdtype == dns.rdatatype.A]
    assert 0 < len(glue) < SMALL
    targets = {rd.target for rrset in msg.answer for rd in rrset}
    assert {rrset.name for rrset in glue} <= targets
    assert all(len(rrset) == 1 for rrset in glue)  # whole RRsets only


# == TCP ====================================================================================
def test_tcp_pipelined_queries_answered_in_order(zones_server: Dnsd) -> None:
    names = [WEB, "cart.shop.svc.cluster.local", "nope.default.svc.cluster.local"]
    with tcp_connect(zones_server) as sock:
        sock.sendall(b"".join(len(q).to_bytes(2, "big") + q for q in (raw_query(n, qid=i + 1) for i, n in enumerate(names))))
        replies = [tcp_recv(sock) for _ in names]
        assert all(r is not None for r in replies)
        msgs = [dns.message.from_wire(r) for r in replies if r is not None]
        assert [m.id for m in msgs] == [1, 2, 3]
        assert [answers(m) for m in msgs] == [[f"{WEB}. A 10.96.0.10"], ["cart.shop.svc.cluster.local. A 10.96.1.10"], []]
        assert rcode(msgs[2]) == "NXDOMAIN"
        # The connection stays open for more.
        tcp_send(sock, raw_query(WEB, qid=4))
        last = tcp_recv(sock)
        assert last is not None and dns.message.from_wire(last).id == 4


def test_tcp_idle_connection_is_closed(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd("--tcp-idle-timeout", "0.5")
    with tcp_connect(server) as silent, tcp_connect(server) as used:
        tcp_send(used, raw_query(WEB))
        assert tcp_recv(used) is not None
        started = time.monotonic()
        assert closed_by_peer(silent, timeout=3.0), "a connection that never sends is closed"
        assert closed_by_peer(used, timeout=3.0), "a connection idle after a query is closed"
        assert time.monotonic() - started < 2.5
    # ...and a new one is welcome.
    assert server.query(WEB, tcp=True).answer


def test_tcp_idle_timeout_not_reached_while_busy(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd("--tcp-idle-timeout", "0.5")
    with tcp_connect(server) as sock:
        for i in range(6):  # 6 x 0.2 s: longer than the timeout in all, never idle that long
            tcp_send(sock, raw_query(WEB, qid=i))
            reply = tcp_recv(sock)
            assert reply is not None and dns.message.from_wire(reply).id == i
            time.sleep(0.2)


def test_tcp_max_connections(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd("--tcp-max-connections", "2")
    first, second = tcp_connect(server), tcp_connect(server)
    try:
        for sock in (first, second):  # answered: both are registered connections now
            tcp_send(sock, raw_query(WEB))
            assert tcp_recv(sock) is not None
        with tcp_connect(server) as third:
            started = time.monotonic()
            assert closed_by_peer(third, timeout=2.0)
            assert time.monotonic() - started < 1.0, "refused at once, not after an idle timeout"
        for i, sock in enumerate((first, second)):
            tcp_send(sock, raw_query(WEB, qid=100 + i))
            reply = tcp_recv(sock)
            assert reply is not None and dns.message.from_wire(reply).id == 100 + i
        assert server.query(WEB).answer  # UDP is not affected
    finally:
        first.close()

    def third_welcome() -> bool:  # once the server noticed the close, a slot is free again
        with tcp_connect(server) as sock:
            tcp_send(sock, raw_query(WEB, qid=7))
            return tcp_recv(sock) is not None

    try:
        wait_for(third_welcome, timeout=5.0, interval=0.05)
    finally:
        second.close()


# == malformed and unsupported input ===========================================================
Q_WEB = question(WEB)
MALFORMED: dict[str, tuple[bytes, str | None]] = {
    # name: (datagram, expected rcode or None for no reply)
    "empty datagram": (b"", None),
    "1 byte": (b"\x12", None),
    "11 bytes": (header()[:11], None),
    "header only": (header(qd=0), "FORMERR"),
    "header only, QDCOUNT=1": (header(), "FORMERR"),
    "QDCOUNT=0 with a question": (header(qd=0) + Q_WEB, "FORMERR"),
    "QDCOUNT=2": (header(qd=2) + Q_WEB + Q_WEB, "FORMERR"),
    "ANCOUNT=1 without the record": (header(an=1) + Q_WEB, "FORMERR"),
    "truncated name": (header() + b"\x03web\x07defa", "FORMERR"),
    "name without type and class": (header() + wire_name(WEB), "FORMERR"),
    "type without class": (header() + Q_WEB[:-2], "FORMERR"),
    "label length 64": (header() + b"\x40" + b"a" * 64 + question("default.svc.cluster.local"), "FORMERR"),
    "label length 65 (0x41)": (header() + b"\x41" + b"a" * 65 + question("cluster.local"), "FORMERR"),
    "compression pointer to itself": (header() + b"\xc0\x0c" + b"\x00\x01\x00\x01", "FORMERR"),
    "compression pointer loop": (header() + b"\x03web\xc0\x0c" + b"\x00\x01\x00\x01", "FORMERR"),
    "pointer beyond the packet": (header() + b"\xc0\xff" + b"\x00\x01\x00\x01", "FORMERR"),
    "name of 256 bytes": (header() + question(".".join(["a" * 63] * 3 + ["b" * 48, "cluster", "local"])), "FORMERR"),
    "name of 300 bytes": (header() + question(".".join(["a" * 60] * 4 + ["b" * 40, "cluster", "local"])), "FORMERR"),
    "QR=1 (a reply)": (header(flags=0x8000 | FLAG_RD) + Q_WEB, None),
    "QR=1 garbage": (header(flags=0x8000) + b"\xff\xff", None),
    "OPT record cut short": (header(ar=1) + Q_WEB + b"\x00\x00\x29", "FORMERR"),
    "OPT record cut short (6 bytes)": (header(ar=1) + Q_WEB + b"\x00\x00\x29\x04\xd0\x00", "FORMERR"),
    "two OPT records": (header(ar=2) + Q_WEB + OUR_OPT + OUR_OPT, "FORMERR"),
}


NAME_255 = ".".join(["a" * 63] * 3 + ["b" * 47, "cluster", "local"])


def test_name_cases_are_the_sizes_they_claim() -> None:
    assert len(wire_name(NAME_255)) == 255
    assert len(wire_name(".".join(["a" * 63] * 3 + ["b" * 48, "cluster", "local"]))) == 256
    assert len(wire_name(".".join(["a" * 60] * 4 + ["b" * 40, "cluster", "local"]))) > 255


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_longest_legal_name_is_answered(zones_server: Dnsd, transport: str) -> None:
    # 255 bytes is legal (RFC 1035 2.3.4): a plain NXDOMAIN, the boundary of the FORMERR cases above.
    reply = TRANSPORTS[transport](zones_server, header() + question(NAME_255))
    assert reply is not None
    assert rcode(dns.message.from_wire(reply)) == "NXDOMAIN"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_query(zones_server: Dnsd, transport: str, case: str) -> None:
    packet, expected = MALFORMED[case]  # None over TCP: the server closes the connection (a timeout raises)
    assert zones_server.query(WEB).answer  # primes the precomputed table: malformed input may hit the fast path
    since = log_size(zones_server)
    if transport == "udp":
        reply = udp_exchange(zones_server, packet, timeout=0.3 if expected is None else 2.0)
    else:
        reply = tcp_exchange(zones_server, packet)
    if expected is None:
        assert reply is None
    else:
        assert reply is not None, f"no reply; server log:\n{new_log(zones_server, since)}"
        assert len(reply) >= 12
        assert reply[:2] == packet[:2], "the query ID is kept"
        assert flags_of(reply) & FLAG_QR
        assert dns.rcode.to_text(reply[3] & 0x0F) == expected
    assert "Traceback" not in new_log(zones_server, since), "malformed input is not a server error"
    assert zones_server.proc.poll() is None
    assert answers(zones_server.query(WEB)) == [f"{WEB}. A 10.96.0.10"]


def test_garbage_burst_then_a_good_query(zones_server: Dnsd) -> None:
    rng = random.Random(20240601)
    packets = [p for p, _ in MALFORMED.values()]
    while len(packets) < 2000:
        packets.append(rng.randbytes(rng.randrange(0, 120)))
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((zones_server.address, zones_server.port))
        sock.setblocking(False)

        def drain() -> None:
            while True:
                try:
                    replies.append(sock.recv(65535))
                except (BlockingIOError, ConnectionRefusedError):
                    return

        for i, packet in enumerate(packets):
            sock.send(packet)
            if i % 20 == 0:
                drain()
                time.sleep(0.001)  # stay below the socket buffers: we want replies, not drops
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            select.select([sock], [], [], 0.1)
            drain()
    assert zones_server.proc.poll() is None
    assert replies, "FORMERR replies were expected for much of the garbage"
    for reply in replies:
        assert len(reply) >= 12 and flags_of(reply) & FLAG_QR
    for transport in (False, True):
        msg = zones_server.query(WEB, tcp=transport)
        assert rcode(msg) == "NOERROR" and answers(msg) == [f"{WEB}. A 10.96.0.10"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("opcode", ["NOTIFY", "UPDATE", "STATUS", "IQUERY"])
def test_other_opcodes_are_notimp(zones_server: Dnsd, transport: str, opcode: str) -> None:
    if opcode == "UPDATE":
        query: dns.message.Message = dns.update.UpdateMessage("cluster.local")
        query.add("evil.cluster.local", 5, "A", "192.0.2.1")  # type: ignore[attr-defined]
    else:
        query = dns.message.make_query("cluster.local", "SOA")
        query.set_opcode(dns.opcode.from_text(opcode))
    reply = TRANSPORTS[transport](zones_server, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.id == query.id
    assert msg.opcode() == query.opcode()
    assert not msg.answer
    # The update was not applied, of course.
    assert rcode(zones_server.query("evil.cluster.local")) == "NXDOMAIN"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("name", "rdtype"), [("version.bind", "TXT"), ("hostname.bind", "TXT"), (WEB, "A")])
def test_class_ch_is_refused(zones_server: Dnsd, transport: str, name: str, rdtype: str) -> None:
    query = dns.message.make_query(name, rdtype, rdclass="CH")
    reply = TRANSPORTS[transport](zones_server, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert rcode(msg) == "REFUSED"
    assert msg.id == query.id and not msg.answer
    assert not msg.flags & dns.flags.RA


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfer_is_refused(zones_server: Dnsd, rdtype: str) -> None:
    query = dns.message.make_query("cluster.local", rdtype)
    msg = dns.query.tcp(query, zones_server.address, port=zones_server.port, timeout=2)
    assert rcode(msg) == "REFUSED"
    assert not msg.answer


@needs_dig
def test_dig_axfr_fails(zones_server: Dnsd) -> None:
    out = zones_server.dig("axfr", "cluster.local")
    assert "Transfer failed" in out and "10.96.0.10" not in out


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", ["example.com", "kubernetes.io", "local", "cluster.local.example.com", "xcluster.local", "."])
def test_outside_the_zones_is_refused(zones_server: Dnsd, transport: str, name: str) -> None:
    query = dns.message.make_query(name, "A")
    reply = TRANSPORTS[transport](zones_server, query.to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert rcode(msg) == "REFUSED"
    assert not msg.flags & dns.flags.RA
    assert not msg.flags & dns.flags.AA
    assert msg.flags & dns.flags.RD  # copied
    assert not msg.answer and not msg.authority


# == IPv6 ======================================================================================
def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="::1 is not available")
def test_ipv6_listener() -> None:
    server = Dnsd("--address", "::1")
    server.address = "::1"  # Dnsd talks to 127.0.0.1 unless told
    try:
        server.wait_listening()
        for tcp in (False, True):
            msg = server.query(WEB, tcp=tcp)
            assert answers(msg) == [f"{WEB}. A 10.96.0.10"]
        msg = server.query("ns.dns.cluster.local", "AAAA")  # ns.dns names the listen address
        assert answers(msg) == ["ns.dns.cluster.local. AAAA ::1"]
        if have_dig():
            out = server.dig("cart.shop.svc.cluster.local", "AAAA")
            assert "fd00:10:96::10" in out and f"#{server.port}(::1)" in out
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:  # and not on IPv4
            s4.settimeout(0.3)
            s4.sendto(raw_query(WEB), ("127.0.0.1", server.port))
            with pytest.raises((TimeoutError, ConnectionRefusedError)):
                s4.recv(512)
    finally:
        assert server.stop() == 0, server.log()


# == shutdown ==================================================================================
def terminate(server: Dnsd, timeout: float = 5.0) -> tuple[int, float]:
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout)
    return code, time.monotonic() - started


def test_sigterm_exits_zero(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd()
    assert server.query(WEB).answer
    code, took = terminate(server)
    assert code == 0 and took < 5.0, server.log()
    assert "shutting down" in server.log()


def test_sigterm_with_open_tcp_connections(start_dnsd: Callable[..., Dnsd]) -> None:
    # Open connections are served while dnsd drains, until they idle out (test_handover.py): a short timeout.
    server = start_dnsd("--tcp-idle-timeout", "1")
    with tcp_connect(server, timeout=6.0) as idle, tcp_connect(server, timeout=6.0) as half:
        tcp_send(idle, raw_query(WEB))
        assert tcp_recv(idle) is not None  # open and idle after one answer
        half.sendall(b"\x00\x40")  # a length prefix, then nothing: mid-message
        time.sleep(0.1)
        code, took = terminate(server)
        assert code == 0 and took < 5.0, server.log()
        assert closed_by_peer(idle, timeout=1.0)
        assert closed_by_peer(half, timeout=1.0)


def test_sigterm_under_load(start_dnsd: Callable[..., Dnsd]) -> None:
    server = start_dnsd()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(300):  # queries still in flight when the signal lands
            sock.sendto(raw_query(WEB, qid=i), (server.address, server.port))
        code, took = terminate(server)
    assert code == 0 and took < 5.0, server.log()


def test_manifest_helper_splits_slices() -> None:
    docs = headless_service("x", 250)
    slices = [d for d in docs if d["kind"] == "EndpointSlice"]
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    assert len({ip_of(i) for i in range(250)}) == 250
