"""Zone transfer (AXFR, RFC 5936) of each served zone, over TCP, to the clients in --transfer-to.

The records sent are those ``dnsd records`` prints for that zone (the index's, without the
synthesized pod names), between two copies of the zone's SOA, taken from one snapshot so
a change during the transfer cannot tear it. IXFR gets the same full transfer (RFC 1995 4
allows it: dnsd keeps no history). Everyone else, and UDP, gets the resolver's REFUSED.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

from dnslib import RR, DNSHeader, DNSRecord

from .index import Index
from .records import EXISTS, SOA, TXT, Record
from .render import TXT_TTL, label_tuple, rdata_of
from .resolver import AXFR, IXFR, SERVFAIL
from .wire import Responder

RRS_PER_MESSAGE = 200  # at most ~100 bytes each with compression: well under 64 KiB


def transfer_qtype(query: bytes) -> int | None:
    """AXFR or IXFR when that is what a one-question query asks; None otherwise (cheap: no parsing)."""
    if len(query) < 17 or query[4:6] != b"\x00\x01" or query[2] & 0x78:  # QDCOUNT 1, opcode QUERY
        return None
    i = 12
    while i < len(query) and query[i]:
        if query[i] & 0xC0:
            return None
        i += query[i] + 1
    qtype = int.from_bytes(query[i + 1 : i + 3], "big")
    return qtype if qtype in (AXFR, IXFR) else None


def zone_snapshot(index: Index, zone: str) -> tuple[Record, list[Record]] | None:
    """The zone's SOA and every other record the index holds in it (not below a more specific zone)."""
    soa = index.rrset(zone, SOA)
    if not soa:
        return None
    suffix = "." + zone
    inner = tuple("." + z for z in index.zones if z.endswith(suffix))  # served zones below this one
    records = [
        (name, rtype, rdata)
        for (name, rtype), rrset in index.rrsets.items()
        if rtype not in (SOA, EXISTS) and (name == zone or name.endswith(suffix))
        and not (inner and any(name.endswith(z) or name == z[1:] for z in inner))
        for rdata in rrset
    ]
    return (zone, SOA, soa[0]), records


def messages(query: DNSRecord, soa: Record, records: Sequence[Record], ttl: int) -> Iterator[bytes]:
    """The transfer's reply messages: SOA, the records, SOA, RRS_PER_MESSAGE to a message."""
    stream = [soa, *(r for r in records if r[1] != EXISTS), soa]
    for start in range(0, len(stream), RRS_PER_MESSAGE):
        header = DNSHeader(id=query.header.id, qr=1, aa=1, rd=query.header.rd)
        # The question goes in the first message only (RFC 5936 2.2.1).
        msg = DNSRecord(header, questions=[query.questions[0]] if start == 0 else [])
        for name, rtype, rdata in stream[start : start + RRS_PER_MESSAGE]:
            msg.add_answer(RR(label_tuple(name), rtype, 1, TXT_TTL if rtype == TXT else ttl, rdata_of(rtype, rdata)))
        yield msg.pack()


class ZoneTransfer:
    """Decides whether a TCP query is a transfer this peer may have, and produces its messages."""

    def __init__(self, allowed: Sequence[str], responder: Responder) -> None:
        self.allowed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allowed)
        self.responder = responder

    def permitted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.allowed)

    def __call__(self, query: bytes, peer: str) -> list[bytes] | Iterator[bytes] | None:
        """The reply messages, or None: not a transfer we give (the normal path answers, REFUSED)."""
        if transfer_qtype(query) is None or not self.permitted(peer):
            return None
        try:
            msg = DNSRecord.parse(query)
        except Exception:  # dnslib raises several types on garbage: the normal path says FORMERR
            return None
        zone = str(msg.questions[0].qname).rstrip(".").lower()
        index = self.responder.index
        if msg.questions[0].qclass != 1 or zone not in index.zones:
            return None
        if not self.responder.synced():
            header = DNSHeader(id=msg.header.id, qr=1, rd=msg.header.rd, rcode=SERVFAIL)
            return [DNSRecord(header, questions=msg.questions).pack()]
        snapshot = zone_snapshot(index, zone)
        if snapshot is None:
            return None
        return messages(msg, snapshot[0], snapshot[1], self.responder.ttl)


__all__ = ["ZoneTransfer", "messages", "transfer_qtype", "zone_snapshot"]
