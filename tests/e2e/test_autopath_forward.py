"""Autopath's forwarded steps (the search domains outside our zones, then the bare name): the real
server, with the scripted upstream (tests/fakes/upstream.py), over UDP and TCP, and lean workers."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import pytest
from dnslib import MX, QTYPE, RR, A, DNSRecord

from dnsd.upstream.message import normalise, parse
from dnsd.upstream.steps import with_cname
from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, answers, rcode, wait_for

Z = "cluster.local"
CLUSTER = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"""


# -- the pure part: moving an upstream reply behind another question --------------------------
def test_with_cname_rewrites_compressed_records_for_the_asked_name() -> None:
    step = DNSRecord.question("Mail.Example.org", "MX").reply()
    step.add_answer(RR("Mail.Example.org", QTYPE.MX, ttl=300, rdata=MX("mx1.Mail.Example.org", 10)))
    step.add_answer(RR("mail.example.org", QTYPE.MX, ttl=200, rdata=MX("mx2.example.org", 20)))
    step.add_ar(RR("mx1.Mail.Example.org", QTYPE.A, ttl=300, rdata=A("192.0.2.9")))
    wire = bytes(step.pack())
    assert b"\xc0" in wire[40:]  # dnslib compressed the owners and the MX targets
    qwire = dns.name.from_text(f"mail.shop.svc.{Z}").to_wire()
    out = dns.message.from_wire(with_cname(normalise(parse(wire)), qwire, 15, 200))
    assert str(out.answer[0]) == f"mail.shop.svc.{Z}. 200 IN CNAME Mail.Example.org."
    assert out.answer[1].name.labels[0] == b"Mail"  # case kept (dnspython folds both MX into one RRset)
    assert sorted(f"{rr.name} {rd}" for rr in out.answer[1:] for rd in rr) == [
        "Mail.Example.org. 10 mx1.Mail.Example.org.", "Mail.Example.org. 20 mx2.example.org."]
    assert [str(rr) for rr in out.additional] == ["mx1.Mail.Example.org. 300 IN A 192.0.2.9"]
    assert not out.flags & dns.flags.AA and out.flags & dns.flags.QR


# -- the real server ---------------------------------------------------------------------------
@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.mode = "nxdomain"  # every name is NXDOMAIN unless a test says otherwise
        server.rich = True
        yield server


@pytest.fixture
def cluster(manifest_dir: Path) -> Path:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    return manifest_dir


@pytest.fixture
def autopath(start_dnsd: Callable[..., Dnsd], cluster: Path, upstream: FakeUpstream) -> Callable[..., Dnsd]:
    def start(*flags: str, **kwargs) -> Dnsd:
        return start_dnsd("--manifests", str(cluster), "--autopath", "--autopath-search", "example.org",
                          "--upstream", upstream.server, *flags, **kwargs)
    return start


def hits(server: Dnsd) -> float:
    _, text = server.http("/metrics")
    return sum(float(v) for v in re.findall(r"^coredns_autopath_success_total\{[^}]*\} (\S+)$", text, re.M))


def asked(upstream: FakeUpstream) -> list[tuple[str, str]]:
    """What dnsd asked the upstream for its clients (not its loop probes or health checks)."""
    return [(s.name.rstrip(".").lower(), s.qtype) for s in list(upstream.seen)
            if s.name != "." and not s.name.endswith(".dnsd-loop-probe.invalid.")]


@pytest.mark.parametrize("tcp", [False, True])
def test_external_name_found_at_the_bare_step(autopath, upstream: FakeUpstream, tcp: bool) -> None:
    upstream.modes["api.github.com"] = "answer"
    s = autopath()
    msg = s.query(f"Api.GitHub.com.shop.svc.{Z}", tcp=tcp)
    assert rcode(msg) == "NOERROR" and not msg.flags & dns.flags.AA
    assert [f"{rr.name} {rd}" for rr in msg.answer for rd in rr] == [
        f"Api.GitHub.com.shop.svc.{Z}. api.github.com.", "api.github.com. 192.0.2.1"]
    # The steps of ours are never asked upstream; the search domain first, then the bare name.
    assert asked(upstream) == [("api.github.com.example.org", "A"), ("api.github.com", "A")]
    wait_for(lambda: hits(s) == 1, timeout=5)


