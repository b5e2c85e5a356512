"""dnsd for integration tests: a real dnsd on a free loopback port, changed from the test, and the
code under test resolving through it. ``docs/testing.md`` has a worked suite.

    from dnsd.testing import DnsServer

    with DnsServer({"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                    "spec": {"clusterIP": "127.0.0.1"}}) as srv:
        srv.resolver("shop").resolve("web", "A")
        with srv.patch_getaddrinfo("shop"):
            urllib.request.urlopen("http://web:8080/")

The pytest plugin (``dnsd.testing.plugin``, loaded by pytest once dnsd is installed) gives the
``dnsd_server`` fixture and the ``dnsd_manifests`` and ``dnsd_options`` markers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dnsd.testing.server import DnsServer


def __getattr__(name: str) -> Any:
    """``DnsServer``, imported on first use: pytest imports this package with the plugin in every run."""
    if name == "DnsServer":
        from dnsd.testing.server import DnsServer

        return DnsServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DnsServer"]
