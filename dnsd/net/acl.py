"""``--allow-from``: which client addresses may ask."""

from __future__ import annotations

import ipaddress


class Allowed:
    """``--allow-from``: which client addresses may ask (a small cache of decisions per address)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n) for n in networks]
        self._seen: dict[str, bool] = {}

    def __call__(self, host: str) -> bool:
        ok = self._seen.get(host)
        if ok is None:
            address = ipaddress.ip_address(host.split("%", 1)[0])
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            ok = any(address in n for n in self.networks)
            if len(self._seen) > 65536:
                self._seen.clear()
            self._seen[host] = ok
        return ok


__all__ = ["Allowed"]
