"""The query log's lines (CoreDNS's log format), its class filter and its rate bound (observe/querylog.py)."""

from __future__ import annotations

import logging

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from dnsd.observe.querylog import QueryLog, classify, line


def exchange(name: str, qtype: str, rcode: int = 0, answers: int = 1, **kwargs: object) -> tuple[bytes, bytes]:
    query = dns.message.make_query(name, qtype, **kwargs)  # type: ignore[arg-type]
    query.id = 4321
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    reply.flags |= dns.flags.AA
    for i in range(answers):
        reply.answer.append(dns.rrset.from_text(name, 5, "IN", "A", f"10.0.0.{i + 1}"))
    return query.to_wire(), reply.to_wire()


def test_a_line_has_every_field_of_coredns_common_format() -> None:
    query, reply = exchange("web.shop.svc.cluster.local.", "A", use_edns=0, want_dnssec=True, payload=1232)
    text = line(query, reply, ("10.244.1.7", 40211), False, 0.000041)
    assert text == (f'10.244.1.7:40211 - 4321 "A IN web.shop.svc.cluster.local. udp {len(query)} true 1232" '
                    f"NOERROR qr,aa,rd {len(reply)} 0.000041s")
    plain_query, plain_reply = exchange("x.example.", "AAAA", rcode=dns.rcode.NXDOMAIN, answers=0)
    text = line(plain_query, plain_reply, ("::1", 53), True, 1.5)
    assert text == (f'::1:53 - 4321 "AAAA IN x.example. tcp {len(plain_query)} false 512" '
                    f"NXDOMAIN qr,aa,rd {len(plain_reply)} 1.500000s")


@pytest.mark.parametrize(("rcode", "answers", "kind"), [
    (dns.rcode.NOERROR, 1, "success"), (dns.rcode.NOERROR, 0, "denial"), (dns.rcode.NXDOMAIN, 0, "denial"),
    (dns.rcode.SERVFAIL, 0, "error"), (dns.rcode.REFUSED, 0, "error"), (dns.rcode.FORMERR, 0, "error"),
])
def test_classes_as_coredns(rcode: int, answers: int, kind: str) -> None:
    assert classify(exchange("a.example.", "A", rcode, answers)[1]) == kind


def test_the_class_filter_and_the_rate_bound(caplog: pytest.LogCaptureFixture) -> None:
    ok, nx = exchange("a.example.", "A"), exchange("b.example.", "A", dns.rcode.NXDOMAIN, 0)
    denials = QueryLog("denial", rate=0)
    logger = logging.getLogger("dnsd.query")
    logger.addHandler(caplog.handler)
    try:
        for query, reply in (ok, nx, ok, nx):
            denials.write(query, reply, ("10.0.0.1", 1), False, 0.0)
        questions = [r.getMessage().split('"')[1] for r in caplog.records]
        assert denials.written == 2 and questions == [f"A IN b.example. udp {len(nx[0])} false 512"] * 2
        bounded = QueryLog("all", rate=5)
        for _ in range(50):  # at once: the bucket holds 5
            bounded.write(*ok, ("10.0.0.1", 1), False, 0.0)
        assert bounded.written == 5 and bounded.dropped == 45
    finally:
        logger.removeHandler(caplog.handler)


def test_an_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of all, success, denial, error"):
        QueryLog("warnings")
