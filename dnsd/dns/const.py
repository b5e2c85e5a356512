"""DNS numbers used across dnsd: response codes, record types, the reply-size limits."""

from __future__ import annotations

# Response codes (RFC 1035 4.1.1; BADVERS is EDNS's extended rcode 16, RFC 6891).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Record types.
A, NS, CNAME, SOA, PTR, HINFO, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 13, 16, 28, 33
OPT, IXFR, AXFR, ANY = 41, 251, 252, 255
# Type 0 is reserved (RFC 6895) and never answerable; the index uses it as its marker for a name
# that exists (an empty non-terminal) but holds no data.
EXISTS = 0
IN = 1

REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")  # served with the cluster zones: PTRs of Services and endpoints

MAX_NAME = 255  # bytes in wire form (RFC 1035 2.3.4)
MIN_PAYLOAD = 512  # UDP without EDNS
MAX_PAYLOAD = 4096
DEFAULT_PAYLOAD = 1232  # what we advertise and the most we send over UDP: the DNS-flag-day size (as Knot)
MAX_QUERY = 4096  # a bigger UDP datagram is FORMERR (the listener reads one byte more to see it)
TCP_LIMIT = 65535  # a TCP message's length field
