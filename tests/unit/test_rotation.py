"""Rotating a reply's address records (loadbalance): which records form the run, and that every
rotation is the same valid reply with the addresses in another order."""

from __future__ import annotations

import dnslib
import pytest

from dnsd.cluster.sources.manifests import expand, load_file
from dnsd.cluster.store import Expect, Replace, Synced
from dnsd.dns.const import MIN_PAYLOAD
from dnsd.dns.reply import address_run, make_entry, rotated
from dnsd.process.dataplane import Dataplane
from tests.helpers import ZONES

NAME = "web.shop.svc.cluster.local"


def reply(*records: dnslib.RR) -> tuple[bytes, int]:
    msg = dnslib.DNSRecord.question(NAME).reply()
    for rr in records:
        msg.add_answer(rr)
    wire = bytes(msg.pack())
    return wire, wire.index(0, 12) + 5


def a(owner: str, ip: str) -> dnslib.RR:
    return dnslib.RR(owner, dnslib.QTYPE.A, rdata=dnslib.A(ip), ttl=5)


IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_a_run_of_addresses_rotates_into_every_order_of_one_cycle() -> None:
    wire, qend = reply(*(a(NAME, ip) for ip in IPS))
    run = address_run(wire, qend)
    assert run is not None and run[1:] == (16, 3)  # 2-byte pointer + 10 + 4 bytes each, three of them
    tail = wire[qend:]
    seen = []
    for qid in range(6):
        query = qid.to_bytes(2, "big")
        msg = dnslib.DNSRecord.parse(wire[:qend] + rotated(tail, run, query))
        seen.append([str(rr.rdata) for rr in msg.rr])
    assert seen[:3] == [IPS, IPS[1:] + IPS[:1], IPS[2:] + IPS[:2]]  # round robin for IDs counting up
    assert seen[3:] == seen[:3]


def test_records_after_a_cname_rotate_and_the_cname_stays_first() -> None:
    target = "db.shop.svc.cluster.local"
    wire, qend = reply(dnslib.RR(NAME, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=5),
                       *(a(target, ip) for ip in IPS))
    run = address_run(wire, qend)
    assert run is not None and run[2] == 3
    msg = dnslib.DNSRecord.parse(wire[:qend] + rotated(wire[qend:], run, b"\x00\x01"))
    assert msg.rr[0].rtype == dnslib.QTYPE.CNAME
    assert [str(rr.rdata) for rr in msg.rr[1:]] == IPS[1:] + IPS[:1]
    assert {str(rr.rname) for rr in msg.rr[1:]} == {target + "."}


@pytest.mark.parametrize("records", [
    [a(NAME, "10.0.0.1")],  # one address: nothing to rotate
    [dnslib.RR(NAME, dnslib.QTYPE.SRV, rdata=dnslib.SRV(0, 100, 80, NAME), ttl=5)] * 2,  # not addresses
    [a(NAME, "10.0.0.1"), dnslib.RR(NAME, dnslib.QTYPE.AAAA, rdata=dnslib.AAAA("fd00::1"), ttl=5)],  # two types
], ids=["one", "srv", "mixed"])
def test_nothing_to_rotate(records: list[dnslib.RR]) -> None:
    wire, qend = reply(*records)
    assert address_run(wire, qend) is None
    assert make_entry(wire, qend, 0, (1, 0), 1232, rotate=True).rotate is None


def test_the_fast_path_rotates_as_the_strict_path_does() -> None:
    dp = Dataplane(["cluster.local"], 5, "127.0.0.1", loadbalance=True)
    ops: list = [Expect("test")]
    for path in expand([ZONES]):
        result = load_file(path)
        assert result is not None
        ops.append(Replace(f"file:{path}", result.objects))
    dp.apply([*ops, Synced("test")])
    firsts = set()
    for qid in range(8):
        q = dnslib.DNSRecord.question("db.shop.svc.cluster.local")
        q.header.id = qid
        query = bytes(q.pack())
        full = dp.responder.full(query, MIN_PAYLOAD, {})
        assert dp.responder.fast(query, MIN_PAYLOAD, {}) == full  # the same rotation, from the table
        got = [str(rr.rdata) for rr in dnslib.DNSRecord.parse(full).rr]
        assert sorted(got) == ["10.244.1.20", "10.244.2.21"]
        firsts.add(got[0])
    assert len(firsts) == 2
