"""The shared index file answers exactly as the in-memory index, and another process reads what one writes."""

from __future__ import annotations

import marshal
import os
import random
import subprocess
import sys
from pathlib import Path

from dnsd.cluster.sources.manifests import ManifestSource
from dnsd.cluster.store import Synced
from dnsd.commands import zone_lines
from dnsd.config import bundled_zones
from dnsd.dns.const import AAAA, CNAME, EXISTS, NS, PTR, SOA, SRV, TXT, A
from dnsd.process.dataplane import Dataplane
from dnsd.zone.index import Index
from dnsd.zone.lmdb_codec import Format
from dnsd.zone.lmdb_index import SharedIndexWriter
from dnsd.zone.records import REVERSE_ZONES, SoaData, SrvData, SrvGroup
from dnsd.zone.resolver import resolve
from tests.unit.test_index import ANCESTORS, NAMES, ZONES


def test_random_patches_match_the_memory_index(tmp_path: Path) -> None:
    rng = random.Random(7)
    memory, shared = Index(ZONES), SharedIndexWriter(str(tmp_path), ZONES)
    owners: dict[int, set] = {}
    probes = [*NAMES, *ANCESTORS, "svc.cluster.local", "10.in-addr.arpa", "nope.cluster.local", "cluster.local"]
    for step in range(2000):
        owner = rng.randrange(6)
        new = {(rng.choice(NAMES), rng.choice((A, PTR, EXISTS)), f"r{rng.randrange(3)}-{owner}")
               for _ in range(rng.randrange(4))}
        old = owners.get(owner, set())
        before = {name: (shared.exists(name), shared.load(name)[1]) for name in probes}
        if step % 3:
            touched = shared.apply(old, new)
        else:  # several owners' changes in one transaction, as the dataplane batches them
            with shared.batch():
                touched = shared.apply(old, new)
        # The same or fewer: a name whose data went and came back in one patch need not be touched.
        assert touched <= memory.apply(old, new)
        owners[owner] = new
        for name in probes:
            if (shared.exists(name), shared.load(name)[1]) != before[name]:
                assert name in touched, name  # cached answers for it must be dropped
            assert shared.exists(name) == memory.exists(name), name
            assert shared.has_data(name) == memory.has_data(name), name
            for rtype in (A, PTR, EXISTS):
                assert shared.rrset(name, rtype) == memory.rrset(name, rtype)
    assert shared.record_count == memory.record_count
    assert sorted(shared.records()) == sorted(memory.records())
    shared.close()


def test_the_example_cluster_resolves_the_same(tmp_path: Path) -> None:
    ops: list = []
    ManifestSource([str(bundled_zones())], ops.extend).load()
    ops += [Synced("files")]
    memory = Dataplane(["cluster.local"], 5, "10.0.0.53")
    shared = Dataplane(["cluster.local"], 5, "10.0.0.53",
                       index=SharedIndexWriter(str(tmp_path), ("cluster.local", *REVERSE_ZONES)))
    for plane in (memory, shared):
        plane.apply(ops)
        plane._set_serial(1_700_000_000)  # both started from the clock, maybe a second apart
    assert zone_lines(shared) == zone_lines(memory)
    names = {name for name, _, _ in memory.index.records()}
    names |= {f"nope.{n}" for n in names} | {n.partition(".")[2] for n in names}
    for name in sorted(names):
        for qtype in (A, SRV, PTR, 255):
            assert resolve(shared.index, name, qtype, True) == resolve(memory.index, name, qtype, True), (name, qtype)


def test_another_process_reads_each_committed_batch(tmp_path: Path) -> None:
    writer = SharedIndexWriter(str(tmp_path), ZONES)
    writer.apply([], [("web.a.svc.cluster.local", A, "10.0.0.1"),
                      ("_http._tcp.web.a.svc.cluster.local", SRV, SrvData(0, 100, 80, "web.a.svc.cluster.local"))])
    writer.publish(42, True)
    reader = (
        "import sys\n"
        "from dnsd.zone.lmdb_index import SharedIndex\n"
        "from dnsd.zone.records import A, SRV\n"
        f"r = SharedIndex({str(tmp_path)!r}, {ZONES!r})\n"
        "print(r.read_meta(), r.rrset('web.a.svc.cluster.local', A), r.exists('a.svc.cluster.local'),\n"
        "      r.rrset('_http._tcp.web.a.svc.cluster.local', SRV)[0].port, r.exists('b.svc.cluster.local'))\n"
    )

    def read() -> str:
        return subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip()

    assert read() == "(42, True) ('10.0.0.1',) True 80 False"
    with writer.batch():
        writer.apply([("web.a.svc.cluster.local", A, "10.0.0.1")], [("web.a.svc.cluster.local", A, "10.0.0.2")])
        assert read() == "(42, True) ('10.0.0.1',) True 80 False"  # not committed yet: the old snapshot
    assert read() == "(42, True) ('10.0.0.2',) True 80 False"
    writer.close()


