"""deploy/node-local/: the node cache's DaemonSet and ConfigMap, checked offline as deploy/ is
(tests/unit/test_deploy.py: every document against the Kubernetes schema), then its rollout
settings and its settings against dnsd's own command line. The setup script itself runs in a
network namespace in tests/e2e/test_node_local_netns.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy import validate

NODE_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "node-local"
NAME = "dnsd-node-local"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(NODE_LOCAL.glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            docs += [(f"{path.name}#{i}", d) for i, d in enumerate(yaml.safe_load_all(fh)) if d]
    return docs


DOCUMENTS = _documents()


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in DOCUMENTS if d["kind"] == kind]
    return doc


def _pod() -> dict[str, Any]:
    return _one("DaemonSet")["spec"]["template"]["spec"]


def _container() -> dict[str, Any]:
    (container,) = _pod()["containers"]
    return container


def setup_script() -> str:
    """The init container's shell script (run by the netns test)."""
    (init,) = _pod()["initContainers"]
    command = init["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    return str(command[2])


@pytest.mark.parametrize(("source", "doc"), DOCUMENTS, ids=[s for s, _ in DOCUMENTS])
def test_document_matches_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["metadata"]["name"] == NAME
    assert doc["metadata"]["namespace"] == "kube-system"
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == NAME


def test_kinds() -> None:
    assert sorted(d["kind"] for _, d in DOCUMENTS) == ["ConfigMap", "DaemonSet"]


def test_rollout_surges_beside_the_old_pod() -> None:
    """maxSurge: the new pod binds the shared port (SO_REUSEPORT) before the old one stops; that needs
    no declared ports (hostPorts would keep the surge pod off the node) and no readiness probe (on
    a shared port it could reach the other pod), so minReadySeconds stands in."""
    spec = _one("DaemonSet")["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["minReadySeconds"] >= 10
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = _pod()
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["enableServiceLinks"] is False  # else a Service "dnsd" sets DNSD_PORT=udp://...
    assert pod["priorityClassName"] == "system-node-critical"
    for container in [*pod["containers"], *pod["initContainers"]]:
        assert "ports" not in container
        assert "readinessProbe" not in container


def _config(monkeypatch: pytest.MonkeyPatch) -> Any:
    from dnsd.cli import build_parser, config_from_args

    for key in [k for k in __import__("os").environ if k.startswith("DNSD_")]:
        monkeypatch.delenv(key)
    for key, value in _one("ConfigMap")["data"].items():
        monkeypatch.setenv(key, value)
    assert {"configMapRef": {"name": NAME}} in _container()["envFrom"]
    return config_from_args(build_parser().parse_args(_container()["args"]))


def test_settings_parse_with_dnsd_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(monkeypatch)
    assert config.addresses == ("169.254.20.10",) and config.port == 53
    assert config.cluster_dns and all(u.tcp for u in config.cluster_dns)
    assert {s.zone for s in config.stub_domains} >= {"cluster.local", "in-addr.arpa", "ip6.arpa"}
    assert config.sources() == ((), False), "a node cache watches no API"
    assert config.lameduck == 5
    assert config.upstreams  # the node's resolv.conf
    pod = _pod()
    assert pod["terminationGracePeriodSeconds"] >= config.lameduck + config.tcp_idle_timeout + config.forward_timeout
    probe = _container()["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/health", config.http_endpoint[1])


def test_security_context() -> None:
    sc = _container()["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}  # port 53, nothing else
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert not sc.get("privileged")
    (init,) = _pod()["initContainers"]
    assert init["securityContext"] == {"privileged": True}  # ip, iptables, a sysctl: once, before dnsd starts
    assert {"configMapRef": {"name": NAME}} in init["envFrom"]


def test_setup_script_names_what_it_needs() -> None:
    script = setup_script()
    for needed in ("$DNSD_ADDRESS", "$DNSD_PORT", "NOTRACK", "tcp_migrate_req", "nodelocaldns"):
        assert needed in script
