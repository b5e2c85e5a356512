"""Fixtures for every test: the real dnsd on a loopback port, the fake Kubernetes API. Tests under
unit/ are marked ``unit`` (in-process, fast), those under e2e/ ``e2e`` (real processes and peers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.kube_api import FakeKubeAPI
from tests.helpers import Dnsd


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    """A fake Kubernetes API server on loopback, with quick bookmarks (read timeouts in tests exceed them)."""
    with FakeKubeAPI(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKubeAPI, tmp_path: Path) -> str:
    return str(api.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture(scope="session")
def zones_server() -> Iterator[Dnsd]:
    """dnsd on the bundled example cluster, shared by read-only tests."""
    server = Dnsd().wait_listening()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    return d


@pytest.fixture
def start_dnsd() -> Iterator:
    started: list[Dnsd] = []

    def start(*args: str, **kwargs: Any) -> Dnsd:
        server = Dnsd(*args, **kwargs)
        started.append(server)
        return server.wait_listening()

    yield start
    for server in started:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.parent.name
        if kind in ("unit", "e2e"):
            item.add_marker(kind)
