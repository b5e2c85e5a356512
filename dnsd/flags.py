"""dnsd's command line flags: the parser of every subcommand, and ``DNSD_<FLAG>`` for each flag.

What the flags mean as a Config (and which cannot go together) is cli.py's.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, cast

from dnsd import argtypes, servers
from dnsd.cluster import selector

ENV_PREFIX = "DNSD_"


def _observe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("observing: who asks what (docs/observability.md)")
    group.add_argument("--log-queries", nargs="?", const="all", choices=("all", "success", "denial", "error"),
                       metavar="CLASS", help="log each answered query to standard output, in CoreDNS's log format: "
                                             "all (the default when given), success, denial (NXDOMAIN, NODATA) or "
                                             "error (default: off)")
    group.add_argument("--log-queries-rate", type=argtypes.non_negative, default=1000, metavar="LINES",
                       help="query log lines per second and serving process at most; the rest are counted, not "
                            "written (0: no bound; default 1000)")
    group.add_argument("--dnstap", type=argtypes.dnstap_target, metavar="TARGET",
                       help="stream every query and reply, and every upstream exchange, to a dnstap collector: "
                            "unix:PATH or tcp:HOST:PORT (a slow or absent one never delays answers: messages are "
                            "dropped and counted)")
    group.add_argument("--dnstap-identity", metavar="NAME",
                       help="this server's identity in the dnstap messages (default: the host name)")
    group.add_argument("--no-top-talkers", action="store_true",
                       help="do not count top clients and names for /debug/top and dnsd top (default: counted)")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _from_env(convert: Callable[[str], Any], env: str, raw: str) -> Callable[[str], Any]:
    """``convert``, naming the variable when the value that fails came from it."""

    def wrapped(value: str) -> Any:
        try:
            return convert(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            if value is raw:
                raise argparse.ArgumentTypeError(f"{exc} (from {env}={raw!r})") from None
            raise

    return wrapped


def _one_of(convert: Callable[[str], Any], choices: tuple[str, ...]) -> Callable[[str], Any]:
    def checked(value: str) -> Any:
        value = convert(value)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {', '.join(choices)})")
        return value

    return checked


def _apply_env(parser: argparse.ArgumentParser) -> None:
    """Take each flag's default from DNSD_<FLAG>, in every subcommand.

    Values stay strings until argparse converts them, which it does only for the
    subcommand that runs: a bad DNSD_TTL is a usage error of ``serve`` (exit 2,
    naming the variable), not a crash of ``check``. Repeatable flags split on commas.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _apply_env(sub)
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if not flag or flag == "--help":
            continue
        env = _env_name(flag)
        if action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [env {env}]".strip()
        raw = os.environ.get(env)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            # argparse never converts list defaults: config_from_args does (with the same types).
            action.default = [v.strip() for v in raw.split(",") if v.strip()]
        else:
            convert = cast(Callable[[str], Any], action.type or str)
            if action.choices:  # argparse checks choices for given values only, never for defaults
                convert = _one_of(convert, tuple(action.choices))
            action.type = _from_env(convert, env, raw)
            action.default = raw


