"""Kubernetes label selectors (``env=prod,tier in (web,api),!legacy``), parsed and matched as
apimachinery's ``labels.Parse`` does them: which namespaces ``--namespace-labels`` serves.

Requirements are joined by commas and all must hold: ``key`` (has the label), ``!key`` (has not),
``key=value`` / ``key==value``, ``key!=value`` (also true without the label), ``key in (a,b)``,
``key notin (a,b)`` (also true without the label), ``key>N`` / ``key<N`` (the label is a whole
number above or below N). Keys and values are checked as Kubernetes checks them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")
_TOKEN = re.compile(r"\s*(?:(!=|==|=|!|\(|\)|,|<|>)|([^\s!=,()<>]+))")
_EQUALITY = {"=": "=", "==": "=", "!=": "!="}


class Requirement(NamedTuple):
    key: str
    op: str  # "exists" | "!" | "=" | "!=" | "in" | "notin" | ">" | "<"
    values: frozenset[str] = frozenset()


Selector = tuple[Requirement, ...]


def _tokens(text: str) -> list[str]:
    out, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover - every character is some token
            raise ValueError(f"cannot read {text[pos:]!r}")
        out.append(match.group(1) or match.group(2))
        pos = match.end()
    return out


def _key(token: str | None) -> str:
    if token is None or not _KEY.fullmatch(token) or len(token.rpartition("/")[0]) > 253:
        raise ValueError(f"{token!r} is not a label key" if token else "a label key is missing")
    return token


def _value(token: str) -> str:
    if not _VALUE.fullmatch(token):
        raise ValueError(f"{token!r} is not a label value (63 characters at most: letters, digits, '-', '_', '.')")
    return token


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens, self.pos = _tokens(text), 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += token is not None
        return token

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(_key(self.take()), "!")
        key = _key(self.take())
        op = self.peek()
        if op in (None, ","):
            return Requirement(key, "exists")
        self.take()
        if op in _EQUALITY:
            value = "" if self.peek() in (None, ",") else _value(self.take() or "")
            return Requirement(key, _EQUALITY[op], frozenset((value,)))
        if op in ("in", "notin"):
            return Requirement(key, op, self.values())
        if op in (">", "<"):
            number = self.take() or ""
            if not re.fullmatch(r"-?[0-9]+", number):
                raise ValueError(f"{key}{op}: {number!r} is not a whole number")
            return Requirement(key, op, frozenset((number,)))
        raise ValueError(f"{key}: {op!r} is not an operator (=, ==, !=, in, notin, >, <)")

    def values(self) -> frozenset[str]:
        if self.take() != "(":
            raise ValueError("'in' and 'notin' take a list in parentheses: key in (a,b)")
        values, expect_value = [], True
        while (token := self.take()) != ")":
            if token is None:
                raise ValueError("a ')' is missing")
            if token == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            elif expect_value:
                values.append(_value(token))
                expect_value = False
            else:
                raise ValueError(f"',' expected before {token!r}")
        if expect_value:
            values.append("")  # "()" and a trailing comma stand for the empty value, as in Kubernetes
        return frozenset(values)


def parse(text: str) -> Selector:
    """The requirements of ``text``; ValueError with a readable reason when it is not a selector.
    An empty selector matches everything."""
    reader = _Reader(text)
    out: list[Requirement] = []
    while reader.peek() is not None:
        out.append(reader.requirement())
        separator = reader.take()
        if separator is None:
            break
        if separator != "," or reader.peek() is None:
            raise ValueError(f"',' and another requirement expected after {out[-1].key!r}, not {separator!r}")
    return tuple(out)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    for key, op, values in selector:
        value = labels.get(key)
        if op == "exists":
            ok = value is not None
        elif op == "!":
            ok = value is None
        elif op in ("=", "in"):
            ok = value in values
        elif op in ("!=", "notin"):
            ok = value not in values
        else:  # ">" | "<": a whole number on both sides
            if value is None or not re.fullmatch(r"-?[0-9]+", value):
                return False
            (bound,) = values
            ok = int(value) > int(bound) if op == ">" else int(value) < int(bound)
        if not ok:
            return False
    return True


__all__ = ["Requirement", "Selector", "matches", "parse"]
