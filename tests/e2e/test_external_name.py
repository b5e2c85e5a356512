"""ExternalName Services on the real server: the alias and the target's records in one reply, from the
index for a cluster name (UDP and TCP, one process and workers, following changes of the target) and
through the forwarder for a name elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, answers, rcode, wait_for

Z = "cluster.local"
CLUSTER = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{type: ExternalName, externalName: web.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: ext, namespace: shop}}
spec: {{type: ExternalName, externalName: www.example.test}}
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_alias_answers_with_the_target_and_follows_its_changes(start_dnsd: Callable[..., Dnsd], manifest_dir: Path,
                                                               workers: int) -> None:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    server = start_dnsd("--manifests", str(manifest_dir), workers=workers)
    for tcp in (False, True):
        msg = server.query(f"db.shop.svc.{Z}", tcp=tcp)
        assert rcode(msg) == "NOERROR" and msg.flags & 0x400  # AA: all of it is ours
        assert answers(msg) == [f"db.shop.svc.{Z}. CNAME web.shop.svc.{Z}.", f"web.shop.svc.{Z}. A 10.96.0.10"]
    (manifest_dir / "cluster.yaml").write_text(CLUSTER.replace("10.96.0.10", "10.96.0.11"))
    wait_for(lambda: f"web.shop.svc.{Z}. A 10.96.0.11" in answers(server.query(f"db.shop.svc.{Z}")), timeout=5)
    (manifest_dir / "cluster.yaml").write_text(CLUSTER.replace("name: web,", "name: gone,"))
    missing = wait_for(lambda: (m := server.query(f"db.shop.svc.{Z}")).rcode() == 3 and m, timeout=5)
    assert answers(missing) == [f"db.shop.svc.{Z}. CNAME web.shop.svc.{Z}."] and missing.authority  # RFC 6604


def test_target_outside_the_zones_without_upstream_is_the_cname_alone(start_dnsd: Callable[..., Dnsd],
                                                                       manifest_dir: Path) -> None:
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    server = start_dnsd("--manifests", str(manifest_dir))
    assert answers(server.query(f"ext.shop.svc.{Z}")) == [f"ext.shop.svc.{Z}. CNAME www.example.test."]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server.mode = "nxdomain"
        server.modes["www.example.test"] = "answer"
        yield server


CHAIN = CLUSTER + f"""
---
apiVersion: v1
kind: Service
metadata: {{name: via, namespace: shop}}
spec: {{type: ExternalName, externalName: ext.shop.svc.{Z}}}
---
apiVersion: v1
kind: Service
metadata: {{name: gone, namespace: shop}}
spec: {{type: ExternalName, externalName: nowhere.example.test}}
"""


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_target_outside_the_zones_is_asked_upstream(start_dnsd: Callable[..., Dnsd], manifest_dir: Path,
                                                    upstream: FakeUpstream, tcp: bool) -> None:
    (manifest_dir / "cluster.yaml").write_text(CHAIN)
    server = start_dnsd("--manifests", str(manifest_dir), "--upstream", upstream.server)
    for _ in range(3):  # the first walks, the others are answered from the forward cache
        msg = server.query(f"ext.shop.svc.{Z}", tcp=tcp)
        assert rcode(msg) == "NOERROR"
        assert answers(msg) == [f"ext.shop.svc.{Z}. CNAME www.example.test.", "www.example.test. A 192.0.2.1"]
    assert upstream.count("www.example.test") == 1
    chained = server.query(f"via.shop.svc.{Z}", tcp=tcp)
    assert answers(chained) == [f"ext.shop.svc.{Z}. CNAME www.example.test.", f"via.shop.svc.{Z}. CNAME ext.shop.svc.{Z}.",
                                "www.example.test. A 192.0.2.1"]
    assert max(rrset.ttl for rrset in chained.answer) <= 5  # no record outlives our own TTL's chain
    missing = server.query(f"gone.shop.svc.{Z}", tcp=tcp)
    assert rcode(missing) == "NXDOMAIN" and answers(missing) == [f"gone.shop.svc.{Z}. CNAME nowhere.example.test."]


def test_a_failing_upstream_leaves_the_cname_alone(start_dnsd: Callable[..., Dnsd], manifest_dir: Path,
                                                   upstream: FakeUpstream) -> None:
    upstream.modes["www.example.test"] = "servfail"
    (manifest_dir / "cluster.yaml").write_text(CLUSTER)
    server = start_dnsd("--manifests", str(manifest_dir), "--upstream", upstream.server)
    msg = server.query(f"ext.shop.svc.{Z}")
    assert rcode(msg) == "NOERROR" and answers(msg) == [f"ext.shop.svc.{Z}. CNAME www.example.test."]


def test_an_autopath_search_ending_at_an_alias_is_chased_too(start_dnsd: Callable[..., Dnsd], manifest_dir: Path,
                                                             upstream: FakeUpstream) -> None:
    """A pod in namespace default asks for ext.shop: its first query is ext.shop.default.svc.cluster.local."""
    (manifest_dir / "cluster.yaml").write_text(CLUSTER + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
    server = start_dnsd("--manifests", str(manifest_dir), "--upstream", upstream.server, "--autopath",
                        "--autopath-search", "example.org")
    msg = server.query(f"ext.shop.default.svc.{Z}")
    assert rcode(msg) == "NOERROR"
    assert answers(msg) == [f"ext.shop.default.svc.{Z}. CNAME ext.shop.svc.{Z}.", f"ext.shop.svc.{Z}. CNAME www.example.test.",
                            "www.example.test. A 192.0.2.1"]
