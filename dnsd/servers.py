"""Parsing of ``--upstream`` and ``--stub-domain`` values, and of resolv.conf files."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

DNS_PORT = 53
DOT_PORT = 853


class Upstream(NamedTuple):
    host: str  # an IP address, normalised
    port: int = DNS_PORT
    tls_name: str | None = None  # DNS over TLS: the name the server's certificate must carry
    tcp: bool = False  # tcp://: one kept-open connection, queries pipelined (RFC 7766)

    def __str__(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.tls_name:
            return f"tls://{address}#{self.tls_name}"
        return f"tcp://{address}" if self.tcp else address

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4


class StubDomain(NamedTuple):
    zone: str  # lowercase, no trailing dot
    servers: tuple[Upstream, ...]


def parse_server(value: str) -> Upstream:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; ``tcp://`` before one of those (a kept-open TCP connection,
    queries pipelined); or DNS over TLS: ``tls://IP[:PORT][#NAME]`` (port 853; the certificate must name
    NAME, or the IP without one). ValueError with the reason otherwise."""
    text = value.strip()
    if text.lower().startswith("tcp://"):
        try:
            if "://" in text[6:]:
                raise ValueError
            return parse_server(text[6:])._replace(tcp=True)
        except ValueError:
            raise ValueError(f"{value!r} is not tcp://IP[:PORT]") from None
    if text.lower().startswith("tls://"):
        address, _, name = text[6:].partition("#")
        if "#" in value and not name:
            raise ValueError(f"{value!r}: empty TLS server name after '#'")
        try:
            server = parse_server(address if _has_port(address) else (f"[{address}]" if ":" in address else address)
                                  + f":{DOT_PORT}")
        except ValueError:
            raise ValueError(f"{value!r} is not tls://IP[:PORT][#NAME]") from None
        return Upstream(server.host, server.port, name.strip().lower().rstrip(".") or server.host)
    if not text:
        raise ValueError("empty server")
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not IP, IP:PORT or [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], value)
    elif text.count(":") == 1:  # IPv4:PORT (a bare IPv6 address has several colons)
        host, _, rest = text.partition(":")
        port = _port(rest, value)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not IP, IP:PORT or [IPv6]:PORT") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None and "%" in host:
        raise ValueError(f"{value!r}: scoped IPv6 addresses are not supported")
    return Upstream(str(ip), port)


def _has_port(address: str) -> bool:
    return address.count(":") == 1 or (address.startswith("[") and "]:" in address)


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return int(text)


def read_resolv_conf(path: str) -> tuple[Upstream, ...]:
    """The ``nameserver`` lines of a resolv.conf file; OSError/ValueError with a clear reason."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read resolv.conf {path!r}: {exc.strerror or exc}") from None
    servers: list[Upstream] = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                servers.append(parse_server(fields[1].split("%", 1)[0]))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    if not servers:
        raise ValueError(f"{path!r} has no nameserver line")
    return tuple(dict.fromkeys(servers))


def parse_upstream(value: str) -> tuple[Upstream, ...]:
    """One ``--upstream`` value: ``none`` (empty), a server, or a resolv.conf path (contains a ``/``)."""
    text = value.strip()
    if text.lower() == "none":
        return ()
    if "/" in text and not text.lower().startswith(("tls://", "tcp://")):
        return read_resolv_conf(text)
    return (parse_server(text),)


def parse_cluster_dns(value: str) -> Upstream:
    """One ``--cluster-dns`` value: ``IP[:PORT]`` or ``tcp://IP[:PORT]``, always asked over a kept-open
    TCP connection (what the mode is for)."""
    text = value.strip()
    if text.lower().startswith("tls://") or "/" in text.lower().removeprefix("tcp://"):
        raise ValueError(f"{value!r} is not IP[:PORT]: the cluster DNS is asked over TCP")
    return parse_server(text)._replace(tcp=True)


def parse_stub_domain(value: str) -> StubDomain:
    """``ZONE=SERVER[,SERVER...]``; each SERVER as for --upstream (a resolv.conf path too)."""
    zone, sep, servers = value.partition("=")
    zone = zone.strip().lower().rstrip(".")
    if not sep or not zone or not servers.strip():
        raise ValueError(f"{value!r} is not ZONE=SERVER[,SERVER...]")
    labels = zone.split(".")
    if any(not lb or len(lb) > 63 for lb in labels) or len(zone) > 253:
        raise ValueError(f"{value!r}: {zone!r} is not a domain name")
    found: list[Upstream] = []
    for part in servers.split(","):
        if part.strip().lower() == "none":
            raise ValueError(f"{value!r}: a stub domain needs a server")
        found += parse_upstream(part)
    return StubDomain(zone, tuple(dict.fromkeys(found)))


def join_stub_values(values: list[str]) -> list[str]:
    """DNSD_STUB_DOMAIN is split on commas like every repeatable variable; a piece without ``=``
    is another server of the stub domain before it."""
    out: list[str] = []
    for value in values:
        if "=" not in value and out:
            out[-1] += "," + value
        else:
            out.append(value)
    return out
