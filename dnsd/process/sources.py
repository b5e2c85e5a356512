"""The configured sources of cluster objects (manifest files, the Kubernetes API), started and stopped together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dnsd.cluster.store import Op, Synced
from dnsd.config import Config

log = logging.getLogger(__name__)


class Sources:
    """Starts the configured sources, feeding ``emit``; stops them."""

    def __init__(self, config: Config, emit: Callable[[list[Op]], None]) -> None:
        # Imported here, after the zygote forks: workers never read manifests (yaml, watchfiles).
        from dnsd.cluster.sources.manifests import ManifestSource

        self.emit = emit
        paths, use_api = config.sources()
        self.manifests = ManifestSource(paths, emit, config.reload_debounce_ms, config.endpoint_pod_names) if paths else None
        self.kubernetes = None
        if use_api:
            from dnsd.cluster.sources.kubernetes.source import KubernetesSource

            self.kubernetes = KubernetesSource(
                emit, kubeconfig=config.kubeconfig, namespaces=config.namespaces,
                label_selector=config.label_selector, endpoints_api=config.endpoints_api,
                watch_timeout=config.kube_watch_timeout, read_timeout=config.kube_read_timeout,
                warn_every=config.kube_warn_interval, backoff=(0.8, config.kube_max_backoff),
                pod_names=config.endpoint_pod_names, endpoints=not config.no_endpoints,
                namespace_labels=config.namespace_labels, multicluster=bool(config.multicluster_zones),
            )

    def start(self) -> None:
        if not self.manifests and not self.kubernetes:
            # No source at all (a node cache, --cluster-dns): nothing to wait for, so ready at once.
            self.emit([Synced("none")])
        if self.manifests:
            self.manifests.load()
            self.manifests.start()
        if self.kubernetes:
            self.kubernetes.start()

    def reload(self) -> None:
        """SIGHUP: re-read every manifest file now (the API sources are watches: nothing to re-read)."""
        if self.manifests:
            log.info("SIGHUP: re-reading the manifest files")
            self.manifests.reload()
        else:
            log.info("SIGHUP: no manifest files to re-read; nothing to do")

    def stop(self) -> None:
        if self.manifests:
            self.manifests.stop()
        if self.kubernetes:
            self.kubernetes.stop()

    def status(self) -> dict[str, dict[str, Any]]:
        if not self.kubernetes:
            return {}
        return {o: {"synced": s.synced, "healthy": s.healthy, "last_event": s.last_event,
                    "errors": dict(s.errors_by_reason)}
                for o, s in self.kubernetes.status().items()}


__all__ = ["Sources"]
