"""Server-side search path (--autopath): one query instead of a pod's whole ndots:5 search list.

A ``ClusterFirst`` pod in namespace ``ns`` searches ``ns.svc.Z svc.Z Z`` and then the node's
domains, so its first query for a name ``X`` is ``X.ns.svc.Z``. When that name does not exist
(and ``ns`` does), dnsd walks the rest of the list itself and answers the first name that is not
NXDOMAIN as a CNAME from the asked name to it, followed by that name's records (as CoreDNS's
autopath). Unlike CoreDNS it needs no Pod watch: the namespace is in the name, so the reply is
a function of the question alone, cacheable, and never shared across namespaces.

``candidates`` is the pure part; ``Autopath`` walks the steps: names in the served zones through
the resolver, now. Names outside them can only be asked upstream, which cannot happen here (this
is pure and synchronous): when dnsd forwards (``upstream``), the answer carries them in
``Answer.forward``, in order, and means "ask these first; if every one is NXDOMAIN, this answer
stands" (this answer being the next step in our zones that answered, or the plain NXDOMAIN). The
Responder hands that to the forwarder as a ``Pending`` (upstream/steps.py). Without a forwarder
those steps are skipped (dnsd would refuse such names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dnsd.config import Config
from dnsd.dns.const import CNAME, NOERROR, NXDOMAIN
from dnsd.zone.index import IndexReader
from dnsd.zone.resolver import Answer, resolve


def candidates(qname: str, zone: str, search: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """For ``X.ns.svc.<zone>``: ``ns`` and the names the pod would try next, in order:
    ``X.svc.<zone>``, ``X.<zone>``, ``X.<domain>`` for each search domain, ``X``.
    None for any other name (``X`` may hold dots; ``ns`` is one label)."""
    suffix = ".svc." + zone
    if not qname.endswith(suffix):
        return None
    base, dot, namespace = qname[: -len(suffix)].rpartition(".")
    if not dot or not base:
        return None
    steps = (f"{base}.svc.{zone}", f"{base}.{zone}", *(f"{base}.{domain}" for domain in search), base)
    # A search domain equal to the zone is tried once; a name over 255 bytes in wire form (a long
    # search domain) cannot be asked, and glibc skips it too.
    return namespace, tuple(s for s in dict.fromkeys(steps) if len(s) <= 253)


def search_domains(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The ``search`` (or ``domain``) list of a resolv.conf; the last such line wins, as in glibc."""
    domains: tuple[str, ...] = ()
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if fields and fields[0] in ("search", "domain"):
            domains = tuple(d.strip(".").lower() for d in fields[1:] if d.strip("."))
    return domains


class Autopath:
    """A resolver (same signature as ``resolver.resolve``) that continues the search path."""

    def __init__(self, zones: Sequence[str], search: Sequence[str], upstream: bool = False) -> None:
        """``upstream``: dnsd forwards, so steps outside the served zones are left to the forwarder."""
        self.zones = frozenset(z.lower().strip(".") for z in zones)  # cluster zones, not the reverse ones
        self.search = tuple(search)
        self.upstream = upstream

    def __call__(self, index: IndexReader, qname: str, qtype: int, synced: bool, minimal_any: bool = False) -> Answer:
        answer = resolve(index, qname, qtype, synced, minimal_any)
        if answer.rcode != NXDOMAIN or answer.answer:
            return answer  # never applied to names that exist (an alias to a missing name too), nor before the sync
        zone = index.zone_of(qname)
        shape = candidates(qname, zone, self.search) if zone in self.zones else None
        if shape is None:
            return answer
        namespace, steps = shape
        ns_name = f"{namespace}.svc.{zone}"
        if not index.exists(ns_name):
            return answer  # not a namespace we know: not a pod's search path
        # Everything the reply was derived from: the cached reply goes when any of them changes.
        tried = [ns_name]
        forward: list[str] = []  # steps outside our zones, before the local step that answered
        for name in steps:
            if index.zone_of(name) is None:
                if self.upstream:
                    forward.append(name)
                continue  # without an upstream dnsd refuses names outside its zones: they cannot answer
            step = resolve(index, name, qtype, synced, minimal_any)
            tried += (name, *step.depends)  # e.g. a pod name's namespace
            if step.rcode == NXDOMAIN:
                continue
            if step.rcode != NOERROR:
                break  # a failure is not an answer: the pod's own search goes on
            return Answer(
                NOERROR, ((qname, CNAME, name), *step.answer), step.authority, step.additional,
                authoritative=step.authoritative, negative=step.negative, depends=tuple(tried), autopath=True,
                forward=tuple(forward), chase="" if forward else step.chase,
            )
        if forward:
            return answer._replace(depends=tuple(tried), forward=tuple(forward))
        return answer._replace(depends=tuple(tried))


def resolver_for(config: Config) -> Callable[..., Answer]:
    """What answers a question from the index: the resolver, or the autopath (it needs the search domains)."""
    if not config.autopath:
        return resolve
    search = config.autopath_search if config.autopath_search is not None else search_domains()
    return Autopath(config.domains, search, upstream=config.forwards)


__all__ = ["Autopath", "candidates", "resolver_for", "search_domains"]
