"""The JSON of ``/debug/top`` as typed values: per window, the heavy hitters of each table.

Schema (``GET /debug/top?limit=N``)::

    {"generated": unix time, "capacity": counters per sketch, "workers": N,
     "windows": {"1m": {"seconds": 60, "queries": N,
                        "clients": [{"key": "10.0.0.7", "count": 5123, "error": 12}, ...],
                        "names": [...], "nxdomain": [...], "forwarded": [...]},
                 "15m": {...}}}

A count is an over-estimate: the true count lies in [count - error, count].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TABLES = ("clients", "names", "nxdomain", "forwarded")


@dataclass(frozen=True)
class Entry:
    key: str
    count: int
    error: int

    @property
    def lower(self) -> int:
        """The least the true count can be."""
        return max(0, self.count - self.error)


@dataclass(frozen=True)
class Window:
    seconds: float
    queries: int
    tables: dict[str, tuple[Entry, ...]]

    @property
    def qps(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Talkers:
    generated: float
    capacity: int
    workers: int
    windows: dict[str, Window]


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}{key}: expected a number, got {value!r}")
    return float(value)


def _entries(raw: Any, where: str) -> tuple[Entry, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise ValueError(f"{where}[{i}]: expected {{key, count, error}}")
        out.append(Entry(item["key"], int(_number(item, "count", f"{where}[{i}].")),
                         int(_number(item, "error", f"{where}[{i}].")) if "error" in item else 0))
    # The server sorts them; sorting again keeps the screen right whatever a version sends.
    return tuple(sorted(out, key=lambda e: -e.count))


def parse(body: str | bytes) -> Talkers:
    """ValueError naming the first field that does not fit the schema."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("windows"), dict):
        raise ValueError("expected an object with 'windows'")
    windows = {}
    for name, raw in data["windows"].items():
        if not isinstance(raw, dict):
            raise ValueError(f"windows.{name}: expected an object")
        where = f"windows.{name}."
        tables = {t: _entries(raw[t], where + t) if t in raw else () for t in TABLES}
        windows[str(name)] = Window(_number(raw, "seconds", where), int(_number(raw, "queries", where)), tables)
    return Talkers(_number(data, "generated", ""), int(_number(data, "capacity", "")),
                   int(_number(data, "workers", "")), windows)
