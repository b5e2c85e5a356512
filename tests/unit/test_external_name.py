"""ExternalName Services chased inside the served zones: the alias, then the target's records, with
chains bounded and loops cut, and the reply dropped when anything it was derived from changes."""

from __future__ import annotations

import dnslib

from dnsd.cluster.sources.manifests import parse
from dnsd.cluster.store import Replace, Synced
from dnsd.dns.const import AAAA, CNAME, NOERROR, NXDOMAIN, SOA, SRV, A
from dnsd.process.dataplane import Dataplane
from dnsd.zone.resolver import MAX_CHAIN, resolve

Z = "cluster.local"
CLUSTER = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: alias, namespace: shop}}
spec: {{type: ExternalName, externalName: web.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: chain, namespace: shop}}
spec: {{type: ExternalName, externalName: alias.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: ping, namespace: shop}}
spec: {{type: ExternalName, externalName: pong.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: pong, namespace: shop}}
spec: {{type: ExternalName, externalName: ping.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: dangling, namespace: shop}}
spec: {{type: ExternalName, externalName: nothing.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: away, namespace: shop}}
spec: {{type: ExternalName, externalName: db.example.com}}
"""


def dataplane(extra: str = "") -> Dataplane:
    objects, errors = parse(CLUSTER + extra, "cluster.yaml")
    assert not errors
    dp = Dataplane([Z], 5)
    dp.apply([Replace("file:cluster", tuple(objects)), Synced("file:cluster")])
    return dp


def test_an_alias_in_the_zone_answers_with_the_target_records() -> None:
    dp = dataplane()
    answer = resolve(dp.index, f"alias.shop.svc.{Z}", A, True)
    assert answer.rcode == NOERROR
    assert answer.answer == ((f"alias.shop.svc.{Z}", CNAME, f"web.shop.svc.{Z}"), (f"web.shop.svc.{Z}", A, "10.96.0.10"))
    assert f"web.shop.svc.{Z}" in answer.depends


def test_a_chain_of_aliases_is_followed_to_the_end() -> None:
    answer = resolve(dataplane().index, f"chain.shop.svc.{Z}", A, True)
    assert [(name, rtype) for name, rtype, _ in answer.answer] == [
        (f"chain.shop.svc.{Z}", CNAME), (f"alias.shop.svc.{Z}", CNAME), (f"web.shop.svc.{Z}", A)]
    assert {f"alias.shop.svc.{Z}", f"web.shop.svc.{Z}"} <= set(answer.depends)


def test_srv_of_an_alias_carries_the_targets_addresses() -> None:
    answer = resolve(dataplane().index, f"alias.shop.svc.{Z}", SRV, True)
    assert [rtype for _, rtype, _ in answer.answer] == [CNAME, SRV]
    assert answer.additional == ((f"web.shop.svc.{Z}", A, "10.96.0.10"),)


def test_a_loop_ends_with_what_was_followed() -> None:
    answer = resolve(dataplane().index, f"ping.shop.svc.{Z}", A, True)
    assert answer.rcode == NOERROR
    assert [rdata for _, _, rdata in answer.answer] == [f"pong.shop.svc.{Z}", f"ping.shop.svc.{Z}"]


def test_a_long_chain_stops_at_the_bound() -> None:
    hops = "".join(f"""
---
apiVersion: v1
kind: Service
metadata: {{name: hop{i}, namespace: shop}}
spec: {{type: ExternalName, externalName: hop{i + 1}.shop.svc.{Z}}}""" for i in range(20))
    answer = resolve(dataplane(hops).index, f"hop0.shop.svc.{Z}", A, True)
    assert answer.rcode == NOERROR
    assert len(answer.answer) == MAX_CHAIN + 1 and all(rtype == CNAME for _, rtype, _ in answer.answer)


def test_a_missing_target_is_nxdomain_with_the_alias_and_the_soa() -> None:
    answer = resolve(dataplane().index, f"dangling.shop.svc.{Z}", A, True)
    assert answer.rcode == NXDOMAIN
    assert answer.answer == ((f"dangling.shop.svc.{Z}", CNAME, f"nothing.shop.svc.{Z}"),)
    assert answer.authority[0][1] == SOA and Z in answer.depends  # the SOA's serial moves


def test_a_target_without_the_type_is_nodata_with_the_alias() -> None:
    answer = resolve(dataplane().index, f"alias.shop.svc.{Z}", AAAA, True)
    assert answer.rcode == NOERROR and len(answer.answer) == 1 and answer.authority[0][1] == SOA


def test_a_target_outside_the_zones_and_the_cname_question_get_the_alias_alone() -> None:
    index = dataplane().index
    assert resolve(index, f"away.shop.svc.{Z}", A, True).answer == ((f"away.shop.svc.{Z}", CNAME, "db.example.com"),)
    assert resolve(index, f"alias.shop.svc.{Z}", CNAME, True).answer == (
        (f"alias.shop.svc.{Z}", CNAME, f"web.shop.svc.{Z}"),)


def test_before_the_sync_an_unknown_target_is_servfail_not_a_negative() -> None:
    answer = resolve(dataplane().index, f"dangling.shop.svc.{Z}", A, False)
    assert answer.rcode == 2 and not answer.answer


def test_the_kept_reply_follows_a_change_of_the_target() -> None:
    dp = dataplane()
    query = bytes(dnslib.DNSRecord.question(f"chain.shop.svc.{Z}").pack())

    def addresses() -> list[str]:
        reply = dnslib.DNSRecord.parse(dp.responder.answer(query))
        return [str(rr.rdata) for rr in reply.rr if rr.rtype == A]

    assert addresses() == ["10.96.0.10"]
    assert dp.responder.fast(query, 512, {}) is not None  # kept: a repeat is a table hit
    objects, _ = parse(CLUSTER.replace("10.96.0.10", "10.96.0.99"), "cluster.yaml")
    dp.apply([Replace("file:cluster", tuple(objects))])  # the target changes, the aliases do not
    assert addresses() == ["10.96.0.99"]
