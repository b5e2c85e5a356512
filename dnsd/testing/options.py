"""DnsServer's ``**options``: the flags of ``dnsd serve``, checked before any process starts."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from typing import Any

from dnsd.flags import build_parser

# Set by DnsServer itself: its own ports and manifest directory, and its parameters.
RESERVED = {
    "port": "DnsServer picks a free port: read .port",
    "address": "DnsServer listens on 127.0.0.1: read .host",
    "http_address": "DnsServer picks a free loopback port for /ready and /reload",
    "manifests": "give them as DnsServer's first argument, or apply() them",
    "upstream": "use DnsServer(upstream=...)",
    "domain": "use DnsServer(domain=...)",
    "help": "not an option",
}


def _serve_actions() -> dict[str, argparse.Action]:
    """``dnsd serve``'s flags by option name (``--http-address`` -> ``http_address``)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions: dict[str, argparse.Action] = {}
    for action in sub.choices["serve"]._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag:
            actions[flag[2:].replace("-", "_")] = action
    return actions


def serve_flags(options: Mapping[str, Any]) -> list[str]:
    """The command line for ``options``: ``workers=2`` -> ``--workers 2``, ``autopath=True`` -> ``--autopath``
    (False and None: left out), a list or tuple -> the flag repeated, one value each. TypeError for an
    option that is not a flag of ``dnsd serve`` or that DnsServer sets itself; the values are checked by
    dnsd, which exits at once naming the flag (DnsServer raises RuntimeError with its message)."""
    actions = _serve_actions()
    argv: list[str] = []
    for key, value in options.items():
        if key in RESERVED:
            raise TypeError(f"DnsServer option {key!r}: {RESERVED[key]}")
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, [k for k in actions if k not in RESERVED], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (see dnsd serve --help)"
            raise TypeError(f"DnsServer got an unknown option {key!r}: not a flag of dnsd serve{hint}")
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if value is not True:
                raise TypeError(f"DnsServer option {key!r} is a switch: give True or False, not {value!r}")
            argv.append(flag)
        elif isinstance(value, bool):
            raise TypeError(f"DnsServer option {key!r} takes a value ({flag} {action.metavar or 'VALUE'}), not {value}")
        elif isinstance(value, (list, tuple)):
            if isinstance(action, argparse._ExtendAction):
                argv += [flag, *map(str, value)]
            elif isinstance(action, argparse._AppendAction):
                for item in value:
                    argv += [flag, str(item)]
            else:
                raise TypeError(f"DnsServer option {key!r} takes one value, not a {type(value).__name__}")
        else:
            argv += [flag, str(value)]
    return argv
