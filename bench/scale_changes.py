"""bench/scale's idle changes, one at a time: a Service's clusterIP, a headless Service's pod, and
``--new-services`` Services created one after another (each with its EndpointSlice), each probed from
the fake API's answer to the first UDP answer with the new data."""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import time
from typing import Any

from bench.common import log, quantile, wait_until
from bench.scale_cluster import Plan
from bench.scale_dnsd import Metrics
from bench.scale_probe import Probe, Prober
from bench.scale_report import fmt_ms


def _applied(http_port: int, before: Metrics, settle: float) -> dict[str, Any]:
    """The batches dnsd timed since ``before`` (dnsd_programming_duration_seconds)."""
    time.sleep(settle)
    delta: dict[str, Any] = {}

    def counted() -> bool:
        delta.update(Metrics.scrape(http_port).since(before))
        return delta["batches"] >= 1  # the main process applies (and times) it; workers only drop replies

    with contextlib.suppress(RuntimeError):
        wait_until(counted, 3, "the change in dnsd_programming_duration_seconds", interval=0.1)
    return delta


def one_changes(args: argparse.Namespace, api: Any, prober: Prober, http_port: int, one_service: Plan,
                one_slice: Plan) -> dict[str, Any]:
    """A clusterIP changed, then one pod of a headless Service's slice replaced, idle."""
    one: dict[str, Any] = {}
    settle = 1.3 if args.workers > 1 else 0.0  # workers report their programming times once a second
    changes = [("service_cluster_ip", one_service.objs[0], one_service.probes[0])]
    if len(one_slice.probes) > 1 and one_slice.probes[1] is not None:  # a headless Service's pod (if there is one)
        changes.append(("endpointslice", one_slice.objs[1], one_slice.probes[1]))
    for label, obj, probe in changes:
        assert probe is not None
        before = Metrics.scrape(http_port)
        expected = len(prober.results) + 1
        api.update(obj)
        prober.submit(probe, time.monotonic())
        got = prober.wait(expected, args.probe_cap + 5)
        if len(got) < expected:
            raise RuntimeError("the prober did not report")
        res = got[-1]
        delta = _applied(http_port, before, settle)
        one[label] = {"applied": delta, "event_to_answer_ms": None if res["latency"] is None else res["latency"] * 1000,
                      "name": probe.name}
        log(f"one change ({label}): applied in {delta.get('mean_ms', math.nan):.2f} ms "
            f"({delta.get('batches')} batch(es)); event->answer {fmt_ms(one[label]['event_to_answer_ms'])}")
    return one


def new_services(args: argparse.Namespace, api: Any, prober: Prober, http_port: int,
                 plan: list[tuple[list[dict[str, Any]], Probe]]) -> dict[str, Any]:
    """Services created one at a time, idle: from the Service's creation to the first answer with its
    clusterIP (the EndpointSlice is created right after the Service, as a Deployment's would be)."""
    if not plan:
        return {}
    settle = 1.3 if args.workers > 1 else 0.0
    gaps = random.Random(args.seed)
    before = Metrics.scrape(http_port)
    first = len(prober.results)
    for i, (objs, probe) in enumerate(plan):
        api.create(objs[0])
        prober.submit(probe, time.monotonic(), seq=i)
        for obj in objs[1:]:
            api.create(obj)
        if len(prober.wait(first + i + 1, args.probe_cap + 5)) < first + i + 1:
            raise RuntimeError("the prober did not report")
        # Apart, and out of step with dnsd's once-a-second work (SOA serial, heap trim), which a change may meet.
        time.sleep(gaps.uniform(0.1, 0.4))
    results = prober.results[first:first + len(plan)]
    lat = sorted(r["latency"] * 1000 for r in results if r["latency"] is not None)
    out = {"count": len(plan), "answered": len(lat), "median_ms": quantile(lat, 0.5),
           "max_ms": lat[-1] if len(lat) == len(plan) else math.inf, "samples_ms": [round(x, 3) for x in lat],
           "applied": _applied(http_port, before, settle)}
    log(f"{len(plan)} new Services, one at a time: event->answer median {fmt_ms(out['median_ms'])} max "
        f"{fmt_ms(out['max_ms'])}; applied: mean {fmt_ms(out['applied'].get('mean_ms'))} in "
        f"{out['applied'].get('batches')} batches")
    return out
