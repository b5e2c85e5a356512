"""The precomputed fast path must answer byte for byte what the full dnslib path answers."""

from __future__ import annotations

import random
import time

import dnslib
import pytest

from dnsd.answer.responder import SEEN_BITS
from dnsd.cluster.sources.manifests import expand, load_file, parse
from dnsd.cluster.store import Expect, Replace, Synced
from dnsd.dns.const import MIN_PAYLOAD, TCP_LIMIT
from dnsd.process.dataplane import Dataplane
from tests.e2e.test_answers import EDGE
from tests.helpers import ZONES


@pytest.fixture(scope="module")
def dataplane() -> Dataplane:
    return load()


def load(loadbalance: bool = False) -> Dataplane:
    dp = Dataplane(["cluster.local"], 5, "127.0.0.1", loadbalance=loadbalance)
    ops = [Expect("test")]
    for path in expand([ZONES]):
        result = load_file(path)
        assert result is not None
        ops.append(Replace(f"file:{path}", result.objects))
    edge, errors = parse(EDGE, "edge")
    assert not errors
    ops += [Replace("file:edge", tuple(edge)), Synced("test")]
    dp.apply(ops)
    return dp


def corpus(dp: Dataplane) -> list[bytes]:
    rng = random.Random(7)
    names = sorted({name for name, _, _ in dp.index.records()})
    names += ["nope.default.svc.cluster.local", "web.default.svc.cluster.local.default.svc.cluster.local",
              "svc.cluster.local", "default.svc.cluster.local", "example.com", "1.2.3.4.in-addr.arpa"]
    queries = []
    for name in names:
        spelled = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
        for qtype in ("A", "AAAA", "SRV", "PTR", "TXT", "SOA", "NS", "CNAME", "ANY", "MX"):
            q = dnslib.DNSRecord.question(spelled, qtype)
            q.header.id = rng.randrange(65536)
            q.header.rd = rng.random() < 0.7
            q.header.cd = rng.random() < 0.1
            queries.append(bytes(q.pack()))
            q.add_ar(dnslib.EDNS0(udp_len=rng.choice([512, 1232, 4096])))
            queries.append(bytes(q.pack()))
            cookie = dnslib.EDNSOption(10, b"\x01" * 8)
            q.ar = [dnslib.EDNS0(udp_len=1232, opts=[cookie])]
            queries.append(bytes(q.pack()))
    return queries


@pytest.mark.parametrize("limit", [MIN_PAYLOAD, TCP_LIMIT])
def test_fast_path_is_byte_identical_to_full_path(dataplane: Dataplane, limit: int) -> None:
    responder = dataplane.responder
    responder.clear()
    counts: dict = {}
    queries = corpus(dataplane)
    fast_hits = positive = 0
    for query in queries:
        full = responder.full(query, limit, counts)
        fast = responder.fast(query, limit, counts)
        tcp_any = limit == TCP_LIMIT and dnslib.DNSRecord.parse(query).q.qtype == dnslib.QTYPE.ANY  # never kept
        positive += full[6:8] != b"\x00\x00" and not tcp_any  # ANCOUNT
        if fast is not None:
            fast_hits += 1
            assert fast == full, dnslib.DNSRecord.parse(query).q
        reply = dnslib.DNSRecord.parse(full)
        assert reply.header.id == dnslib.DNSRecord.parse(query).header.id
        qend = query.index(0, 12) + 5
        assert full[12:qend] == query[12:qend]  # the question, byte for byte
    # Nearly every positive answer (all but oversize replies) must take the fast path; negative ones
    # are templates, never table entries.
    assert fast_hits > 0.9 * positive, (fast_hits, positive)
    assert positive > 0.1 * len(queries)


def test_a_batch_gets_what_each_query_gets_alone() -> None:
    """fast_many (the UDP listener's) answers and counts exactly as fast() per query: mixed case, RD/CD,
    EDNS, kept negatives, rotated answers, replies over 512 bytes, other shapes."""
    dataplane = load(loadbalance=True)
    responder = dataplane.responder
    queries = corpus(dataplane)
    for _ in range(2):
        for query in queries:
            responder.answer(query, MIN_PAYLOAD, {})  # positives rendered, negatives asked twice: kept
    queries += [queries[0][:2] + b"\x81" + queries[0][3:], queries[0][:5] + b"\x02" + queries[0][6:], b"\x00" * 5]
    alone: dict = {}
    expected = [responder.fast(query, MIN_PAYLOAD, alone) for query in queries]
    together: dict = {}
    got = [reply for i in range(0, len(queries), 64) for reply in responder.fast_many(queries[i : i + 64], together)]
    assert got == expected and together == alone
    assert sum(reply is not None for reply in got) > 0.5 * len(queries)
    assert responder._negatives  # kept negatives took part


