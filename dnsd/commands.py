"""The one-shot subcommands: ``dnsd check``, ``dnsd records`` and ``dnsd wait``."""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from dnslib import RR

from dnsd.answer.render import TXT_TTL, rdata_of
from dnsd.cluster.sources.manifests import expand, load_file
from dnsd.cluster.store import Op
from dnsd.config import Config
from dnsd.dns.const import EXISTS, TXT
from dnsd.dns.names import label_tuple
from dnsd.servers import Upstream
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


def wait(http: str | None, dns_server: Upstream | None, name: str, timeout: float, interval: float = 0.05) -> int:
    """Poll until dnsd is ready: ``http://HTTP/ready`` answers 200 and ``name`` asked of ``dns_server``
    gets NOERROR or NXDOMAIN (dnsd answers SERVFAIL until its first sync). 0 then; 1 after ``timeout``
    seconds, printing why the last probe failed."""
    probes: list[Callable[[float], str | None]] = []
    if http:
        url = (http if "://" in http else f"http://{http}").rstrip("/")
        probes.append(lambda limit: _http_ready(url if url.endswith("/ready") else url + "/ready", limit))
    if dns_server:
        probes.append(lambda limit: _dns_ready(dns_server, name, limit))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        reasons = [reason for probe in probes if (reason := probe(max(0.05, min(1.0, left))))]
        if not reasons:
            return 0
        if time.monotonic() >= deadline:
            print(f"dnsd wait: not ready after {timeout:g} s: {'; '.join(reasons)}", file=sys.stderr)
            return 1
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _http_ready(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return None if reply.status == 200 else f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read().decode(errors='replace').strip()}".rstrip()
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def _dns_ready(server: Upstream, name: str, timeout: float) -> str | None:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    where = f"{name} A at {server}"
    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), server.host, port=server.port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        return f"{where}: {exc.__class__.__name__}: {exc}" if str(exc) else f"{where}: no answer"
    code = reply.rcode()
    if code in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    return f"{where}: {dns.rcode.to_text(code)}"