def _source_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sources (default: the example cluster in zones/)")
    group.add_argument("--manifests", action="append", metavar="PATH",
                       help="a YAML/JSON manifest file or a directory of them (repeatable); hot-reloaded")
    group.add_argument("--kubernetes", action="store_true",
                       help="follow the Kubernetes API (in-cluster config, else kubeconfig)")
    group.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig to use; implies --kubernetes")
    group.add_argument("--endpoints-api", action="store_true",
                       help="read legacy v1 Endpoints instead of EndpointSlices")
    group.add_argument("--namespace", action="append", metavar="NS", dest="namespaces",
                       help="serve only this namespace (repeatable)")
    group.add_argument("--label-selector", metavar="SELECTOR", help="serve only Services matching this selector")
    group.add_argument("--domain", action="append", metavar="ZONE", dest="domains",
                       help="cluster zone to serve (repeatable; default cluster.local)")
    group.add_argument("--external-zone", action="append", metavar="ZONE", dest="external_zones", type=argtypes.domain,
                       help="also serve SVC.NS.ZONE: a Service's externalIPs and LoadBalancer ingress IPs, SRV per "
                            "named port, SOA/NS at the apex (repeatable; CoreDNS's k8s_external)")
    group.add_argument("--multicluster-zone", action="append", metavar="ZONE", dest="multicluster_zones",
                       type=argtypes.domain,
                       help="also serve the clusterset's ServiceImports (multicluster.x-k8s.io) and their "
                            "EndpointSlices as SVC.NS.svc.ZONE, e.g. clusterset.local (repeatable; KEP-1645, "
                            "CoreDNS's multicluster)")
    group.add_argument("--ttl", type=argtypes.ttl, default=5, help="TTL of answers, 0-3600 seconds (default 5)")
    group.add_argument("--pods", choices=["disabled", "insecure"], default="insecure",
                       help="pod records 1-2-3-4.NS.pod.ZONE for known namespaces, no Pod watch (default insecure)")
    group.add_argument("--endpoint-pod-names", action="store_true",
                       help="name an endpoint without hostname after its pod (targetRef.name), not its dashed IP")
    group.add_argument("--ignore-empty-service", action="store_true",
                       help="a ClusterIP Service without a ready endpoint answers NXDOMAIN (its PTR stays), so a pod's "
                            "search path goes on (CoreDNS's ignore empty_service)")
    group.add_argument("--no-endpoints", action="store_true",
                       help="no endpoint records and no EndpointSlice watch: headless Services answer NXDOMAIN "
                            "(CoreDNS's noendpoints)")
    group.add_argument("--namespace-labels", metavar="SELECTOR", type=argtypes.checked(selector.parse),
                       help="serve only namespaces whose labels match this selector, e.g. 'dns in (public,shared)' "
                            "(CoreDNS's namespace_labels)")
    group.add_argument("--kube-watch-timeout", type=argtypes.positive, default=300, help=argparse.SUPPRESS)
    group.add_argument("--kube-read-timeout", type=argtypes.number, default=75.0, help=argparse.SUPPRESS)
    group.add_argument("--kube-warn-interval", type=argtypes.number, default=60.0, help=argparse.SUPPRESS)
    group.add_argument("--kube-max-backoff", type=argtypes.number, default=30.0, help=argparse.SUPPRESS)