def test_change_invalidates_rendered_replies(dataplane: Dataplane) -> None:
    from dnsd.cluster.model import Service

    responder = dataplane.responder
    counts: dict = {}
    query = bytes(dnslib.DNSRecord.question("late.default.svc.cluster.local", "A").pack())
    first = dnslib.DNSRecord.parse(responder.answer(query, MIN_PAYLOAD, counts))
    assert first.header.rcode == dnslib.RCODE.NXDOMAIN
    assert responder.fast(query, MIN_PAYLOAD, counts) is None  # a negative answer takes no table entry
    dataplane.apply([Replace("file:late", (Service("default", "late", "ClusterIP", ("10.96.9.9",), ()),))])
    second = dnslib.DNSRecord.parse(responder.answer(query, MIN_PAYLOAD, counts))
    assert second.header.rcode == 0 and str(second.rr[0].rdata) == "10.96.9.9"
    dataplane.apply([Replace("file:late", ())])
    third = dnslib.DNSRecord.parse(responder.answer(query, MIN_PAYLOAD, counts))
    assert third.header.rcode == dnslib.RCODE.NXDOMAIN


def test_reply_table_is_bounded_and_still_correct() -> None:
    from dnsd.cluster.model import Service

    dp = Dataplane(["cluster.local"], 5, None, cache_size=5)
    services = tuple(Service("default", f"n{i}", "ClusterIP", (f"10.96.1.{i}",), ()) for i in range(20))
    dp.apply([Expect("t"), Replace("file:t", services), Synced("t")])
    counts: dict = {}
    for i in range(20):
        query = bytes(dnslib.DNSRecord.question(f"n{i}.default.svc.cluster.local", "A").pack())
        reply = dnslib.DNSRecord.parse(dp.responder.answer(query, MIN_PAYLOAD, counts))
        assert str(reply.rr[0].rdata) == f"10.96.1.{i}"
    assert len(dp.responder._table) == 5 and not dp.responder.replies._keys  # A answers: keys computed from the name


@pytest.mark.parametrize("relist", [False, True])
def test_a_change_drops_every_type_asked_of_the_name(relist: bool) -> None:
    """Whatever type was asked (an ExternalName's CNAME answers MX too; uppercase spellings; EDNS),
    a change to the name drops its kept replies: one Service changed, or every name at once (a relist
    that touches more names than the table holds is matched by reading each key's name back)."""
    from dnsd.cluster.model import Port, Service

    dp = Dataplane(["cluster.local"], 5, None)
    ports = (Port("http", 80, "tcp"),)
    before = (Service("ns", "alias", "ExternalName", (), (), "old.example.org"),
              Service("ns", "web", "ClusterIP", ("10.96.0.1",), ports))
    after = (Service("ns", "alias", "ExternalName", (), (), "new.example.org"),
             Service("ns", "web", "ClusterIP", ("10.96.0.2",), (Port("http", 81, "tcp"),)))
    others = tuple(Service("ns", f"s{i}", "ClusterIP", (f"10.96.1.{i}",), ()) for i in range(1 if relist else 40))
    dp.apply([Expect("t"), Replace("file:t", before + others), Synced("t")])
    asked = [("ALIAS.ns.svc.cluster.local", "MX"), ("alias.ns.svc.cluster.local", "A"),
             ("web.ns.svc.cluster.local", "A"), ("_http._tcp.web.ns.svc.cluster.local", "SRV"),
             ("web.ns.svc.cluster.local", "ANY"), ("1.0.96.10.in-addr.arpa", "PTR")]
    asked += [(f"s{i}.ns.svc.cluster.local", "A") for i in range(len(others))]
    queries = []
    for name, qtype in asked:
        q = dnslib.DNSRecord.question(name, qtype)
        queries.append(bytes(q.pack()))
        q.add_ar(dnslib.EDNS0(udp_len=1232))
        queries.append(bytes(q.pack()))
    for query in queries:
        dp.responder.answer(query)
    assert all(dp.responder.fast(query, MIN_PAYLOAD, {}) is not None for query in queries)
    dp.apply([Replace("file:t", after + others)])
    for query in queries[:12]:
        assert dp.responder.fast(query, MIN_PAYLOAD, {}) is None, dnslib.DNSRecord.parse(query).q
    assert all(dp.responder.fast(query, MIN_PAYLOAD, {}) is not None for query in queries[12:])
    reply = dnslib.DNSRecord.parse(dp.responder.answer(queries[0]))
    assert str(reply.rr[0].rdata) == "new.example.org."


