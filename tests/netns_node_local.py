"""Run inside a fresh network namespace (``unshare -rn python3 -m tests.netns_node_local``) by
tests/e2e/test_node_local_netns.py: the node-local DaemonSet's setup script as its init container
runs it, then a cluster DNS and a node cache answering on the addresses the script added.
Prints what failed and exits non-zero; touches nothing outside the namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dns.message
import dns.query

from tests.unit.test_deploy_node_local import setup_script

ADDRESSES = ("169.254.20.10", "10.96.0.10")  # the link-local address, and a kube-dns IP intercepted
WEB = "web.default.svc.cluster.local"


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def setup() -> None:
    env = {**os.environ, "DNSD_ADDRESS": ",".join(ADDRESSES), "DNSD_PORT": "53"}
    subprocess.run(["/bin/sh", "-c", setup_script()], env=env, check=True)


def rules() -> list[str]:
    return [r for table in ("raw", "filter") for r in sh("iptables", "-w", "-t", table, "-S").splitlines()
            if r.startswith("-A")]


def serve(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dnsd", "serve", "--workers", "1", "--http-address", "",
                             "--upstream", "none", *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def ask(address: str, tcp: bool) -> list[str]:
    q = dns.message.make_query(WEB, "A")
    reply = (dns.query.tcp if tcp else dns.query.udp)(q, address, port=53, timeout=1)
    return [str(r) for rrset in reply.answer for r in rrset]


def main() -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    setup()
    first = rules()
    setup()  # a new pod's init container on a node that has it all already
    assert rules() == first, "the setup script is idempotent"
    for address in ADDRESSES:
        assert f"inet {address}/32" in sh("ip", "-o", "addr"), address
        for proto in ("udp", "tcp"):
            for rule in (f"-A PREROUTING -d {address}/32 -p {proto} -m {proto} --dport 53 -j NOTRACK",
                         f"-A OUTPUT -s {address}/32 -p {proto} -m {proto} --sport 53 -j NOTRACK"):
                assert rule in first, (rule, first)
    with open("/proc/sys/net/ipv4/tcp_migrate_req") as f:
        assert f.read().strip() == "1"
    cluster = serve("--address", "127.0.0.1", "--port", "5300")  # the example cluster in zones/
    node = serve(*(a for address in ADDRESSES for a in ("--address", address)), "--port", "53",
                 "--cluster-dns", "127.0.0.1:5300")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                for address in ADDRESSES:
                    for tcp in (False, True):
                        assert ask(address, tcp) == ["10.96.0.10"], (address, tcp)
                break
            except (OSError, dns.exception.Timeout):
                if time.monotonic() > deadline or node.poll() is not None or cluster.poll() is not None:
                    raise
                time.sleep(0.1)
    finally:
        for proc in (node, cluster):
            proc.terminate()
            proc.wait(15)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
