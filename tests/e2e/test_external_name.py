"""ExternalName Services whose target is in the cluster, on the real server: the alias and the target's
records in one reply (UDP and TCP, one process and workers), following changes of the target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
