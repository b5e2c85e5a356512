"""Pure query resolution: (question, index) -> rcode and sections.

Follows shared/reference/dns-behaviour.md: authoritative answers from the index,
CNAME for ExternalName followed by the target's records when the target is in a served
zone (a target elsewhere is the forwarder's), NODATA for names with other types or empty
non-terminals, NXDOMAIN otherwise, SERVFAIL instead of any negative answer before
the first sync, REFUSED outside the served zones.
"""

from __future__ import annotations

from typing import NamedTuple

from dnsd.dns.const import AAAA, ANY, AXFR, CNAME, IXFR, NOERROR, NS, NXDOMAIN, REFUSED, SERVFAIL, SOA, SRV, A
from dnsd.zone.index import TYPES, IndexReader
from dnsd.zone.records import Record, SrvData, address_type, pod_address

MAX_CHAIN = 8  # aliases followed in one answer at most (CoreDNS stops at 8 too)


class Answer(NamedTuple):
    rcode: int
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    # Negative answers carry the SOA, whose serial moves: a cache must recheck them.
    negative: bool = False
    # Other names the answer was derived from: a cache must drop it when one of them changes.
    depends: tuple[str, ...] = ()
    autopath: bool = False  # an answer found by the server-side search path (counted)
    # Autopath steps outside our zones to ask upstream first, in order; this answer stands only
    # if every one of them is NXDOMAIN (searchpath.py).
    forward: tuple[str, ...] = ()
    # An alias's target outside our zones: the forwarder asks it and answers the chain with its records.
    chase: str = ""


def resolve(index: IndexReader, qname: str, qtype: int, synced: bool, minimal_any: bool = False,
            chain: tuple[str, ...] = ()) -> Answer:
    """``qname`` is lowercase, without the final dot.

    Only the types in ``TYPES`` are ever answered: the index's internal marker (type 0) is
    not data. ``minimal_any`` (for UDP, RFC 8482 4.1): ANY gets one RRset, not every one.
    ``chain``: the aliases already followed to reach ``qname`` (``_chase``).
    """
    zone = index.zone_of(qname)
    if zone is None:
        return Answer(REFUSED, authoritative=False)
    if qtype in (AXFR, IXFR):
        return Answer(REFUSED)  # no zone transfers
    has_data = index.has_data(qname)
    if has_data:
        rrset = index.rrset
        if qtype == ANY:
            found = [(t, rrs) for t in TYPES if (rrs := rrset(qname, t))]
            if minimal_any:
                found = found[:1]
        elif qtype in TYPES and (rrs := rrset(qname, qtype)):
            found = [(qtype, rrs)]
        elif rrs := rrset(qname, CNAME):  # RFC 1034: the alias answers every type
            return _chase(index, tuple((qname, CNAME, rdata) for rdata in rrs), qtype, synced, (*chain, qname))
        else:
            found = []
        if found:
            answer = tuple((qname, t, rdata) for t, rrs in found for rdata in rrs)
            return Answer(NOERROR, answer, (), _additional(index, answer))
    elif ".pod." in qname:
        pod = _pod(index, qname, qtype, zone, synced)
        if pod is not None:
            return pod
    if not synced:
        return Answer(SERVFAIL, authoritative=False)  # never a cacheable negative before the first sync
    soa = _soa(index, zone)
    if has_data or index.has_children(qname) or qname == zone:  # it exists: NODATA
        return Answer(NOERROR, (), soa, negative=True)
    return Answer(NXDOMAIN, (), soa, negative=True)


def _chase(index: IndexReader, alias: tuple[Record, ...], qtype: int, synced: bool, chain: tuple[str, ...]) -> Answer:
    """The alias, then its target's records when the target is in a served zone: as CoreDNS answers an
    ExternalName, since a pod's stub resolver (glibc) does not follow a bare CNAME. The target's own
    answer decides the rcode (RFC 6604: NXDOMAIN when it does not exist). A loop or a chain over
    MAX_CHAIN ends with the alias as it stands; a target outside the zones is the forwarder's."""
    target = str(alias[0][2])
    if target in chain or len(chain) > MAX_CHAIN:
        return Answer(NOERROR, alias)
    if index.zone_of(target) is None:
        return Answer(NOERROR, alias, chase=target)  # without a forwarder: the alias alone
    step = resolve(index, target, qtype, synced, chain=chain)
    if step.rcode == SERVFAIL:
        return step  # not synced, and nothing known of the target: never a cacheable negative
    # Filed under the target (and the apex when the zone's SOA is in it): the reply goes when they change.
    depends = (target, *step.depends, *(r[0] for r in step.authority[:1]))
    return Answer(step.rcode, alias + step.answer, step.authority, step.additional, depends=depends, chase=step.chase)


def _pod(index: IndexReader, qname: str, qtype: int, zone: str, synced: bool) -> Answer | None:
    """``1-2-3-4.ns.pod.Z`` (--pods insecure): the address the label spells, for any pod,
    once ``ns.pod.Z`` exists (the index holds it for every known namespace when pod
    records are on). No Pod is looked up, as CoreDNS's ``pods insecure``."""
    label, _, parent = qname.partition(".")
    if parent.count(".") != zone.count(".") + 2 or not parent.endswith(".pod." + zone):
        return None
    address = pod_address(label)
    if address is None:
        return None
    if not index.exists(parent):  # not a namespace (yet): the cached NXDOMAIN goes when it appears
        return Answer(NXDOMAIN, (), _soa(index, zone), negative=True, depends=(parent,)) if synced else None
    rtype = address_type(address)
    if qtype in (rtype, ANY):
        return Answer(NOERROR, ((qname, rtype, address),), depends=(parent,))
    if not synced:
        return Answer(SERVFAIL, authoritative=False)
    return Answer(NOERROR, (), _soa(index, zone), negative=True, depends=(parent,))


def _soa(index: IndexReader, zone: str) -> tuple[Record, ...]:
    """The zone's SOA as a negative answer's authority section (a list, not a generator: every NXDOMAIN makes one)."""
    return tuple([(zone, SOA, rdata) for rdata in index.rrset(zone, SOA)])


def _additional(index: IndexReader, answer: tuple[Record, ...]) -> tuple[Record, ...]:
    """Addresses of SRV targets and NS hosts that we serve ourselves."""
    targets: dict[str, None] = {}
    for _, rtype, rdata in answer:
        if rtype == SRV and isinstance(rdata, SrvData):
            targets[rdata.target] = None
        elif rtype == NS and isinstance(rdata, str):
            targets[rdata] = None
    return tuple((t, rtype, ip) for t in targets for rtype in (A, AAAA) for ip in index.rrset(t, rtype))


__all__ = ["Answer", "resolve"]