def _mapped_kb(path: str) -> int:
    """Resident kB of this process's mappings of ``path``."""
    kb, ours = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
            ours = line.split()[-1] == path
        elif ours and line.startswith("Rss:"):
            kb += int(line.split()[1])
    return kb


def _cluster(count: int) -> list:
    """Records of ``count`` headless endpoints over 100 Services, in a random order (as a sync brings them)."""
    out = []
    for i in range(count):
        base = f"s{i % 100}.n{i % 7}.svc.cluster.local"
        ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        target = f"{ip.replace('.', '-')}.{base}"
        out += [(base, A, ip), (target, A, ip), (".".join(reversed(ip.split("."))) + ".in-addr.arpa", PTR, target),
                (f"_http._tcp.{base}", SRV, SrvData(0, 1, 80, target))]
    random.Random(3).shuffle(out)
    return out


def test_a_big_batch_is_repacked_and_its_pages_unmapped(tmp_path: Path) -> None:
    """After an initial sync the writer holds none of the file's pages (a read maps them again), and
    the tree is rewritten with full pages; the data and a reader's older snapshot are unchanged."""
    zones = ("cluster.local", *REVERSE_ZONES)
    small = SharedIndexWriter(str(tmp_path / "small"), zones)
    records = _cluster(10_000)
    for i in range(0, len(records), 1000):  # small batches: neither repacked nor unmapped
        small.apply([], records[i : i + 1000])
    assert _mapped_kb(small.data_file) > 2_000

    big = SharedIndexWriter(str(tmp_path / "big"), zones)
    big.apply([], records[:10])
    with big.env.begin() as txn:
        first = list(txn.cursor())
    snapshot = big.env.begin()  # a reader's snapshot from before the big batch
    big.apply([], records[10:])
    assert _mapped_kb(big.data_file) < 200  # the big batch's pages are not this process's any more
    assert sorted(big.records()) == sorted(small.records())  # reading works: the pages come back
    leaf = big.env.stat()["leaf_pages"]
    assert leaf < 0.8 * small.env.stat()["leaf_pages"]  # packed (random inserts leave pages ~2/3 full)
    assert list(snapshot.cursor()) == first  # a snapshot taken before reads what it read then
    snapshot.abort()
    for name in ("s1.n1.svc.cluster.local", "10-0-0-1.s1.n1.svc.cluster.local", "n0.svc.cluster.local",
                 "1.0.0.10.in-addr.arpa", "0.0.10.in-addr.arpa"):
        below, types = big.load(name)
        assert (below, {t: sorted(rrs) for t, rrs in types.items()}) == \
            (small.load(name)[0], {t: sorted(rrs) for t, rrs in small.load(name)[1].items()}), name
        assert big.exists(name), name
    with big.batch():  # still writable after the repack
        big.apply([("s1.n1.svc.cluster.local", A, "10.0.0.1")], [])
    assert "10.0.0.1" not in big.rrset("s1.n1.svc.cluster.local", A)
    small.close()
    big.close()


def test_names_at_the_apex_outside_the_zones_and_too_long(tmp_path: Path) -> None:
    """Every name is its own key, however it relates to the suffixes keys are packed against."""
    zones = ("cluster.local", "svc.cluster.local", "in-addr.arpa", "ip6.arpa")
    names = ["cluster.local", "svc.cluster.local", "a.svc.cluster.local", "svc.a.svc.cluster.local", "in-addr.arpa",
             "10.in-addr.arpa", "example.com", "local", ".cluster.local", "x..svc.cluster.local", "\x01",
             "\x01svc.cluster.local", "\x00.svc.cluster.local", "é.svc.cluster.local", "\udcff.cluster.local",
             "arpa", "ip6.arpa.cluster.local"]
    records = [(name, A, f"10.0.0.{i}") for i, name in enumerate(names)]
    memory, shared = Index(zones), SharedIndexWriter(str(tmp_path), zones)
    memory.apply([], records)
    shared.apply([], records)
    assert sorted(shared.records()) == sorted(memory.records())
    for name in [*names, "", "nope.cluster.local", "svc", "\x00"]:
        assert shared.load(name)[1] == {A: memory.rrset(name, A)} if memory.rrset(name, A) else not shared.has_data(name)
        assert shared.exists(name) == memory.exists(name), name
    too_long = "a" * 600 + ".svc.cluster.local"  # longer than any LMDB key: it simply does not exist
    shared.apply([], [(too_long, A, "10.0.0.1")])
    assert not shared.exists(too_long)
    assert shared.format.key(too_long) is None
    shared.close()


