"""The server-side search path's pure parts: the candidate names, the walk over the index, the cache of derived replies."""

from __future__ import annotations

from pathlib import Path

import dnslib
import pytest

from dnsd.cluster.model import Namespace, Service
from dnsd.cluster.store import Replace, Synced
from dnsd.dns.const import CNAME, MIN_PAYLOAD, NOERROR, NXDOMAIN, A
from dnsd.process.dataplane import Dataplane
from dnsd.zone.searchpath import Autopath, candidates, search_domains

Z = "cluster.local"
SEARCH = ("example.org", "corp.internal")


def test_candidates_follow_the_pods_search_list() -> None:
    assert candidates(f"api.github.com.shop.svc.{Z}", Z, SEARCH) == ("shop", (
        f"api.github.com.svc.{Z}", f"api.github.com.{Z}", "api.github.com.example.org",
        "api.github.com.corp.internal", "api.github.com"))
    assert candidates(f"web.shop.svc.{Z}", Z, ()) == ("shop", (f"web.svc.{Z}", f"web.{Z}", "web"))
    # A search domain equal to the zone is tried once.
    assert candidates(f"web.shop.svc.{Z}", Z, (Z,)) == ("shop", (f"web.svc.{Z}", f"web.{Z}", "web"))


def test_candidates_leave_out_names_too_long_to_ask() -> None:
    base = ".".join(["a" * 63] * 3)  # 191 bytes: fits under our zone, not under a 70-byte search domain
    long_domain = ".".join(["b" * 34, "c" * 35])
    _, steps = candidates(f"{base}.shop.svc.{Z}", Z, (long_domain,))
    assert steps == (f"{base}.svc.{Z}", f"{base}.{Z}", base)


@pytest.mark.parametrize("name", [f"shop.svc.{Z}", f"svc.{Z}", Z, f"web.shop.pod.{Z}", "web.shop.svc.example.org"])
def test_candidates_only_for_a_name_below_a_namespace(name: str) -> None:
    assert candidates(name, Z, SEARCH) is None


def test_search_domains_of_a_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\ndomain old.example\nsearch Corp.Internal. example.org # comment\n")
    assert search_domains(str(path)) == ("corp.internal", "example.org")
    assert search_domains(str(tmp_path / "missing")) == ()


@pytest.fixture
def index():
    dp = Dataplane([Z], 5, pods=True)
    dp.apply([Replace("t", (Namespace("shop"), Service("default", "web", "ClusterIP", ("10.96.0.10",), ()))),
              Synced("t")])
    return dp.index


def test_local_step_answers_with_a_cname(index) -> None:
    got = Autopath([Z], SEARCH)(index, f"web.default.shop.svc.{Z}", A, True)
    assert got.rcode == NOERROR and got.autopath
    assert got.answer == ((f"web.default.shop.svc.{Z}", CNAME, f"web.default.svc.{Z}"),
                          (f"web.default.svc.{Z}", A, "10.96.0.10"))
    assert f"web.default.svc.{Z}" in got.depends and f"shop.svc.{Z}" in got.depends


def test_a_pod_name_step_keeps_what_it_depends_on(index) -> None:
    got = Autopath([Z], ())(index, f"10-1-2-3.shop.pod.default.svc.{Z}", A, True)
    assert got.answer[-1] == (f"10-1-2-3.shop.pod.{Z}", A, "10.1.2.3")
    assert f"shop.pod.{Z}" in got.depends


def test_steps_outside_our_zones_are_left_to_the_forwarder(index) -> None:
    got = Autopath([Z], SEARCH, upstream=True)(index, f"api.github.com.shop.svc.{Z}", A, True)
    assert got.rcode == NXDOMAIN and not got.answer and got.authority  # what stands if upstream says NXDOMAIN
    assert got.forward == ("api.github.com.example.org", "api.github.com.corp.internal", "api.github.com")
    assert {f"shop.svc.{Z}", f"api.github.com.svc.{Z}", f"api.github.com.{Z}"} <= set(got.depends)


def test_a_later_local_step_is_the_fallback_after_the_forwarded_ones(index) -> None:
    # ndots:5 and a full cluster name: the search domains come before the name itself, which is ours.
    got = Autopath([Z], SEARCH, upstream=True)(index, f"web.default.svc.{Z}.shop.svc.{Z}", A, True)
    assert got.forward == (f"web.default.svc.{Z}.example.org", f"web.default.svc.{Z}.corp.internal")
    assert got.autopath and got.answer[-1] == (f"web.default.svc.{Z}", A, "10.96.0.10")
    # A step of ours that answers before any forwarded one needs no upstream.
    assert not Autopath([Z], SEARCH, upstream=True)(index, f"web.default.shop.svc.{Z}", A, True).forward


def test_without_a_forwarder_only_local_steps(index) -> None:
    got = Autopath([Z], SEARCH)(index, f"nothing.shop.svc.{Z}", A, True)
    assert got.rcode == NXDOMAIN and f"nothing.svc.{Z}" in got.depends and f"nothing.{Z}" in got.depends
    # Outside names are skipped, so a cluster name searched once more still gets there.
    got = Autopath([Z], SEARCH)(index, f"web.default.svc.{Z}.shop.svc.{Z}", A, True)
    assert got.answer[-1] == (f"web.default.svc.{Z}", A, "10.96.0.10")


def test_warm_hit_is_served_by_the_fast_path() -> None:
    dp = Dataplane([Z], 5, resolver=Autopath([Z], ()))
    dp.apply([Replace("t", (Namespace("shop"), Service("default", "web", "ClusterIP", ("10.96.0.10",), ()))),
              Synced("t")])
    query = bytes(dnslib.DNSRecord.question(f"web.default.shop.svc.{Z}", "A").pack())
    counts: dict = {}
    assert dp.responder.fast(query, MIN_PAYLOAD, counts) is None  # cold: the full path decides
    full = dp.responder.answer(query, MIN_PAYLOAD, counts)
    assert dp.responder.fast(query, MIN_PAYLOAD, counts) == full  # warm: straight from the table
    reply = dnslib.DNSRecord.parse(full)
    assert [str(rr.rdata) for rr in reply.rr] == [f"web.default.svc.{Z}.", "10.96.0.10"]


def test_derived_replies_go_when_a_name_they_used_changes() -> None:
    from dnsd.upstream.cache import ForwardCache
    from dnsd.upstream.message import parse

    now = [100.0]
    cache = ForwardCache(100, 3600, 0, 0, clock=lambda: now[0])
    reply = dnslib.DNSRecord.question(f"x.shop.svc.{Z}").reply()
    reply.add_answer(dnslib.RR(f"x.shop.svc.{Z}", dnslib.QTYPE.A, ttl=60, rdata=dnslib.A("192.0.2.1")))
    wire = bytes(reply.pack())
    key = wire[12:wire.index(0, 12) + 5]
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    assert cache.entry(key) is not None
    cache.forget([f"x.svc.{Z}"])
    assert cache.entry(key) is None
    # A walk that began before a change does not keep what it derived from the old data.
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.forget([f"x.svc.{Z}"])
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    assert cache.entry(key) is None
    token = cache.reserve(key, (f"x.svc.{Z}",))
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), token, None)
    now[0] += 59.5
    assert cache.entry(key) is not None
    now[0] += 1
    assert cache.entry(key) is None  # expired with the reply it was derived from
    cache.put_derived(key, parse(wire), now[0], 60, (1, 0), cache.reserve(key, ()), None)
    cache.forget_derived()  # a worker told to drop every rendered reply
    assert cache.entry(key) is None

