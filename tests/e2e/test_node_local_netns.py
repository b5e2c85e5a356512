"""The node-local DaemonSet's setup (deploy/node-local/daemonset.yaml, the init container's script) in a
network namespace of our own: the addresses on the node, the NOTRACK rules, tcp_migrate_req, and a node
cache answering on the link-local address and on an intercepted kube-dns IP."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.skipif(not all(shutil.which(t) for t in ("unshare", "ip", "iptables")),
                    reason="needs unshare, ip and iptables (.ci/run installs iptables)")
def test_setup_script_and_node_cache_in_a_network_namespace() -> None:
    result = subprocess.run(["unshare", "-rn", sys.executable, "-m", "tests.netns_node_local"], cwd=ROOT,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
