"""dnsd's pytest plugin, loaded by pytest through the ``pytest11`` entry point once dnsd is installed.

- Fixture ``dnsd_server``: a :class:`~dnsd.testing.DnsServer` holding an empty cluster at the start
  of each test, plus what the ``dnsd_manifests`` ini option and markers name. One dnsd process is kept
  for the session (started on first use, again if a test killed it) and reset before each test: every
  object removed, then the preloaded ones applied, served before the test runs.
- Marker ``@pytest.mark.dnsd_manifests(*sources)``: what the test's cluster holds, each source as
  ``DnsServer.apply`` takes (a path relative to the test file, YAML text, a dict, a list of dicts).
  Marks on the module and class apply first, then the test's own.
- Marker ``@pytest.mark.dnsd_options(**options)``: the test gets a dnsd of its own, started with these
  ``DnsServer`` arguments (``domain=``, ``upstream=``, ``workers=2``, ``autopath=True``...), stopped after it.
- Ini option ``dnsd_manifests``: paths (relative to the ini file) every test's cluster holds first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported when a test asks for dnsd_server, not when pytest loads the plugin
    from dnsd.testing.server import DnsServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("dnsd_manifests", type="paths", default=[],
                  help="dnsd: manifest files or directories the dnsd_server fixture holds at the start of every test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dnsd_manifests(*sources): objects the dnsd_server fixture holds at the start of the test "
        "(paths relative to the test file, YAML text, dicts, lists of dicts)")
    config.addinivalue_line(
        "markers", "dnsd_options(**options): the test's dnsd_server is a dnsd of its own, started with these "
        "DnsServer arguments (domain=, upstream=, workers=2, autopath=True, ...)")


class _Warm:
    """The session's dnsd with DnsServer's defaults: started on first use, and again if it died."""

    def __init__(self) -> None:
        self.server: DnsServer | None = None

    def reset(self, sources: list[Any]) -> DnsServer:
        """The server, holding only ``sources``; a new one if a test killed it (even as this runs)."""
        for _ in range(2):
            if self.server is not None and not self.server.running:
                self.server.stop()  # its files
                self.server = None
            if self.server is None:
                from dnsd.testing.server import DnsServer

                self.server = DnsServer().start()
            try:
                self.server.reset(*sources)
                return self.server
            except RuntimeError:
                if self.server.running:
                    raise
        raise RuntimeError("dnsd_server: the session's dnsd died twice in a row")

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def _dnsd_warm() -> Iterator[_Warm]:
    warm = _Warm()
    yield warm
    warm.close()


@pytest.fixture
def dnsd_server(request: pytest.FixtureRequest, _dnsd_warm: _Warm) -> Iterator[DnsServer]:
    """A running DnsServer whose cluster holds only what ``dnsd_manifests`` (ini option, then markers) names."""
    sources = [*request.config.getini("dnsd_manifests"), *_marked_sources(request)]
    options = request.node.get_closest_marker("dnsd_options")
    if options is None:
        yield _dnsd_warm.reset(sources)
        return
    from dnsd.testing.server import DnsServer

    with DnsServer(**options.kwargs) as own:
        own.reset(*sources)
        yield own


def _marked_sources(request: pytest.FixtureRequest) -> list[Any]:
    """The ``dnsd_manifests`` markers' sources, the farthest mark first; relative paths from the test file."""
    from dnsd.testing.objects import as_path

    here = Path(request.path).parent
    sources: list[Any] = []
    for mark in reversed(list(request.node.iter_markers("dnsd_manifests"))):
        for source in mark.args:
            path = as_path(source)
            sources.append(here / path if path is not None and not path.is_absolute() else source)
    return sources
