"""Ports of Services and slices, converted once per distinct list and shared: every Service and
slice carries one, and a cluster has few distinct ones."""

from __future__ import annotations

import json
import re
import sys
from typing import Any, NamedTuple, TypeVar

_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Port(NamedTuple):
    name: str  # "" when unnamed: such ports get no SRV record
    port: int
    protocol: str  # "tcp" | "udp" | "sctp"


_T = TypeVar("_T", Port, tuple[Port, ...])
_SHARED_MAX = 4096  # a cluster with more distinct ports shares less: the table must not grow forever
_shared_ports: dict[Port, Port] = {}
_shared_port_lists: dict[tuple[Port, ...], tuple[Port, ...]] = {}


def _share(value: _T, table: dict[_T, _T]) -> _T:
    """One object for equal values: a cluster has a few ports and port lists, repeated in every
    Service and slice. Records are immutable: sharing is safe."""
    shared = table.setdefault(value, value)
    if len(table) > _SHARED_MAX:
        table.clear()
    return shared


def _port(raw: Any, where: str, *, allow_null: bool = False) -> Port | None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a port must be a mapping")
    number = raw.get("port")
    if number is None and allow_null:
        return None  # EndpointSlice: a null port means "all ports"; nothing to publish
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        raise ValueError(f"{where}: port {number!r} out of range 1-65535")
    proto = raw.get("protocol") or "TCP"
    if proto.__class__ is not str or proto not in _PROTOCOLS:  # a list or a mapping is no key to look up
        raise ValueError(f"{where}: protocol {proto!r} is not TCP, UDP or SCTP")
    name = raw.get("name") or ""
    if name and (not isinstance(name, str) or not _PORT_NAME.match(name)):
        raise ValueError(f"{where}: port name {name!r} is not a valid DNS label")
    return _share(Port(sys.intern(name), number, _PROTOCOLS[proto]), _shared_ports)


# Port lists already converted, by the raw fields _port reads (with the number's class: True is not 1):
# every Service and slice carries one, and a cluster has few distinct ones.
_converted_ports: dict[tuple[Any, ...], tuple[Port, ...]] = {}


def convert_ports(raws: Any, where: str, *, allow_null: bool = False) -> tuple[Port, ...]:
    if raws is None:
        return ()
    if not isinstance(raws, list):
        raise ValueError(f"{where}: ports must be a list")
    key: tuple[Any, ...] | None = None
    if all(p.__class__ is dict for p in raws):
        key = (allow_null, *[(p.get("name"), p.get("port").__class__, p.get("port"), p.get("protocol")) for p in raws])
        try:
            known = _converted_ports.get(key)
        except TypeError:  # unhashable values: converted (and refused) below
            key = known = None
        if known is not None:
            return known
    ports = (_port(p, f"{where}[{i}]", allow_null=allow_null) for i, p in enumerate(raws))
    converted = _share(tuple(p for p in ports if p is not None), _shared_port_lists)
    if key is not None:
        if len(_converted_ports) > _SHARED_MAX:
            _converted_ports.clear()
        _converted_ports[key] = converted
    return converted


_converted_texts: dict[bytes, tuple[Port, ...]] = {}  # port lists already converted, by their JSON text


def convert_ports_json(text: bytes, where: str, *, allow_null: bool = False) -> tuple[Port, ...]:
    """``convert_ports`` of a port list given as its JSON text (what a typed decoder kept of it): the text
    is the key, so a list seen before costs one lookup, not its fields read again."""
    known = _converted_texts.get(text)
    if known is None:
        known = convert_ports(json.loads(text), where, allow_null=allow_null)
        if len(_converted_texts) > _SHARED_MAX:
            _converted_texts.clear()
        _converted_texts[text] = known
    return known


__all__ = ["Port", "convert_ports", "convert_ports_json"]