def test_external_name_found_at_a_search_domain(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["intranet.example.org"] = "answer"
    s = autopath()
    msg = s.query(f"intranet.shop.svc.{Z}")
    assert answers(msg) == sorted([f"intranet.shop.svc.{Z}. CNAME intranet.example.org.",
                                   "intranet.example.org. A 192.0.2.1"])
    assert asked(upstream) == [("intranet.example.org", "A")]  # found: the bare name is never asked


@pytest.mark.parametrize("tcp", [False, True])
def test_every_step_nxdomain_is_the_original_nxdomain(autopath, upstream: FakeUpstream, tcp: bool) -> None:
    s = autopath()
    msg = s.query(f"nothing.shop.svc.{Z}", tcp=tcp)
    assert rcode(msg) == "NXDOMAIN" and not msg.answer and msg.flags & dns.flags.AA
    assert [str(rr.name) for rr in msg.authority] == [f"{Z}."]  # our SOA, not the upstream's
    assert asked(upstream) == [("nothing.example.org", "A"), ("nothing", "A")]
    before = len(asked(upstream))
    assert rcode(s.query(f"nothing.shop.svc.{Z}", tcp=tcp)) == "NXDOMAIN"
    assert len(asked(upstream)) == before  # the upstream NXDOMAINs are cached (SOA minimum 30 s)
    assert hits(s) == 0


@pytest.mark.parametrize("mode", ["servfail", "silent"])
def test_a_failing_step_leaves_the_plain_nxdomain_within_the_forward_timeout(autopath, upstream: FakeUpstream,
                                                                             mode: str) -> None:
    upstream.modes["api.github.com.example.org"] = mode
    upstream.modes["api.github.com"] = "answer"  # never reached: a failure ends the walk
    s = autopath("--forward-timeout", "1", "--upstream-timeout", "0.5", "--serve-stale", "0")
    started = time.monotonic()
    msg = s.query(f"api.github.com.shop.svc.{Z}", timeout=5)
    elapsed = time.monotonic() - started
    assert rcode(msg) == "NXDOMAIN" and not msg.answer
    assert elapsed < 2.5, elapsed  # the forward timeout (1 s), plus a loaded machine's slack
    assert ("api.github.com", "A") not in asked(upstream)


def test_cached_repeat_asks_nothing_and_ttls_count_down(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com"] = "answer"
    upstream.ttl = 20  # under the search domain's negative TTL (30): the answer's own TTL bounds the entry
    s = autopath()
    name = f"api.github.com.shop.svc.{Z}"
    first = s.query(name)
    sent = len(asked(upstream))
    assert [rr.ttl for rr in first.answer] == [20, 20]
    time.sleep(2.2)
    for tcp in (False, True):
        again = s.query(name, tcp=tcp)
        assert answers(again) == answers(first)
        assert all(15 <= rr.ttl <= 18 for rr in again.answer), [rr.ttl for rr in again.answer]  # CNAME too
    assert len(asked(upstream)) == sent
    wait_for(lambda: hits(s) == 3, timeout=5)


def test_the_entry_expires_with_the_first_step_it_relied_on(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com"] = "answer"  # TTL 300, after an NXDOMAIN kept for 30 s
    s = autopath()
    msg = s.query(f"api.github.com.shop.svc.{Z}")
    assert [rr.ttl for rr in msg.answer] in ([30, 30], [29, 29])  # none outlives the search domain's NXDOMAIN


@pytest.mark.parametrize(("rdtype", "want"), [
    ("AAAA", "api.github.com. AAAA 2001:db8::1"),
    ("MX", "api.github.com. MX 10 mail.api.github.com."),
    ("TXT", 'api.github.com. TXT "for api.github.com."'),
])
def test_other_types(autopath, upstream: FakeUpstream, rdtype: str, want: str) -> None:
    upstream.modes["api.github.com"] = "answer"
    s = autopath()
    for tcp in (False, True):
        msg = s.query(f"api.github.com.shop.svc.{Z}", rdtype, tcp=tcp)
        assert answers(msg) == sorted([f"api.github.com.shop.svc.{Z}. CNAME api.github.com.", want])
    assert asked(upstream) == [("api.github.com.example.org", rdtype), ("api.github.com", rdtype)]


def test_nodata_upstream_ends_the_walk(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com.example.org"] = "answer"  # exists, but has no SRV
    upstream.modes["api.github.com"] = "answer"
    s = autopath()
    msg = s.query(f"api.github.com.shop.svc.{Z}", "SRV")
    assert rcode(msg) == "NOERROR" and answers(msg) == [f"api.github.com.shop.svc.{Z}. CNAME api.github.com.example.org."]
    assert [str(rr.name) for rr in msg.authority] == ["example."]  # the upstream's SOA
    assert asked(upstream) == [("api.github.com.example.org", "SRV")]


def test_big_answers_are_truncated_over_udp(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["big.example"] = "big"  # 100 A records: over UDP's size
    s = autopath()
    udp = s.query(f"big.example.shop.svc.{Z}")
    assert udp.flags & dns.flags.TC
    full = s.query(f"big.example.shop.svc.{Z}", tcp=True)
    assert len(full.answer) == 2 and len(full.answer[1]) == 100
    assert f"{full.answer[0].name} {full.answer[0][0]}" == f"big.example.shop.svc.{Z}. big.example."
    assert s.dig(f"big.example.shop.svc.{Z}").count("\tA\t") == 100  # dig retries over TCP


@pytest.mark.parametrize("workers", [1, 2])
def test_a_cluster_change_drops_the_cached_reply(autopath, upstream: FakeUpstream, cluster: Path, workers: int) -> None:
    upstream.modes["api.default"] = "answer"  # the bare name answers upstream until api.default.svc.Z exists
    s = autopath(workers=workers)  # with 2, the process holding the reply may be a lean worker, told by the main one
    name = f"api.default.shop.svc.{Z}"
    assert f"{name}. CNAME api.default." in answers(s.query(name))
    sent = len(asked(upstream))
    (cluster / "api.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
                                      "spec: {clusterIP: 10.96.0.20}\n")
    wait_for(lambda: answers(s.query(name)) == sorted([f"{name}. CNAME api.default.svc.{Z}.",
                                                       f"api.default.svc.{Z}. A 10.96.0.20"]), timeout=5)
    assert len(asked(upstream)) == sent  # found in our zone before any forwarded step
    (cluster / "api.yaml").unlink()
    wait_for(lambda: f"{name}. CNAME api.default." in answers(s.query(name)), timeout=5)


def test_full_cluster_name_after_forwarded_search_domains(autopath, upstream: FakeUpstream) -> None:
    # ndots:5: web.default.svc.Z is searched as web.default.svc.Z.shop.svc.Z; the search domain
    # (outside our zones) comes before the name itself, so it is asked upstream first.
    s = autopath()
    for _ in range(2):
        msg = s.query(f"web.default.svc.{Z}.shop.svc.{Z}")
        assert answers(msg) == sorted([f"web.default.svc.{Z}.shop.svc.{Z}. CNAME web.default.svc.{Z}.",
                                       f"web.default.svc.{Z}. A 10.96.0.10"])
    assert asked(upstream) == [(f"web.default.svc.{Z}.example.org", "A")]  # once: the outcome is cached
    upstream.modes[f"web.default.svc.{Z}.example.org"] = "answer"
    assert rcode(s.query(f"web.default.svc.{Z}.shop.svc.{Z}", "AAAA")) == "NOERROR"


def test_with_two_workers(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com"] = "answer"
    s = autopath(workers=2)
    for i in range(20):  # steering spreads names over both workers
        name = f"api.github.com.shop.svc.{Z}" if i % 2 else f"n{i}.shop.svc.{Z}"
        for tcp in (False, True):
            msg = s.query(name, tcp=tcp)
            if i % 2:
                assert answers(msg) == sorted([f"{name}. CNAME api.github.com.", "api.github.com. A 192.0.2.1"])
            else:
                assert rcode(msg) == "NXDOMAIN"


def test_hot_reply_is_refreshed_before_it_expires(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com"] = "answer"
    upstream.ttl = 3
    s = autopath("--prefetch", "2")
    name = f"api.github.com.shop.svc.{Z}"
    s.query(name)
    s.query(name)
    time.sleep(2.8)  # the last 10% of the TTL: this hit refreshes the step that bounds it
    s.query(name)
    wait_for(lambda: asked(upstream).count(("api.github.com", "A")) == 2, timeout=2)
    time.sleep(0.5)  # past the first reply's expiry: the refreshed one answers, nothing waits
    msg = s.query(name)
    assert rcode(msg) == "NOERROR" and min(rr.ttl for rr in msg.answer) >= 2
    assert asked(upstream).count(("api.github.com", "A")) == 2


def test_stale_step_is_served_not_kept(autopath, upstream: FakeUpstream) -> None:
    upstream.modes["api.github.com"] = "answer"
    upstream.ttl = 1
    s = autopath("--serve-stale", "60", "--prefetch", "0", "--forward-timeout", "1", "--upstream-timeout", "0.5")
    name = f"api.github.com.shop.svc.{Z}"
    assert rcode(s.query(name)) == "NOERROR"
    upstream.modes["api.github.com"] = "silent"
    time.sleep(1.2)
    stale = s.query(name, timeout=5)
    assert sorted(answers(stale)) == sorted([f"{name}. CNAME api.github.com.", "api.github.com. A 192.0.2.1"])
    assert [rr.ttl for rr in stale.answer] == [30, 30]  # RFC 8767's TTL, the CNAME's too
    upstream.modes["api.github.com"] = "answer"
    upstream.address = "192.0.2.9"
    # Never kept: the next query walks again and gets the new data.
    wait_for(lambda: "api.github.com. A 192.0.2.9" in answers(s.query(name, timeout=5)), timeout=5)


def test_only_stub_domains_ask_only_their_steps(start_dnsd: Callable[..., Dnsd], cluster: Path,
                                                upstream: FakeUpstream) -> None:
    upstream.modes["intranet.example.org"] = "answer"
    s = start_dnsd("--manifests", str(cluster), "--autopath", "--autopath-search", "example.org",
                   "--upstream", "none", "--stub-domain", f"example.org={upstream.server}")
    msg = s.query(f"intranet.shop.svc.{Z}")
    assert answers(msg) == sorted([f"intranet.shop.svc.{Z}. CNAME intranet.example.org.",
                                   "intranet.example.org. A 192.0.2.1"])
    assert rcode(s.query(f"other.shop.svc.{Z}")) == "NXDOMAIN"  # the bare name has no upstream: skipped
    assert asked(upstream) == [("intranet.example.org", "A"), ("other.example.org", "A")]
