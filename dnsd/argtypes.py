"""Values of command-line flags: each converter returns the value or raises ArgumentTypeError with
a readable reason, so argparse exits 2 naming the flag (and cli.py names the DNSD_* variable)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from typing import Any


def whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def ttl(value: str) -> int:
    ttl = whole(value)
    if not 0 <= ttl <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600")
    return ttl


def port(value: str) -> int:
    port = whole(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return port


def address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None


def non_negative(value: str) -> int:
    number = whole(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def positive(value: str) -> int:
    number = whole(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return number


def duration(value: str) -> float:
    """Seconds, 0 included (0: none), at most an hour."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= number <= 3600:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{value!r}: must be 0-3600 seconds")
    return number


def payload(value: str) -> int:
    size = whole(value)
    if not 512 <= size <= 4096:
        raise argparse.ArgumentTypeError("must be between 512 and 4096")
    return size


UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def bytes(value: str) -> int:
    """A size in bytes, with an optional K, M or G suffix (powers of 1024)."""
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    unit = text[-1:] if text[-1:] in "kmg" else ""
    try:
        size = int(float(text[: len(text) - len(unit)]) * UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (e.g. 32M)") from None
    if size < 1 << 20:
        raise argparse.ArgumentTypeError("must be at least 1M")
    return size


def domain(value: str) -> str:
    name = value.strip().strip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or any(not 0 < len(lb) <= 63 for lb in labels):
        raise argparse.ArgumentTypeError(f"{value!r} is not a domain name")
    return name


def seconds(value: str) -> int:
    number = whole(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def checked(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """Validate a value at parse time (exit 2 naming the flag) but keep the text: config_from_args
    parses it again, the same way as the comma-split DNSD_* form."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return check


def network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an address or CIDR network") from None


def directory_problem(path: str) -> str | None:
    """Why ``path`` cannot hold the shared index file, or None.

    Checked when serving, not when parsing: the directory may exist only where dnsd
    runs (a pod's volume), and only several workers need it.
    """
    if not os.path.isdir(path):
        return f"{path!r} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path!r} is not writable"
    return None


def _dnstap(value: str) -> object:
    from dnsd.observe.framestream import parse_target  # only when the flag is given

    return parse_target(value)


dnstap_target = checked(_dnstap)  # unix:PATH or tcp:HOST:PORT, checked as the dnstap writer reads it


def http_base(value: str) -> str:
    """HOST:PORT, [IPv6]:PORT or an http(s):// URL -> the base URL ``dnsd top`` asks (no final slash)."""
    from urllib.parse import urlsplit

    text = value.strip().rstrip("/")
    url = text if "://" in text else "http://" + text
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or (port is None and "://" not in text):
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT, [IPv6]:PORT or an http(s):// URL")
    return url
