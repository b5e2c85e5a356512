"""A ClusterIP Service's one index entry against the records it stands for: an index fed entries
answers every question (data, children, existence, each type's rrset, the record count, the
records listed) as one fed the same records spelled out, through first loads and changes,
including a Service that turns headless and back; and it names every name whose answers changed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsd.cluster.model import Port
from dnsd.dns.const import AAAA, PTR, SRV, A
from dnsd.zone.index import TYPES, Index
from dnsd.zone.records import SERVICE, Record, ServiceData, SrvData, SrvGroup, plain, reverse_name

pytestmark = pytest.mark.unit

ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
BASES = ("web.a.svc.cluster.local", "db.a.svc.cluster.local", "web.b.svc.cluster.local")
PORTS = st.lists(st.builds(Port, st.sampled_from(["", "http", "dns"]), st.sampled_from([53, 80, 8080]),
                           st.sampled_from(["tcp", "udp"])), max_size=4).map(tuple)
IPS = st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]), unique=True, max_size=3).map(tuple)


def cluster_ip(base: str, data: ServiceData) -> list[Record]:
    """As records.service_records makes them: the entry, and the addresses' PTRs."""
    return [(base, SERVICE, data), *((reverse_name(ip), PTR, base) for ip in data.ips)]


def headless(base: str, ips: tuple[str, ...], ports: tuple[Port, ...]) -> list[Record]:
    """A headless Service's records at the same name: what a Service whose type changes leaves behind."""
    out: list[Record] = []
    for i, ip in enumerate(ips):
        target = f"p{i}.{base}"
        out += [(base, AAAA if ":" in ip else A, ip), (target, AAAA if ":" in ip else A, ip)]
    targets = tuple(f"p{i}.{base}" for i in range(len(ips)))
    for p in ports:
        if targets:
            out.append((base, SRV, SrvGroup(0, 50, p.port, targets)))
            if p.name:
                out.append((f"_{p.name}._{p.protocol}.{base}", SRV, SrvGroup(0, 50, p.port, targets)))
    return out


OWNER = st.one_of(
    st.just("gone"),
    st.builds(lambda ips, ports: ("cluster", ServiceData(ips, ports)), IPS, PORTS),
    st.builds(lambda ips, ports: ("headless", ips, ports), IPS, PORTS),
)
STEPS = st.lists(st.tuples(st.sampled_from(range(len(BASES))), OWNER), max_size=12)


def records_of(base: str, state: object) -> list[Record]:
    if state == "gone":
        return []
    if state[0] == "cluster":  # type: ignore[index]
        return cluster_ip(base, state[1])  # type: ignore[index]
    return headless(base, state[1], state[2])  # type: ignore[index]


def probes() -> list[str]:
    out = ["cluster.local", "svc.cluster.local", "a.svc.cluster.local", "b.svc.cluster.local", "nope.cluster.local",
           "1.0.0.10.in-addr.arpa", "0.0.10.in-addr.arpa"]
    for base in BASES:
        out += [base, f"p0.{base}", f"x.{base}", f"_tcp.{base}", f"_udp.{base}", f"_x.{base}", f"_x._y.{base}"]
        out += [f"_{n}._{p}.{base}" for n in ("http", "dns") for p in ("tcp", "udp")]
    return out


def answers(index: Index) -> dict[str, tuple[object, ...]]:
    return {name: (index.has_data(name), index.has_children(name), index.exists(name),
                   *(tuple(sorted(map(repr, index.rrset(name, t)))) for t in TYPES)) for name in probes()}


def assert_alike(entries: Index, records: Index, *, first: bool = False) -> None:
    assert answers(entries) == answers(records)
    assert entries.record_count == records.record_count
    assert sorted(entries.records(), key=repr) == sorted(records.records(), key=repr)
    if not first:
        return  # a patched rrset of records keeps its old records first; an entry's are always sorted
    for base in BASES:  # an rrset's order is the one records sort in, not only its content
        for name in (base, f"_http._tcp.{base}"):
            assert entries.rrset(name, SRV) == records.rrset(name, SRV)
        for t in (A, AAAA):
            assert entries.rrset(base, t) == records.rrset(base, t)


@settings(max_examples=300, deadline=None)
@given(first=st.lists(OWNER, min_size=len(BASES), max_size=len(BASES)), steps=STEPS)
def test_an_index_fed_entries_answers_as_one_fed_records(first: list[object], steps: list[tuple[int, object]]) -> None:
    entries, records = Index(ZONES), Index(ZONES)
    owners = [records_of(base, state) for base, state in zip(BASES, first, strict=True)]
    assert records.add([list(plain(r)) for r in owners]) <= entries.add(owners)
    assert_alike(entries, records, first=True)
    for i, state in steps:
        new = records_of(BASES[i], state)
        before = answers(entries)
        touched = entries.apply(owners[i], new)
        records.apply(plain(owners[i]), plain(new))  # may touch more: names that stop and start existing in one apply
        assert {name for name, _, _ in set(plain(owners[i])) ^ set(plain(new))} <= touched
        owners[i] = new
        assert_alike(entries, records)
        after = answers(entries)
        assert {name for name in before if before[name] != after[name]} <= touched  # cached replies must go


def test_a_named_port_makes_its_names_exist() -> None:
    base = "web.a.svc.cluster.local"
    index = Index(ZONES)
    data = ServiceData(("10.0.0.2", "10.0.0.1"), (Port("http", 80, "tcp"), Port("", 80, "udp"), Port("dns", 53, "udp")))
    assert index.add([cluster_ip(base, data)]) >= {base, f"_tcp.{base}", f"_udp.{base}", f"_http._tcp.{base}"}
    assert index.rrset(base, A) == ("10.0.0.1", "10.0.0.2")
    assert index.rrset(base, SRV) == (SrvData(0, 100, 53, base), SrvData(0, 100, 80, base))  # one per port number
    assert index.rrset(f"_dns._udp.{base}", SRV) == (SrvData(0, 100, 53, base),)
    assert index.exists(f"_tcp.{base}") and not index.has_data(f"_tcp.{base}")  # an empty non-terminal
    assert not index.exists(f"_sctp.{base}") and not index.exists(f"_dns._tcp.{base}")
    assert index.record_count == 2 + 2 + 2 + 2  # A, the bare SRVs, the named SRVs, the PTRs
    touched = index.apply(cluster_ip(base, data), cluster_ip(base, data._replace(ports=())))
    assert {f"_tcp.{base}", f"_http._tcp.{base}", f"_dns._udp.{base}"} <= touched
    assert not index.exists(f"_tcp.{base}") and index.rrset(base, SRV) == () and index.exists(base)
