"""loadbalance: every reply rotates its A/AAAA records, for cluster names and forwarded ones, on the real
server over UDP and TCP; --no-loadbalance keeps one order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.helpers import Dnsd, rcode

PODS = [f"10.244.{i}.{i + 10}" for i in range(1, 6)]
V6 = [f"fd00:244::{i}" for i in range(1, 4)]
NAME = "web.lb.svc.cluster.local"


def _headless(directory: Path) -> Path:
    endpoints = "\n".join(f"  - addresses: [\"{ip}\"]" for ip in PODS)
    endpoints6 = "\n".join(f"  - addresses: [\"{ip}\"]" for ip in V6)
    (directory / "lb.yaml").write_text(f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: lb}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: lb}}
spec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-4, namespace: lb, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 80}}]
endpoints:
{endpoints}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-6, namespace: lb, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: http, port: 80}}]
endpoints:
{endpoints6}
""")
    return directory


def addresses(server: Dnsd, name: str, rdtype: str = "A", **kwargs: object) -> list[str]:
    msg = server.query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    assert rcode(msg) == "NOERROR"
    return [rd.address for rrset in msg.answer for rd in rrset if rrset.rdtype in (1, 28)]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.mark.parametrize(("tcp", "edns"), [(False, False), (False, True), (True, False)], ids=["udp", "udp-edns", "tcp"])
def test_every_address_comes_first_and_every_answer_is_complete(start_dnsd: Callable[..., Dnsd], manifest_dir: Path,
                                                                 tcp: bool, edns: bool) -> None:
    server = start_dnsd("--manifests", str(_headless(manifest_dir)))
    for rdtype, expected in (("A", PODS), ("AAAA", V6)):
        firsts = set()
        for _ in range(80):  # dnspython's IDs are random: the odds of missing one of 5 firsts are ~1e-7
            got = addresses(server, NAME, rdtype, tcp=tcp, use_edns=0 if edns else False)
            assert sorted(got) == sorted(expected)  # rotated, never cut or duplicated
            firsts.add(got[0])
        assert firsts == set(expected)


def test_rotation_reaches_the_records_after_a_cname(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    """The server-side search path answers a CNAME to the name found, then its records: those rotate.
    A pod in namespace default asks for web.lb: its first query is web.lb.default.svc.cluster.local."""
    server = start_dnsd("--manifests", str(_headless(manifest_dir)), "--autopath", "--autopath-search", "example.org")
    firsts = set()
    for _ in range(80):
        got = addresses(server, "web.lb.default.svc.cluster.local")
        firsts.add(got[0])
    assert firsts == set(PODS)


def test_no_loadbalance_keeps_one_order(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    server = start_dnsd("--manifests", str(_headless(manifest_dir)), "--no-loadbalance")
    orders = {tuple(addresses(server, NAME, tcp=tcp)) for tcp in (False, True) for _ in range(20)}
    assert len(orders) == 1 and sorted(next(iter(orders))) == sorted(PODS)


def test_forwarded_answers_rotate_too(start_dnsd: Callable[..., Dnsd], upstream: FakeUpstream) -> None:
    upstream.mode = "big"  # 100 A records: whole over TCP (UDP would be cut)
    server = start_dnsd("--upstream", upstream.server)
    complete = sorted(addresses(server, "many.example.com", tcp=True))
    asked = upstream.count("many.example.com")  # by UDP (truncated), then by TCP
    firsts = set()
    for _ in range(40):
        got = addresses(server, "many.example.com", tcp=True)
        assert sorted(got) == complete and len(got) == 100
        firsts.add(got[0])
    assert len(firsts) > 10  # 40 random rotations of 100 addresses: ~33 distinct firsts expected
    assert upstream.count("many.example.com") == asked  # from the cache: the rotation is dnsd's own


def test_workers_rotate_too(start_dnsd: Callable[..., Dnsd], manifest_dir: Path) -> None:
    """Over TCP (not steered: each new connection goes to either process) the worker answers about half.
    Were it not rotating, one address would come first in over half the replies instead of a fifth."""
    server = start_dnsd("--manifests", str(_headless(manifest_dir)), workers=2)
    firsts = Counter(addresses(server, NAME, tcp=True)[0] for _ in range(100))
    assert set(firsts) == set(PODS) and max(firsts.values()) < 45, firsts
