"""The one-shot subcommands: ``dnsd check`` and ``dnsd records``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence

from dnslib import RR

from dnsd.answer.render import TXT_TTL, rdata_of
from dnsd.cluster.sources.manifests import expand, load_file
from dnsd.cluster.store import Op
from dnsd.config import Config
from dnsd.dns.const import EXISTS, TXT
from dnsd.dns.names import label_tuple
from dnsd.zone.pipeline import Pipeline, Scope


def check(paths: Sequence[str], pod_names: bool = False) -> int:
    """Print ``file:document: reason`` for every problem; exit 1 if there is any."""
    files = expand(paths)
    missing = [p for p in paths if not expand([p])]
    problems = [f"{p}:0: no such file, or no *.yaml/*.yml/*.json below it" for p in missing]
    count = 0
    for path in files:
        result = load_file(path, pod_names=pod_names)
        assert result is not None  # no digest to skip
        problems += result.errors
        count += len(result.objects)
    for line in problems:
        print(line)
    print(f"{len(files)} file(s), {count} object(s), {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def zone_lines(dataplane: Pipeline) -> list[str]:
    lines = []
    for name, rtype, rdata in dataplane.index.records():
        if rtype == EXISTS:
            continue
        ttl = TXT_TTL if rtype == TXT else dataplane.ttl
        lines.append(RR(label_tuple(name), rtype, 1, ttl, rdata_of(rtype, rdata)).toZone())
    return sorted(lines)


def records(config: Config, sync_timeout: float = 60.0) -> int:
    dataplane = Pipeline(config.domains, config.ttl, None, pods=config.pods == "insecure",
                         scope=Scope.from_config(config), external=config.external_zones,
                         multicluster=config.multicluster_zones)
    lock = threading.Lock()

    def emit(ops: list[Op]) -> None:
        with lock:
            dataplane.apply(ops)

    manifests, use_api = config.sources()
    from dnsd.cluster.sources.manifests import ManifestSource

    ManifestSource(manifests, emit, pod_names=config.endpoint_pod_names).load()
    if use_api:
        from dnsd.cluster.sources.kubernetes.source import KubernetesSource

        source = KubernetesSource(
            emit, kubeconfig=config.kubeconfig, namespaces=config.namespaces,
            label_selector=config.label_selector, endpoints_api=config.endpoints_api,
            pod_names=config.endpoint_pod_names, endpoints=not config.no_endpoints,
            namespace_labels=config.namespace_labels, multicluster=bool(config.multicluster_zones),
        )
        source.start()
        deadline = time.monotonic() + sync_timeout
        while not dataplane.store.synced and time.monotonic() < deadline:
            time.sleep(0.05)
        source.stop()
        if not dataplane.store.synced:
            print("dnsd: the Kubernetes API did not sync in time", file=sys.stderr)
            return 1
    with lock:
        lines = zone_lines(dataplane)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0