def test_negatives_asked_twice_take_the_fast_path_byte_for_byte(dataplane: Dataplane) -> None:
    """The search list's expansions and other names that do not exist, asked again and again: from the
    second ask the reply comes from the table, the same bytes the strict path gives."""
    responder = dataplane.responder
    responder.clear()
    negatives = [("web.default.svc.cluster.local.default.svc.cluster.local", "A"), ("nope.shop.svc.cluster.local", "AAAA"),
                 ("web.default.svc.cluster.local", "AAAA"), ("shop.svc.cluster.local", "A")]  # NXDOMAIN, NODATA
    for name, qtype in negatives:
        for edns in (False, True):
            q = dnslib.DNSRecord.question(name.upper() if edns else name, qtype)
            if edns:
                q.add_ar(dnslib.EDNS0(udp_len=1232))
            query = bytes(q.pack())
            if not edns:  # the EDNS spelling shares the key (the question lowercased): kept already
                assert responder.fast(query, MIN_PAYLOAD, {}) is None
                responder.answer(query)
                assert responder.fast(query, MIN_PAYLOAD, {}) is None  # asked once: only noted
                responder.answer(query)
            fast = responder.fast(query, MIN_PAYLOAD, {})
            assert fast is not None and fast == responder.full(query, MIN_PAYLOAD, {}), (name, qtype, edns)
            assert dnslib.DNSRecord.parse(fast).header.rcode in (0, 3) and not dnslib.DNSRecord.parse(fast).rr


def test_a_kept_negative_follows_every_change() -> None:
    from dnsd.cluster.model import Service

    dp = Dataplane(["cluster.local"], 5, None)
    dp.apply([Expect("t"), Replace("file:t", (Service("default", "web", "ClusterIP", ("10.96.0.1",), ()),)), Synced("t")])
    query = bytes(dnslib.DNSRecord.question("late.default.svc.cluster.local", "A").pack())
    for _ in range(2):
        dp.responder.answer(query)
    kept = dp.responder.fast(query, MIN_PAYLOAD, {})
    assert kept is not None and dnslib.DNSRecord.parse(kept).auth[0].rdata.times[0] == dp.serial
    # Another name changes a second later: the serial moves, and the kept reply with its SOA goes.
    time.sleep(1.05)
    dp.apply([Replace("file:u", (Service("default", "other", "ClusterIP", ("10.96.0.2",), ()),))])
    assert dp.responder.fast(query, MIN_PAYLOAD, {}) is None
    fresh = dnslib.DNSRecord.parse(dp.responder.answer(query))
    assert fresh.header.rcode == dnslib.RCODE.NXDOMAIN and fresh.auth[0].rdata.times[0] == dp.serial
    dp.responder.answer(query)
    assert dp.responder.fast(query, MIN_PAYLOAD, {}) is not None
    # The name itself appears: answered at once.
    dp.apply([Replace("file:v", (Service("default", "late", "ClusterIP", ("10.96.9.9",), ()),))])
    assert dp.responder.fast(query, MIN_PAYLOAD, {}) is None
    assert str(dnslib.DNSRecord.parse(dp.responder.answer(query)).rr[0].rdata) == "10.96.9.9"


def test_a_flood_of_unique_negative_names_keeps_nothing() -> None:
    dp = Dataplane(["cluster.local"], 5, None)
    dp.apply([Expect("t"), Replace("file:t", ()), Synced("t")])
    for i in range(10_000):
        dp.responder.answer(bytes(dnslib.DNSRecord.question(f"r{i}.default.svc.cluster.local", "A").pack()))
    # Only the questions the bitmap mistakes for asked before (under 0.4%) are kept; its memory is fixed.
    assert len(dp.responder._table) <= 40 and len(dp.responder._negatives_seen) == SEEN_BITS >> 3


def test_a_negative_asked_again_after_thousands_of_others_is_kept() -> None:
    # A pod's search list: each expansion comes back after every other name's (bench/qps's mix: ~5,000).
    dp = Dataplane(["cluster.local"], 5, None)
    dp.apply([Expect("t"), Replace("file:t", ()), Synced("t")])
    queries = [bytes(dnslib.DNSRecord.question(f"r{i}.default.svc.cluster.local", "A").pack()) for i in range(6_000)]
    for _ in range(2):
        for query in queries:
            dp.responder.answer(query)
    kept = sum(dp.responder.fast(query, MIN_PAYLOAD, {}) is not None for query in queries)
    assert kept == len(queries)
