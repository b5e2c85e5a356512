#!/usr/bin/env python3
"""The baseline: what a Python user writes first for a zone of records. Not part of dnsd.

    python -m dnsd records --manifests DIR > records.txt
    python3 bench/naive_server.py --records records.txt --port 5300

``dnslib.server.DNSServer`` (a ``socketserver.ThreadingUDPServer``: one thread per query)
with a ``BaseResolver`` that looks the answer up in a dict built from ``dnsd records``
output: exact-match answers, NODATA for names that exist with other types (or are empty
non-terminals), NXDOMAIN with the zone's SOA for unknown names below a served apex,
REFUSED elsewhere. UDP only, per-query logging off (we measure lookups, not log I/O).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


def _rdata(rtype: str, fields: list[str]) -> Any:
    """dnslib rdata for one zone line's fields (a hand-rolled parser: RR.fromZone is ~10x slower)."""
    if rtype == "A":
        return A(fields[0])
    if rtype == "AAAA":
        return AAAA(fields[0])
    if rtype in ("PTR", "CNAME", "NS"):
        return {"PTR": PTR, "CNAME": CNAME, "NS": NS}[rtype](fields[0])
    if rtype == "SRV":
        return SRV(int(fields[0]), int(fields[1]), int(fields[2]), fields[3])
    if rtype == "SOA":
        return SOA(fields[0], fields[1], tuple(int(f) for f in fields[2:7]))
    if rtype == "TXT":
        return TXT(" ".join(fields).strip('"'))
    raise ValueError(f"unsupported type {rtype}")


def load(text: str) -> list[RR]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or line.startswith(";"):
            continue
        if len(parts) < 5 or parts[2] != "IN" or parts[3] not in QTYPE.reverse:
            out += RR.fromZone(line)  # anything unusual: let dnslib parse it
            continue
        name, ttl, _, rtype = parts[:4]
        out.append(RR(name, getattr(QTYPE, rtype), ttl=int(ttl), rdata=_rdata(rtype, parts[4:])))
    return out


class DictResolver(BaseResolver):
    def __init__(self, records: list[RR]) -> None:
        self.answers: dict[tuple[str, int], list[RR]] = defaultdict(list)
        self.names: set[str] = set()  # every owner name plus its ancestors inside a zone (empty non-terminals)
        self.soa: dict[str, RR] = {}
        for rr in records:
            name = str(rr.rname).lower()
            self.answers[(name, rr.rtype)].append(rr)
            if rr.rtype == QTYPE.SOA:
                self.soa[name] = rr
        for name, _ in list(self.answers):
            self.names.add(name)
            labels = name.rstrip(".").split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:]) + "."
                if any(parent.endswith("." + z) or parent == z for z in self.soa):
                    self.names.add(parent)

    def zone(self, name: str) -> str | None:
        best = None
        for apex in self.soa:
            if (name == apex or name.endswith("." + apex)) and (best is None or len(apex) > len(best)):
                best = apex
        return best

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply(ra=0)
        qname = str(request.q.qname).lower()
        zone = self.zone(qname)
        if zone is None:
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return reply
        found = self.answers.get((qname, request.q.qtype)) or self.answers.get((qname, QTYPE.CNAME))
        if found:
            for rr in found:
                reply.add_answer(RR(request.q.qname, rr.rtype, ttl=rr.ttl, rdata=rr.rdata))
                if rr.rtype == QTYPE.SRV:  # the targets' addresses, as dnsd and Knot add them
                    target = str(rr.rdata.target).lower()
                    for rtype in (QTYPE.A, QTYPE.AAAA):
                        for extra in self.answers.get((target, rtype), ()):
                            reply.add_ar(extra)
            return reply
        if qname not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self.soa[zone])  # negative answers carry the SOA (RFC 2308)
        return reply


class Handler(DNSHandler):
    udplen = 512  # truncate oversized UDP replies (no EDNS support)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, required=True, help="zone-file lines, as printed by `dnsd records`")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5300)
    args = parser.parse_args(argv)
    resolver = DictResolver(load(args.records.read_text()))
    logger = DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
    server = DNSServer(resolver, address=args.address, port=args.port, logger=logger, handler=Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"naive server: {len(resolver.answers)} rrsets on {args.address}:{args.port}/udp", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