def test_another_process_numbers_the_suffixes_alike(tmp_path: Path) -> None:
    """Keys are packed against a numbered table of suffixes: the worker's must be the writer's, whatever
    its str hash seed (zones of equal length come out of a set in a different order)."""
    zones = ("aa.local", "bb.local", "cc.local", "dd.local", "in-addr.arpa", "ip6.arpa")
    writer = SharedIndexWriter(str(tmp_path), zones)
    names = [f"web.ns.svc.{z}" for z in zones] + list(zones)
    writer.apply([], [(name, A, f"10.0.0.{i}") for i, name in enumerate(names)])
    reader = (
        "from dnsd.zone.lmdb_index import SharedIndex\n"
        "from dnsd.zone.records import A\n"
        f"r = SharedIndex({str(tmp_path)!r}, {tuple(reversed(zones))!r})\n"
        f"print([r.rrset(n, A) for n in {names!r}], sorted(n for n, _, _ in r.records()))\n"
    )
    expected = f"{[(f'10.0.0.{i}',) for i in range(len(names))]} {sorted(names)}"
    for seed in ("1", "2", "3", "4"):
        out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == expected, seed
    writer.close()


def _random_rdata(rng: random.Random, rtype: int, name: str) -> object:
    """Rdata of ``rtype`` as the index holds it, often shaped like what the file stores in short."""
    pool = [name, name.partition(".")[2], "web.a.svc.cluster.local", "cluster.local", "svc.cluster.local",
            "example.com", "", ".", "a..b", "\x01x", "\x00", "ns.dns.cluster.local",
            # what 1.0.0.10.in-addr.arpa's PTR to a pod begins with (stored without it), and near misses
            "10-0-0-1.web.a.svc.cluster.local", "10-0-0-1.", "10-0-0-1", "10-0-0-1.svc.cluster.local",
            "10-0-0-1.x.example.com", "10-0-0-10.web.a.svc.cluster.local", "1-0-0-10.web.a.svc.cluster.local",
            "10-0-0.web.a.svc.cluster.local", "10-0-0-1-1.web.a.svc.cluster.local"]
    if rtype == SRV:
        if len(name) % 2:  # one name's rrset holds groups or SrvData, never both
            return SrvData(rng.choice((0, 1, 70000)), rng.randrange(101), rng.choice((53, 80, 65535)), rng.choice(pool))
        base = rng.choice((name.split(".", 2)[-1], name, "elsewhere.b.svc.cluster.local", "", "svc.cluster.local"))
        labels = rng.sample(["10-0-0-1", "10-0-0-2", "web-0", "", "x.y"], rng.randrange(5))
        targets = [f"{label}.{base}" if rng.random() < 0.9 else rng.choice(pool) for label in labels]
        return SrvGroup(0, rng.randrange(1, 101), rng.choice((80, 9090)), tuple(targets))
    if rtype == SOA:
        return SoaData("ns.dns.cluster.local", "hostmaster.cluster.local", rng.randrange(2**32), 7200, 1800, 86400, 30)
    if rtype in (A, AAAA):
        label = name.partition(".")[0]
        return rng.choice((label.replace("-", "."), label.replace("-", ":"), "10.0.0.1", "fd00::1", "", "\x01"))
    if rtype == EXISTS:
        return ""
    return rng.choice(pool)


