#!/usr/bin/env python3
"""Fuzzing the query path: every input gets a well-formed reply or a drop, never an exception.

    python3 -m bench.fuzz_query atheris [-runs=N] [-max_total_time=S] [libFuzzer flags...]   (FUZZ_CORPUS=dir)
    python3 -m bench.fuzz_query mutate [--count 1000000] [--seed 1]

``atheris``: coverage-guided (atheris/libFuzzer) from the seed corpus below; CI runs it briefly
(tests/unit/test_fuzz.py), this script runs it as long as you like. ``mutate``: a plain seeded mutation
loop over the same corpus (byte flips, truncation, insertion, splicing, header rewrites), fast
enough for a million packets in a couple of minutes; prints rcode counts, catch-all SERVFAILs
and the largest UDP amplification (reply bytes / query bytes).

Both answer through ``Responder.answer`` in-process, with the example cluster plus a headless
Service of 200 endpoints (the amplification case), UDP (limit 512 before EDNS) and TCP.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run by path (tests/unit/test_fuzz.py does): this tree's dnsd, not an installed one
    sys.path.insert(0, str(ROOT))

from dnsd.answer.responder import Responder  # noqa: E402
from dnsd.cluster.sources.manifests import expand, load_file, parse  # noqa: E402
from dnsd.cluster.store import Expect, Replace, Synced  # noqa: E402
from dnsd.dns.const import TCP_LIMIT  # noqa: E402
from dnsd.process.dataplane import Dataplane  # noqa: E402

TYPES = (1, 2, 5, 6, 12, 16, 28, 33, 255, 0, 41, 99, 252, 251)
SERVFAIL = 2
BIG = json.dumps({"kind": "List", "apiVersion": "v1", "items": [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big", "namespace": "default"},
     "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "big-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "big"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
     "endpoints": [{"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"]} for i in range(200)]},
]})


def dataplane() -> Dataplane:
    dp = Dataplane(["cluster.local"], 5, "127.0.0.1")
    ops: list = [Expect("fuzz")]
    for path in expand([ROOT / "zones"]):
        result = load_file(path)
        assert result is not None
        ops.append(Replace(f"file:{path}", result.objects))
    big, errors = parse(BIG, "big.json")
    assert not errors, errors
    ops += [Replace("file:big", tuple(big)), Synced("fuzz")]
    dp.apply(ops)
    return dp


def wire_name(name: str) -> bytes:
    return b"".join(bytes((len(lb),)) + lb.encode() for lb in name.split(".") if lb) + b"\x00"


def seeds(dp: Dataplane) -> list[bytes]:
    """Queries for every served name and a few missing ones, each type, with and without EDNS."""
    rng = random.Random(7)
    names = sorted({name for name, _, _ in dp.index.records()})
    names += ["nope.default.svc.cluster.local", "shop.svc.cluster.local", "svc.cluster.local", "cluster.local",
              "example.com", "", "x." * 60 + "cluster.local", "big.default.svc.cluster.local"]
    out = []
    for name in names:
        spelled = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
        for qtype in TYPES:
            question = wire_name(spelled) + struct.pack("!HH", qtype, 1)
            flags = rng.choice((0x0100, 0x0000, 0x0110, 0x0120))
            out.append(struct.pack("!HHHHHH", rng.randrange(65536), flags, 1, 0, 0, 0) + question)
            payload = rng.choice((512, 1232, 4096, 65535))
            options = rng.choice((b"", b"\x00\x0a\x00\x08" + bytes(8), b"\x00\x0c\x00\x02\x00\x00"))
            opt = b"\x00\x00\x29" + struct.pack("!HBBHH", payload, 0, 0, 0x8000 * rng.randrange(2), len(options))
            out.append(struct.pack("!HHHHHH", rng.randrange(65536), flags, 1, 0, 0, 1) + question + opt + options)
    return out


class Failure(AssertionError):
    pass


def check(responder: Responder, data: bytes, counts: Counter[str] | None = None) -> float:
    """Answer ``data`` over UDP and TCP and check the reply; returns the UDP amplification (0 if no reply)."""
    amplification = 0.0
    for limit in (512, TCP_LIMIT):
        failures = responder.failures
        reply = responder.answer(data, limit, {})
        if responder.failures != failures:
            raise Failure(f"catch-all SERVFAIL for {data.hex()}")
        if reply is None:
            if counts is not None:
                counts["dropped"] += 1
            continue
        if len(reply) < 12 or reply[:2] != data[:2] or not reply[2] & 0x80:
            raise Failure(f"bad reply header for {data.hex()}: {reply[:12].hex()}")
        rcode = reply[3] & 0x0F
        if rcode == SERVFAIL:
            raise Failure(f"SERVFAIL for {data.hex()}")
        if counts is not None:
            counts[str(rcode)] += 1
        if limit == 512:
            if len(reply) > responder.max_payload:
                raise Failure(f"UDP reply of {len(reply)} bytes for {data.hex()}")
            amplification = len(reply) / max(1, len(data))
    return amplification


def mutate(rng: random.Random, packet: bytes, corpus: list[bytes]) -> bytes:
    data = bytearray(packet)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(7)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and data:
            del data[rng.randrange(len(data)):]
        elif kind == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 8))
        elif kind == 3 and len(data) >= 12:
            data[4:12] = struct.pack("!HHHH", *(rng.choice((0, 1, 1, 2, 65535)) for _ in range(4)))
        elif kind == 4 and len(data) >= 4:
            data[2:4] = rng.randbytes(2)
        elif kind == 5:
            other = rng.choice(corpus)
            data += other[rng.randrange(len(other)):]
        elif kind == 6 and data:
            at = rng.randrange(len(data))
            data[at] = rng.choice((0x40, 0x80, 0xC0, 0x3F, 0x00, 0xFF))
    return bytes(data)


def run_mutations(count: int, seed: int) -> int:
    dp = dataplane()
    corpus = seeds(dp)
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    worst, worst_packet = 0.0, b""
    started = time.monotonic()
    for i in range(count):
        packet = corpus[i % len(corpus)] if i < len(corpus) else mutate(rng, rng.choice(corpus), corpus)
        amplification = check(dp.responder, packet, counts)
        if amplification > worst:
            worst, worst_packet = amplification, packet
    seconds = time.monotonic() - started
    names = {"0": "NOERROR", "1": "FORMERR", "3": "NXDOMAIN", "4": "NOTIMP", "5": "REFUSED"}
    print(f"{count:,} packets ({len(corpus):,} seeds, then mutations; seed {seed}) in {seconds:.0f} s, UDP and TCP each")
    print("replies: " + ", ".join(f"{names.get(k, k)} {v:,}" for k, v in sorted(counts.items())))
    print(f"catch-all SERVFAILs: {dp.responder.failures}; tracebacks: {dp.responder.failures}")
    print(f"largest UDP amplification: {worst:.1f}x ({len(worst_packet)}-byte query {worst_packet[:40].hex()}...)")
    return 0


def run_atheris(argv: list[str]) -> int:
    import atheris

    dp = dataplane()
    corpus_dir = Path(os.environ.get("FUZZ_CORPUS") or Path(__file__).resolve().parent / "out" / "fuzz-corpus")
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for i, packet in enumerate(seeds(dp)[::8]):  # every 8th: each name and type still appears, start-up stays short
        path = corpus_dir / f"seed-{i:05d}"
        if not path.exists():
            path.write_bytes(packet)
    responder = dp.responder

    def one_input(data: bytes) -> None:
        check(responder, data)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *argv, str(corpus_dir)], one_input)
    atheris.Fuzz()
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "atheris":
        return run_atheris(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["mutate"])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return run_mutations(args.count, args.seed)


if __name__ == "__main__":
    sys.exit(main())
