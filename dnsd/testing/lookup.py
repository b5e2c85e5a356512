"""Name lookups as a pod does them, against one dnsd: the search list with ndots:5, for a
dnspython Resolver and for ``socket.getaddrinfo`` (patched for the length of a ``with`` block)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

NDOTS = 5  # a pod's resolv.conf
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
GetAddrInfo = Callable[..., list[Any]]


def search_list(namespace: str, domain: str) -> list[str]:
    """A pod's search domains in ``namespace``: ``<ns>.svc.<domain> svc.<domain> <domain>``."""
    return [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]


def resolver(host: str, port: int, namespace: str, domain: str) -> dns.resolver.Resolver:
    """A dnspython Resolver that asks only dnsd at ``host:port``, searching as a pod in ``namespace``."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port
    res.search = [dns.name.from_text(domain) for domain in search_list(namespace, domain)]
    res.ndots = NDOTS
    res.use_search_by_default = True
    res.timeout = 1.0
    res.lifetime = 3.0  # a loopback server that answers nothing in 3 s is gone
    return res


class Lookup:
    """``getaddrinfo`` for the names of ``zones`` through dnsd at ``host:port``, searching as a pod in
    the namespace of ``search``; any other name goes to ``original``."""

    def __init__(self, host: str, port: int, zones: Sequence[str], search: Sequence[str], original: GetAddrInfo,
                 alive: Callable[[], bool] = lambda: True, timeout: float = 2.0) -> None:
        """``alive``: whether the dnsd process still runs (to say so when it does not answer)."""
        self.server = (host, port)
        self.alive = alive
        self.zones = tuple(z.lower().strip(".") for z in zones)
        self.search = tuple(search)
        self.original = original
        self.timeout = timeout

    def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[AddrInfo]:
        """``socket.getaddrinfo``'s signature, results and errors (``socket.gaierror``)."""
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
        if (not isinstance(name, str) or not name or family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)
                or flags & socket.AI_NUMERICHOST or _numeric(name)):
            return self.original(host, port, family, type, proto, flags)
        for candidate in self._candidates(name.lower()):
            if not self._ours(candidate):
                # Where a pod would ask its DNS server, which forwards: the real resolver, as asked.
                return self.original(host, port, family, type, proto, flags)
            found = self._addresses(candidate, family, flags)
            if isinstance(found, str):  # an alias (ExternalName) of a name outside the zones
                return self.original(found, port, family, type, proto, flags)
            if found:
                return self._infos(found[0], found[1], port, family, type, proto, flags)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def _candidates(self, name: str) -> list[str]:
        """The names tried, in order: ndots:5 semantics, as glibc's resolver."""
        if name.endswith("."):
            return [name.rstrip(".")]
        searched = [f"{name}.{domain}" for domain in self.search]
        return [name, *searched] if name.count(".") >= NDOTS else [*searched, name]

    def _ours(self, name: str) -> bool:
        return any(name == z or name.endswith("." + z) for z in self.zones)

    def _addresses(self, name: str, family: int, flags: int) -> tuple[str, list[str]] | str | None:
        """(canonical name, addresses); a name outside the zones the chain ends at; None when
        ``name`` does not exist or has no address of the family (the search goes on)."""
        want_v4 = family in (socket.AF_UNSPEC, socket.AF_INET)
        want_v6 = family in (socket.AF_UNSPEC, socket.AF_INET6)
        mapped = family == socket.AF_INET6 and flags & socket.AI_V4MAPPED
        canonical, found = name, list[str]()
        for rdtype in ("AAAA", "A") if family == socket.AF_INET6 else ("A", "AAAA"):
            if (rdtype == "AAAA" and not want_v6) or (rdtype == "A" and not (want_v4 or mapped)):
                continue
            if rdtype == "A" and mapped and found and not flags & socket.AI_ALL:
                continue  # IPv4-mapped addresses only when there is no AAAA (or with AI_ALL)
            reply = self._ask(name, rdtype)
            if reply.rcode() == dns.rcode.NXDOMAIN:
                return None
            canonical, addresses = _chain(reply, name)
            if not addresses and not self._ours(canonical):
                return canonical  # the chain ends outside: its records are the real resolver's
            found += [f"::ffff:{a}" if rdtype == "A" and family == socket.AF_INET6 else a for a in addresses]
        return (canonical, found) if found else None

    def _ask(self, name: str, rdtype: str) -> dns.message.Message:
        """One question over a connected UDP socket (a dead server is ECONNREFUSED at once), TCP when truncated."""
        query = dns.message.make_query(name, rdtype)
        where = f"dnsd at {self.server[0]}:{self.server[1]}"
        try:
            with socket.socket(socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.server)
                sock.send(query.to_wire())
                while True:
                    reply = dns.message.from_wire(sock.recv(65535))
                    if reply.id == query.id:
                        break
            if reply.flags & dns.flags.TC:
                reply = dns.query.tcp(query, self.server[0], self.timeout, self.server[1])
        except (TimeoutError, OSError, dns.exception.DNSException) as exc:
            why = "is not running" if isinstance(exc, ConnectionRefusedError) or not self.alive() else f"{exc}"
            raise socket.gaierror(socket.EAI_AGAIN, f"Temporary failure in name resolution ({where} {why})") from None
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            text = dns.rcode.to_text(reply.rcode())
            raise socket.gaierror(socket.EAI_AGAIN, f"Temporary failure in name resolution ({where} answered {text} for {name})")
        return reply

    def _infos(self, canonical: str, addresses: list[str], port: Any, family: int, type: int, proto: int,
               flags: int) -> list[AddrInfo]:
        """The tuples the real getaddrinfo gives for these addresses: its own answer for a numeric
        address of each family stands for each (socket types, protocols, the port and its errors)."""
        out: list[AddrInfo] = []
        plain = (flags & ~(socket.AI_CANONNAME | socket.AI_ADDRCONFIG | socket.AI_V4MAPPED | socket.AI_ALL)
                 | socket.AI_NUMERICHOST)
        templates: dict[socket.AddressFamily, list[AddrInfo]] = {}
        for address in addresses:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            if fam not in templates:
                templates[fam] = self.original("::" if fam == socket.AF_INET6 else "0.0.0.0", port, fam, type, proto, plain)
            for af, kind, protocol, _, sockaddr in templates[fam]:
                out.append((af, kind, protocol, "", (address, *sockaddr[1:])))
        if out and flags & socket.AI_CANONNAME:
            out[0] = (*out[0][:3], canonical, out[0][4])
        return out


def _chain(reply: dns.message.Message, name: str) -> tuple[str, list[str]]:
    """Where the answer's CNAME chain from ``name`` ends, and that name's addresses."""
    current = dns.name.from_text(name)
    for _ in range(16):
        alias = next((rrset for rrset in reply.answer if rrset.name == current and rrset.rdtype == dns.rdatatype.CNAME),
                     None)
        if alias is None:
            break
        current = alias[0].target
    addresses = [rdata.address for rrset in reply.answer if rrset.name == current
                 and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rdata in rrset]
    return current.to_text(omit_final_dot=True).lower(), addresses


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def patched(make: Callable[[GetAddrInfo], Lookup]) -> Iterator[None]:
    """``socket.getaddrinfo`` replaced by ``make(the current one)``'s until the block ends."""
    original = socket.getaddrinfo
    lookup = make(original)
    socket.getaddrinfo = lookup.getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = original