def test_every_kind_of_rdata_reads_back_as_written(tmp_path: Path) -> None:
    """The file stores rdata in short (names relative to zones or to their owner, SRV groups' targets
    without their common suffix): what a reader gets back is exactly what was written, classes included."""
    rng = random.Random(5)
    zones = ("cluster.local", *REVERSE_ZONES)
    names = ["cluster.local", "svc.cluster.local", "a.svc.cluster.local", "web.a.svc.cluster.local",
             "_http._tcp.web.a.svc.cluster.local", "_tcp.web.a.svc.cluster.local", "10-0-0-1.web.a.svc.cluster.local",
             "web-0.web.a.svc.cluster.local", "1.0.0.10.in-addr.arpa", "in-addr.arpa", "example.com", "x",
             "0.0.10.in-addr.arpa", "1.1.0.0.10.in-addr.arpa",
             "1.0.0.0.ip6.arpa", "fd00--1.web.a.svc.cluster.local"]
    memory, shared = Index(zones), SharedIndexWriter(str(tmp_path), zones)
    owners: dict[int, set] = {}
    for step in range(1500):
        owner = rng.randrange(8)
        new = set()
        for _ in range(rng.randrange(6)):
            name, rtype = rng.choice(names), rng.choice((A, AAAA, PTR, CNAME, NS, TXT, SOA, SRV, SRV, EXISTS))
            new.add((name, rtype, _random_rdata(rng, rtype, name)))
        new = {r for r in new if not any(r[0] == o[0] and r[1] == o[1] and r[2] == o[2] for k, v in owners.items()
                                         if k != owner for o in v)}  # owners never share a record
        old = owners.get(owner, set())
        with shared.batch():  # read inside the batch too: the names it changed are not in the file yet
            assert shared.apply(old, new) <= memory.apply(old, new)
            for name in names if step % 10 == 0 else ():
                assert (shared.exists(name), shared.has_data(name), shared.has_children(name)) == \
                    (memory.exists(name), memory.has_data(name), memory.has_children(name)), name
                assert all(shared.rrset(name, t) == memory.rrset(name, t) for t in (A, PTR, SRV, SOA, EXISTS)), name
        owners[owner] = new
        if step % 50 == 0 or step > 1490:
            for name in names:
                assert shared.has_children(name) == memory.has_children(name), name
                below, types = shared.load(name)
                assert below == memory._below.get(name, 0), name
                for rtype in (A, AAAA, PTR, CNAME, NS, TXT, SOA, EXISTS):
                    assert types.get(rtype, ()) == memory.rrset(name, rtype), (name, rtype)
                held = memory.srv_held(name)  # unexpanded: groups as groups
                assert types.get(SRV, ()) == held and [*map(type, types.get(SRV, ()))] == [*map(type, held)], name
                assert shared.rrset(name, SRV) == memory.rrset(name, SRV), name
                assert shared.exists(name) == memory.exists(name), name
    assert sorted(shared.records()) == sorted(memory.records())
    shared.close()


def test_the_format_reads_back_the_shapes_it_shortens() -> None:
    """Format alone, on the values it stores in short and on their near misses (rdata the index never
    holds from Kubernetes, but may from elsewhere, must still read back as written)."""
    fmt = Format(("cluster.local", *REVERSE_ZONES))
    pod, ptr = "10-0-0-1.web.a.svc.cluster.local", "1.0.0.10.in-addr.arpa"
    group = SrvGroup(0, 50, 80, ("10-0-0-1.web.a.svc.cluster.local", "web-0.web.a.svc.cluster.local"))
    cases = [
        (pod, 0, {A: ("10.0.0.1",)}), (pod, 0, {A: ("10.0.0.2",)}), (pod, 0, {A: ("",)}), (pod, 0, {A: (0,)}),
        (pod, 0, {A: (b"",)}), (pod, 0, {A: ("\x01",)}), (pod, 0, {A: (("10.0.0.1",),)}), (pod, 2, {A: ("10.0.0.1",)}),
        ("fd00--1.web.a.svc.cluster.local", 0, {AAAA: ("fd00::1",)}), (pod, 0, {A: ("10.0.0.1", "")}),
        (ptr, 0, {PTR: (pod,)}), (ptr, 0, {PTR: ("10-0-0-1.",)}), (ptr, 0, {PTR: ("10-0-0-1.example.com", pod)}),
        (ptr, 3, {PTR: (pod,)}), ("web.a.svc.cluster.local", 1, {A: ("10.0.0.1",), SRV: (group, group._replace(port=81))}),
        ("_http._tcp.web.a.svc.cluster.local", 0, {SRV: (SrvData(0, 100, 80, "web.a.svc.cluster.local"),)}),
        ("_http._tcp.web.a.svc.cluster.local", 0, {SRV: (SrvData(1 << 16, 100, 80, "web.a.svc.cluster.local"),)}),
        ("web.a.svc.cluster.local", 0, {SRV: (group._replace(targets=()),)}), ("a.svc.cluster.local", 4, {}),
        ("cluster.local", 0, {SOA: (SoaData("ns.dns.cluster.local", "h.cluster.local", 1, 2, 3, 4, 5),),
                              NS: ("ns.dns.cluster.local",)}),
        ("svc.cluster.local", 0, {EXISTS: ("",)}), ("x.example.com", 0, {CNAME: ("y.example.com",), TXT: ("t",)}),
    ]
    for name, below, types in cases:
        data = marshal.loads(fmt.encode(name, below, types))
        assert fmt.decode(name, data) == (below, types), (name, types)
        assert [*map(type, fmt.decode(name, data)[1].get(SRV, ()))] == [*map(type, types.get(SRV, ()))]
        for rtype in (A, AAAA, PTR, SRV, SOA, NS, CNAME, TXT, EXISTS):
            assert fmt.rrset(name, rtype, data) == types.get(rtype, ()), (name, rtype)
    assert len(fmt.encode(ptr, 0, {PTR: (pod,)})) < 20  # "web.a" and two codes, not the whole name
    assert len(fmt.encode(pod, 0, {A: ("10.0.0.1",)})) < 5
