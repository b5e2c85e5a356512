"""A serving process's data: the pipeline (ops -> store -> records -> index) and the responder answering from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dnsd.answer.responder import Responder
from dnsd.config import Config
from dnsd.dns.const import DEFAULT_PAYLOAD
from dnsd.zone.index import IndexWriter
from dnsd.zone.pipeline import EVERYTHING, Pipeline, Scope
from dnsd.zone.resolver import Answer, resolve
from dnsd.zone.searchpath import resolver_for


class Dataplane(Pipeline):
    """The pipeline with the Responder it invalidates: what the main process (or one with no
    workers) answers from. A worker builds only a Responder over the shared file."""

    def __init__(
        self, zones: Sequence[str], ttl: int, ns_address: str | None = None, cache_size: int = 200_000,
        cache_bytes: int = 4 << 20, max_payload: int = DEFAULT_PAYLOAD,
        index: IndexWriter | None = None, *, pods: bool = False, resolver: Callable[..., Answer] = resolve,
        loadbalance: bool = False, scope: Scope = EVERYTHING, external: Sequence[str] = (),
        multicluster: Sequence[str] = (),
    ) -> None:
        """``resolver``: what answers a question from the index (the resolver, or the autopath);
        ``loadbalance``: each reply rotates its A/AAAA records."""
        super().__init__(zones, ttl, ns_address, index, pods=pods, scope=scope, external=external,
                         multicluster=multicluster)
        self.responder = Responder(
            self.index, ttl, lambda: self.store.synced, cache_size, cache_bytes, max_payload, resolver,
            loadbalance=loadbalance,
        )
        self.on_change = self.responder.invalidate


def from_config(config: Config, index: IndexWriter | None = None) -> Dataplane:
    """The serving dataplane ``config`` asks for; ``index``: the shared index writer when workers share."""
    cache_size, cache_bytes = config.table_share
    return Dataplane(config.domains, config.ttl, config.ns_address, cache_size, cache_bytes,
                     config.udp_max_payload, index, pods=config.pods == "insecure", resolver=resolver_for(config),
                     loadbalance=config.loadbalance, scope=Scope.from_config(config), external=config.external_zones,
                     multicluster=config.multicluster_zones)


__all__ = ["Dataplane", "from_config"]
