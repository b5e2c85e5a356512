"""Command line: ``dnsd serve | records | check | wait | top``: the flags (flags.py) made a Config, then run.

Every flag can also come from ``DNSD_<FLAG>``."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dnsd import argtypes, servers
from dnsd.config import Config, usable_cpus
from dnsd.dns.const import REVERSE_ZONES
from dnsd.flags import build_parser


def _upstream_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Parse --upstream/--stub-domain (again: values from DNSD_* arrive unchecked); ValueError names the flag."""
    upstreams: list[servers.Upstream] = []
    values = args.upstream if args.upstream is not None else ["/etc/resolv.conf"]
    for value in values:
        try:
            upstreams += servers.parse_upstream(value)
        except ValueError as exc:
            hint = " (--upstream none serves only the cluster zones)" if args.upstream is None else ""
            raise ValueError(f"--upstream: {exc}{hint}") from None
    stubs = []
    for value in servers.join_stub_values(list(args.stub_domains or ())):
        try:
            stubs.append(servers.parse_stub_domain(value))
        except ValueError as exc:
            raise ValueError(f"--stub-domain: {exc}") from None
    cluster_dns: list[servers.Upstream] = []
    for value in args.cluster_dns or ():
        try:
            cluster_dns.append(servers.parse_cluster_dns(value))
        except ValueError as exc:
            raise ValueError(f"--cluster-dns: {exc}") from None
    if cluster_dns:  # the cluster's own zones, as NodeLocal DNSCache forwards them (a --stub-domain of one wins)
        given = {stub.zone for stub in stubs}
        zones = [z.lower().strip(".") for z in (*(args.domains or ("cluster.local",)), *REVERSE_ZONES)]
        stubs += [servers.StubDomain(z, tuple(dict.fromkeys(cluster_dns))) for z in zones if z not in given]
    allow = []
    for value in args.allow_from or ():
        try:
            allow.append(argtypes.network(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--allow-from: {exc}") from None
    if args.upstream_tls_ca:
        import ssl

        try:
            ssl.create_default_context(cafile=args.upstream_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--upstream-tls-ca: cannot load {args.upstream_tls_ca!r}: {exc}") from None
    return dict(
        upstreams=tuple(dict.fromkeys(upstreams)), stub_domains=tuple(stubs), cluster_dns=tuple(cluster_dns),
        forward_cache_size=args.forward_cache_size,
        forward_max_ttl=args.forward_max_ttl, serve_stale=args.serve_stale, prefetch=args.prefetch,
        upstream_timeout=args.upstream_timeout, forward_timeout=args.forward_timeout, max_fails=args.max_fails,
        health_check=args.health_check, policy=args.policy, force_tcp=args.force_tcp,
        max_concurrent=args.max_concurrent,
        shed_after=(args.shed_after if args.shed_after is not None else 0 if cluster_dns else 2) / 1000, allow_from=tuple(allow),
        upstream_tls_ca=args.upstream_tls_ca,
    )


def _each(values: Sequence[str], convert: Callable[[str], str], env: str) -> tuple[str, ...]:
    """Convert a repeatable flag's values: those from the environment are still text."""
    try:
        return tuple(convert(v) for v in values)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{env}: {exc}") from None


def _scope_conflicts(fields: dict[str, Any]) -> None:
    """Options that cannot go together: ValueError naming them."""
    if fields["ignore_empty_service"] and fields["no_endpoints"]:
        raise ValueError("--ignore-empty-service with --no-endpoints would answer NXDOMAIN for every ClusterIP "
                         "Service: without endpoints none has any")
    taken = [("the cluster zone", d) for d in fields["domains"]]
    for flag, zones in (("--external-zone", fields["external_zones"]), ("--multicluster-zone", fields["multicluster_zones"])):
        for zone in zones:
            clash = [(what, d) for what, d in taken if zone == d or zone.endswith("." + d) or d.endswith("." + zone)]
            if clash:
                what, other = clash[0]
                raise ValueError(f"{flag} {zone} overlaps {what} {other}: give a zone of its own")
            taken.append((f"the {flag.lstrip('-').replace('-', ' ')}", zone))
    if fields["namespace_labels"] and fields["namespaces"]:
        raise ValueError("--namespace-labels needs the namespaces' labels, which --namespace does not read (it "
                         "watches no Namespace): give one or the other")


def _node_local_conflicts(fields: dict[str, Any]) -> None:
    """--cluster-dns serves no cluster data of its own: what needs some cannot go with it."""
    if not fields["cluster_dns"]:
        return
    for flag, key in (("--manifests", "manifests"), ("--kubernetes", "kubernetes"), ("--external-zone", "external_zones"),
                      ("--multicluster-zone", "multicluster_zones"), ("--autopath", "autopath"),
                      ("--transfer-to", "transfer_to")):
        if fields[key]:
            raise ValueError(f"--cluster-dns (a node cache) holds no cluster data: {flag} cannot go with it"
                             + (" (forward that zone with --stub-domain ZONE=tcp://SERVER)" if "zone" in flag else ""))


def config_from_args(args: argparse.Namespace) -> Config:
    fields = {
        "manifests": tuple(args.manifests or ()),
        "kubernetes": bool(args.kubernetes or args.kubeconfig),
        "kubeconfig": args.kubeconfig,
        "endpoints_api": args.endpoints_api,
        "namespaces": tuple(args.namespaces or ()),
        "label_selector": args.label_selector,
        "domains": tuple(args.domains or ("cluster.local",)),
        "external_zones": _each(args.external_zones or (), argtypes.domain, "DNSD_EXTERNAL_ZONE"),
        "multicluster_zones": _each(args.multicluster_zones or (), argtypes.domain, "DNSD_MULTICLUSTER_ZONE"),
        "ttl": args.ttl,
        "log_level": args.log_level,
        "kube_watch_timeout": args.kube_watch_timeout,
        "kube_read_timeout": args.kube_read_timeout,
        "kube_warn_interval": args.kube_warn_interval,
        "kube_max_backoff": args.kube_max_backoff,
        "pods": args.pods,
        "endpoint_pod_names": args.endpoint_pod_names,
        "ignore_empty_service": args.ignore_empty_service,
        "no_endpoints": args.no_endpoints,
        "namespace_labels": args.namespace_labels or None,
    }
    _scope_conflicts(fields)
    if args.command == "serve":
        fields.update(
            addresses=_each(args.addresses or ("127.0.0.1",), argtypes.address, "DNSD_ADDRESS"), port=args.port,
            workers=args.workers or usable_cpus(),
            http_address=args.http_address or None, tcp_idle_timeout=args.tcp_idle_timeout, lameduck=args.lameduck,
            tcp_max_connections=args.tcp_max_connections, cache_size=args.cache_size,
            cache_bytes=args.cache_bytes, udp_max_payload=args.udp_max_payload,
            **_upstream_fields(args),
            transfer_to=_each(args.transfer_to or (), argtypes.network, "DNSD_TRANSFER_TO"), autopath=args.autopath,
            autopath_search=_each(args.autopath_search, argtypes.domain, "DNSD_AUTOPATH_SEARCH")
            if args.autopath_search is not None else None,

            shared_dir=args.shared_dir, loadbalance=not args.no_loadbalance,
            log_queries=args.log_queries, log_queries_rate=args.log_queries_rate, top_talkers=not args.no_top_talkers,
            dnstap=args.dnstap, dnstap_identity=args.dnstap_identity or socket.gethostname(),
        )
        _node_local_conflicts(fields)
    return Config(**fields)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "top":
        # Before logging is set up: a log line on stderr would tear the screen. Imported here: only top needs rich.
        from dnsd.top.app import run as top

        return top(args.http, args.interval, args.limit, args.window)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check":
        from dnsd.commands import check

        return check(args.paths, pod_names=args.endpoint_pod_names)
    if args.command == "wait":
        if not (args.http or args.dns):
            build_parser().error("dnsd wait: give --http HOST:PORT and/or --dns IP:PORT")
        from dnsd.commands import wait

        return wait(args.http, servers.parse_server(args.dns) if args.dns else None, args.name, args.timeout)
    try:
        config = config_from_args(args)
    # A bad repeatable value from DNSD_<FLAG> (kept as text), or a bad --upstream/--stub-domain/--allow-from
    # value (flag or DNSD_*) or resolv.conf: both name what was wrong.
    except (argparse.ArgumentTypeError, ValueError) as exc:
        build_parser().error(str(exc))
    if args.command == "records":
        from dnsd.commands import records

        return records(config)
    if config.workers > 1 and config.shared_dir and (problem := argtypes.directory_problem(config.shared_dir)):
        build_parser().error(f"--shared-dir: {problem}")
    from dnsd.process.main import run

    return run(config)
