"""One frozen Config, built from the command line; nothing else reads argv or the environment."""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dnsd.dns.const import REVERSE_ZONES
from dnsd.servers import StubDomain, Upstream


def bundled_zones() -> Path:
    """The example cluster: the repo's zones/ in a checkout, the packaged copy once installed."""
    checkout = Path(__file__).resolve().parent.parent / "zones"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("dnsd") / "zones"))


def cgroup_cpu_limit(cpu_max: str | None) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("QUOTA PERIOD", or "max PERIOD"): quota/period rounded up."""
    if not cpu_max:
        return None
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def usable_cpus(cpu_max_path: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may really use: its affinity mask, capped by a container's CPU limit.

    ``os.cpu_count()`` is the node's count; in a pod limited to 2 CPUs on a 64-core node it
    would start 64 workers, each holding a full copy of the records.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open(cpu_max_path) as f:
            limit = cgroup_cpu_limit(f.read())
    except OSError:
        limit = None
    return max(1, min(cpus, limit) if limit else cpus)


@dataclass(frozen=True)
class Config:
    manifests: tuple[str, ...] = ()
    kubernetes: bool = False
    kubeconfig: str | None = None
    endpoints_api: bool = False
    namespaces: tuple[str, ...] = ()
    label_selector: str | None = None
    domains: tuple[str, ...] = ("cluster.local",)
    addresses: tuple[str, ...] = ("127.0.0.1",)
    port: int = 53
    ttl: int = 5
    workers: int = field(default_factory=usable_cpus)
    http_address: str | None = "127.0.0.1:8080"
    log_level: str = "info"
    tcp_idle_timeout: float = 10.0
    lameduck: float = 0.0  # seconds answering after SIGTERM while /ready says 503 (CoreDNS's health lameduck)
    tcp_max_connections: int = 1024
    cache_size: int = 200_000
    # The reply tables' bound in bytes, split between the workers (table_share): ~11,000 answers at
    # ~370 bytes, about CoreDNS's cache (9,984 positive answers); negative answers take no entry.
    cache_bytes: int = 4 << 20
    udp_max_payload: int = 1232
    shared_dir: str | None = None  # where the index file workers share lives; None: $TMPDIR or /tmp
    kube_watch_timeout: int = 300
    kube_read_timeout: float = 75.0
    kube_warn_interval: float = 60.0  # seconds between WARNINGs while a resource keeps failing
    kube_max_backoff: float = 30.0  # the longest wait between retries of a failing request
    reload_debounce_ms: int = 50
    # forwarding (dnsd/upstream/): none configured = authoritative only, REFUSED outside the zones
    upstreams: tuple[Upstream, ...] = ()
    stub_domains: tuple[StubDomain, ...] = ()
    # --cluster-dns: a node cache. No source; the cluster zones and the reverse zones are stub domains
    # of these servers (asked over kept-open TCP), added to stub_domains by the command line.
    cluster_dns: tuple[Upstream, ...] = ()
    forward_cache_size: int = 100_000
    forward_max_ttl: int = 3600
    serve_stale: int = 3600
    prefetch: int = 2
    upstream_timeout: float = 2.0
    forward_timeout: float = 4.0
    max_fails: int = 2
    health_check: float = 0.5
    policy: str = "random"
    force_tcp: bool = False
    max_concurrent: int = 1000
    shed_after: float = 0.002  # a UDP batch whose first query waited longer: its uncached forwards get REFUSED
    allow_from: tuple[str, ...] = ()
    upstream_tls_ca: str | None = None  # CA bundle for tls:// upstreams (default: the system's)
    # names the loop-detection probes; one per dnsd (workers share it through the pickled Config)
    loop_token: str = field(default_factory=lambda: secrets.token_hex(6))
    pods: str = "insecure"  # --pods: "insecure" answers 1-2-3-4.ns.pod.<zone>, "disabled" does not
    endpoint_pod_names: bool = False
    ignore_empty_service: bool = False  # a ClusterIP Service without a published endpoint: NXDOMAIN
    no_endpoints: bool = False  # no endpoint records, no EndpointSlice/Endpoints watch
    namespace_labels: str | None = None  # a label selector: only the namespaces it matches are served
    transfer_to: tuple[str, ...] = ()  # CIDRs allowed to AXFR the served zones
    autopath: bool = False
    external_zones: tuple[str, ...] = ()  # --external-zone: Services' external addresses (CoreDNS's k8s_external)
    multicluster_zones: tuple[str, ...] = ()  # --multicluster-zone: the clusterset's ServiceImports (KEP-1645)
    loadbalance: bool = True  # each reply rotates its A/AAAA records (--no-loadbalance: a fixed order)
    log_queries: str | None = None  # --log-queries CLASS: all, success, denial, error; None: no query log
    log_queries_rate: int = 1000  # query log lines per second and process at most (0: no bound)
    top_talkers: bool = True  # count top clients and names (/debug/top)
    dnstap: str | None = None  # --dnstap unix:PATH or tcp:HOST:PORT: a collector of every query and reply
    dnstap_identity: str = ""  # --dnstap-identity: this server's name in the messages (default: the host name)
    autopath_search: tuple[str, ...] | None = None  # None: the search domains of /etc/resolv.conf

    @property
    def table_share(self) -> tuple[int, int]:
        """(replies, bytes) one serving process may keep: --cache-size and --cache-bytes split between
        the workers, since each keeps only the names steered to it (process/steering.py)."""
        return max(1, self.cache_size // self.workers), max(1 << 20, self.cache_bytes // self.workers)

    @property
    def index_zones(self) -> tuple[str, ...]:
        """Every zone the index holds: the cluster zones, the reverse zones, the external and multicluster zones."""
        return (*self.domains, *REVERSE_ZONES, *self.external_zones, *self.multicluster_zones)

    @property
    def forwards(self) -> bool:
        """Names outside the served zones (or under a stub domain) go upstream."""
        return bool(self.upstreams or self.stub_domains)

    @property
    def ns_address(self) -> str | None:
        """The address named by ns.dns.<zone>: the first specific listen address."""
        for address in self.addresses:
            if not ipaddress.ip_address(address).is_unspecified:
                return address
        return None

    @property
    def http_endpoint(self) -> tuple[str, int] | None:
        if not self.http_address:
            return None
        host, _, port = self.http_address.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)

    def sources(self) -> tuple[tuple[str, ...], bool]:
        """Manifest paths and whether to use the API; no source at all means the example cluster
        (a node cache, --cluster-dns, has none: it forwards the cluster zones)."""
        if self.cluster_dns:
            return (), False
        if not self.manifests and not self.kubernetes:
            return (str(bundled_zones()),), False
        return self.manifests, self.kubernetes
