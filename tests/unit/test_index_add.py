"""Index.add, a first load's path, against what it stands for: apply((), records) for each owner in turn.
Every table (rrsets in the same order, the same strings), every count of children, the record count
and the names touched must be the same, whatever the index held before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd.cluster.model import CLUSTER_IP, Port, Service
from dnsd.dns.const import EXISTS, PTR, SRV, TXT, A
from dnsd.zone.index import Index
from dnsd.zone.records import SERVICE, Record, ServiceData, SrvData, SrvGroup, service_records

pytestmark = pytest.mark.unit

ZONES = ("cluster.local", "svc.cluster.local", "in-addr.arpa", "example", "a.b.example")  # some nested
NAMES = [
    "cluster.local", "svc.cluster.local", "a.svc.cluster.local", "web.a.svc.cluster.local",
    "_tcp.web.a.svc.cluster.local", "_http._tcp.web.a.svc.cluster.local", "x.web.a.svc.cluster.local",
    "db-0.db.b.svc.cluster.local", "db.b.svc.cluster.local", "1.0.0.10.in-addr.arpa", "0.0.10.in-addr.arpa",
    "2.1.0.10.in-addr.arpa", "in-addr.arpa", "outside.org", "a.b.example", "x.a.b.example", "c.b.example", "example",
]
RDATA = st.one_of(
    st.tuples(st.just(A), st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
    st.tuples(st.just(PTR), st.sampled_from(["web.a.svc.cluster.local", "db.b.svc.cluster.local"])),
    st.tuples(st.just(EXISTS), st.just("")),
    st.tuples(st.just(TXT), st.sampled_from(["1.1.0", "x"])),
    st.tuples(st.just(SRV), st.builds(SrvData, st.just(0), st.sampled_from([100, 50]), st.sampled_from([53, 80]),
                                      st.sampled_from(["web.a.svc.cluster.local", "db.b.svc.cluster.local"]))),
)
RECORD = st.builds(lambda name, pair: (name, pair[0], pair[1]), st.sampled_from(NAMES), RDATA)
# A ClusterIP Service's entry: at a name none of whose ``_`` names holds anything else (they are the entry's).
ENTRY = st.builds(lambda ips, ports: ("db.b.svc.cluster.local", SERVICE, ServiceData(ips, ports)),
                  st.sampled_from([(), ("10.0.0.1",), ("10.0.0.1", "fd00::1")]),
                  st.sampled_from([(), (Port("http", 80, "tcp"), Port("", 53, "udp"))]))
GROUPED = st.builds(lambda name, port, targets: (name, SRV, SrvGroup(0, 50, port, tuple(targets))),
                    st.sampled_from(["h.b.svc.cluster.local", "_dns._udp.h.b.svc.cluster.local"]),  # groups only
                    st.sampled_from([53, 80]), st.lists(st.sampled_from(["a.x", "b.x"]), min_size=1, max_size=2))
OWNER = st.lists(st.one_of(RECORD, GROUPED, ENTRY), max_size=8)


def state(index: Index) -> tuple[Any, ...]:
    """Everything an index holds, rrsets as the tuples (or lone records) the tables keep, in order."""
    return ({t: dict(table) for t, table in index._by_type.items()}, dict(index._below), index.record_count)


def by_apply(index: Index, owners: list[list[Record]]) -> set[str]:
    touched: set[str] = set()
    for records in owners:
        touched |= index.apply((), records)
    return touched


@settings(max_examples=300, deadline=None)
@given(before=st.lists(OWNER, max_size=3), owners=st.lists(OWNER, max_size=6))
def test_add_is_apply_for_each_owner_in_turn(before: list[list[Record]], owners: list[list[Record]]) -> None:
    one, other = Index(ZONES), Index(ZONES)
    by_apply(one, before)
    by_apply(other, before)
    assert by_apply(one, owners) == other.add(owners)
    assert state(one) == state(other)


def test_add_counts_parents_in_several_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first load counts the parents of what it added every _BORN_MAX names: the same result."""
    import dnsd.zone.index as index_module

    monkeypatch.setattr(index_module, "_BORN_MAX", 3)
    services = [Service("ns", f"svc{i}", CLUSTER_IP, (f"10.0.{i // 7}.{i % 250 + 1}",),
                        (Port("http", 80, "tcp"), Port("dns", 53, "udp"), Port("", 53, "tcp"))) for i in range(60)]
    zones = ("cluster.local",)
    owners = [service_records(s, (), zones) for s in services]
    one, other = Index((*zones, "in-addr.arpa")), Index((*zones, "in-addr.arpa"))
    assert by_apply(one, owners) == other.add(owners)
    assert state(one) == state(other)


def test_add_keeps_one_string_per_name() -> None:
    """A headless Service's name, parent of its endpoints' names, is counted under the string its rrsets are held by."""
    base = "db.ns.svc.cluster.local"
    index = Index(("cluster.local", "in-addr.arpa"))
    index.add([[(base, A, "10.0.0.1"), (f"db-0.{base}", A, "10.0.0.1")]])
    held = next(name for name in index._below if name == base)
    assert held is base