def _forward_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("forwarding: names outside the served zones (dnsd/upstream/)")
    group.add_argument("--upstream", action="append", metavar="SERVER", type=argtypes.checked(servers.parse_upstream),
                       help="where names outside the served zones go: IP, IP:PORT, [IPv6]:PORT, "
                            "tls://IP[:PORT][#NAME] (DNS over TLS, the certificate must name NAME), or a resolv.conf "
                            "path whose nameserver lines are used (repeatable; default /etc/resolv.conf); "
                            "'none': authoritative only, REFUSED outside the zones")
    group.add_argument("--upstream-tls-ca", metavar="FILE",
                       help="CA certificates for tls:// upstreams (default: the system's)")
    group.add_argument("--stub-domain", action="append", metavar="ZONE=SERVER[,SERVER...]", dest="stub_domains",
                       type=argtypes.checked(servers.parse_stub_domain),
                       help="send names in ZONE to these servers instead (repeatable); wins over a served zone "
                            "for its subtree")
    group.add_argument("--cluster-dns", action="append", metavar="SERVER", dest="cluster_dns",
                       type=argtypes.checked(servers.parse_cluster_dns),
                       help="node-local cache: serve no cluster data; forward the cluster zones (--domain) and the "
                            "reverse zones to this cluster DNS (IP[:PORT], e.g. the kube-dns Service IP) over one "
                            "kept-open TCP connection, and cache the answers (repeatable; docs/node-local.md)")
    group.add_argument("--forward-cache-size", type=argtypes.positive, default=100_000,
                       help="upstream replies cached, entries (default 100000)")
    group.add_argument("--forward-max-ttl", type=argtypes.seconds, default=3600,
                       help="cap on the TTL of cached upstream replies, seconds (default 3600)")
    group.add_argument("--serve-stale", type=argtypes.seconds, default=3600,
                       help="answer expired entries this many seconds past expiry, with TTL 30, when every "
                            "upstream fails (RFC 8767; default 3600; 0 turns it off)")
    group.add_argument("--prefetch", type=argtypes.seconds, default=2,
                       help="refresh an entry hit this many times before it expires, in its last 10%% of TTL "
                            "(default 2; 0 turns it off)")
    group.add_argument("--upstream-timeout", type=argtypes.number, default=2.0,
                       help="seconds to wait for one upstream before trying the next (default 2)")
    group.add_argument("--forward-timeout", type=argtypes.number, default=4.0,
                       help="seconds after which a forwarded query gets a stale answer or SERVFAIL (default 4)")
    group.add_argument("--max-fails", type=argtypes.seconds, default=2,
                       help="failures in a row that mark an upstream down until a health check passes "
                            "(default 2; 0: never)")
    group.add_argument("--health-check", type=argtypes.number, default=0.5,
                       help="seconds between health checks of a down upstream (default 0.5)")
    group.add_argument("--policy", choices=["random", "round_robin", "sequential"], default="random",
                       help="order in which upstreams are tried (default random)")
    group.add_argument("--force-tcp", action="store_true", help="ask upstreams over TCP only")
    group.add_argument("--max-concurrent", type=argtypes.positive, default=1000,
                       help="distinct questions in flight upstream at once; more get REFUSED (default 1000)")
    group.add_argument("--shed-after", type=argtypes.seconds, default=None, metavar="MS",
                       help="when UDP queries have waited over MS milliseconds in the socket, names that would "
                            "go upstream get REFUSED at once, so cluster names keep their latency under a "
                            "flood (default 2; with --cluster-dns 0, as every name goes upstream; 0: never)")
    group.add_argument("--allow-from", action="append", metavar="CIDR", type=argtypes.network,
                       help="only clients in these networks may ask (repeatable; default everyone); "
                            "others get REFUSED")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnsd", description="Service-discovery DNS server for Kubernetes.",
        epilog="Each subcommand has its own flags: dnsd serve --help (--manifests, --kubernetes, --kubeconfig, "
        "--endpoints-api, --namespace, --label-selector, --domain, --ttl, --address, --port, --workers, "
        "--http-address, --log-level, --upstream, --stub-domain, --forward-cache-size, --forward-max-ttl, "
        "--serve-stale, --allow-from, --pods, --endpoint-pod-names, --transfer-to, --autopath, --shared-dir, ...). "
        "Every flag can also be set as DNSD_<FLAG>, e.g. DNSD_PORT=1053; "
        "repeatable flags take comma-separated values.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer DNS queries")
    _source_flags(serve)
    serve.add_argument("--address", action="append", type=argtypes.address, dest="addresses", metavar="ADDR",
                       help="listen address, IPv4 or IPv6 (repeatable; default 127.0.0.1)")
    serve.add_argument("--port", type=argtypes.port, default=53, help="UDP and TCP port (default 53)")
    serve.add_argument("--workers", type=argtypes.positive, default=None,
                       help="processes answering on the same port (default: the CPUs this process may use, "
                            "after affinity and a container's CPU limit)")
    serve.add_argument("--http-address", default="127.0.0.1:8080",
                       help="HOST:PORT for /health, /ready and /metrics; empty to disable (default 127.0.0.1:8080)")
    serve.add_argument("--tcp-idle-timeout", type=argtypes.number, default=10.0,
                       help="seconds before an idle TCP connection closes")
    serve.add_argument("--lameduck", type=argtypes.duration, default=0.0, metavar="SECONDS",
                       help="after SIGTERM, keep answering this long while /ready says 503, then drain and exit "
                            "(CoreDNS's health lameduck; default 0). A second SIGTERM, or SIGINT, stops at once")
    serve.add_argument("--tcp-max-connections", type=argtypes.positive, default=1024,
                       help="concurrent TCP connections, for the whole server (all workers together)")
    serve.add_argument("--cache-size", type=argtypes.positive, default=200_000,
                       help="rendered positive replies kept, one per (name, type) asked, split between the "
                            "workers (default 200000)")
    serve.add_argument("--cache-bytes", type=argtypes.bytes, default=4 << 20, metavar="SIZE",
                       help="memory the rendered replies may take, e.g. 64M, split between the workers: each keeps "
                            "the names steered to it (default 4M: ~11,000 answers)")
    serve.add_argument("--udp-max-payload", type=argtypes.payload, default=1232, metavar="BYTES",
                       help="largest UDP reply, and the EDNS size advertised: 512-4096 (default 1232, as Knot); "
                            "bigger answers get TC and are retried over TCP")
    _forward_flags(serve)
    serve.add_argument("--transfer-to", action="append", type=argtypes.network, metavar="CIDR",
                       help="clients allowed to AXFR the served zones over TCP (repeatable; default none)")
    serve.add_argument("--autopath", action="store_true",
                       help="server-side search path: X.NS.svc.ZONE that does not exist continues the pod's search "
                            "list (X.svc.ZONE, X.ZONE, the search domains, X) and answers with a CNAME")
    serve.add_argument("--autopath-search", action="extend", nargs="+", type=argtypes.domain, metavar="DOMAIN",
                       help="search domains after the cluster's for --autopath (default: those of /etc/resolv.conf)")

    serve.add_argument("--no-loadbalance", action="store_true",
                       help="answer A/AAAA records in a fixed order (default: each reply rotates them, as CoreDNS's "
                            "loadbalance in kubeadm's Corefile, so clients taking the first address spread out)")
    _observe_flags(serve)
    serve.add_argument("--shared-dir", metavar="DIR",
                       help="with --workers above 1: the directory for the index file every worker reads (a few "
                            "dozen MB at 100k endpoints; default $TMPDIR or /tmp); must be writable")

    records = sub.add_parser("records", help="print every record dnsd would serve, as sorted zone-file text")
    _source_flags(records)

    check = sub.add_parser("check", help="validate manifest files; non-zero exit on any problem")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.add_argument("--endpoint-pod-names", action="store_true",
                       help="check endpoints as named after their pods (as serve and records would)")

    wait = sub.add_parser("wait", help="wait until a dnsd is ready (for scripts); non-zero exit on timeout")
    wait.add_argument("--http", metavar="HOST:PORT",
                      help="poll http://HOST:PORT/ready (dnsd's --http-address) until it answers 200")
    wait.add_argument("--dns", metavar="IP:PORT", type=argtypes.checked(servers.parse_server),
                      help="ask the DNS server at IP:PORT until NAME gets NOERROR or NXDOMAIN (SERVFAIL: not synced)")
    wait.add_argument("--name", default="dns-version.cluster.local",
                      help="the name --dns asks for, type A (default dns-version.cluster.local)")
    wait.add_argument("--timeout", type=argtypes.number, default=30.0,
                      help="seconds before giving up, exit status 1 (default 30)")

    top = sub.add_parser("top", help="live view of a running dnsd: qps, cache, upstreams, top clients and names",
                         description="A live terminal view of a dnsd, read from its HTTP port (/metrics and "
                         "/debug/top), local or remote. Keys: q quits, w switches the window (1m/15m).")
    top.add_argument("--http", type=argtypes.http_base, default="127.0.0.1:8080", metavar="HOST:PORT",
                     help="the dnsd's --http-address: HOST:PORT, [IPv6]:PORT or an http(s):// URL "
                          "(default 127.0.0.1:8080)")
    top.add_argument("--interval", type=argtypes.number, default=1.0, metavar="SECONDS",
                     help="seconds between refreshes; rates are taken over this interval (default 1)")
    top.add_argument("--limit", type=argtypes.positive, default=10, metavar="N",
                     help="rows in each top table (default 10; the server caps it at its sketches' capacity)")
    top.add_argument("--window", choices=["1m", "15m"], default="1m",
                     help="the heavy hitters of the last minute or the last 15 minutes (default 1m)")
    for command in (serve, records, check, wait):
        command.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                             help="log verbosity (default info)")
    _apply_env(parser)
    return parser
