"""Label and field selectors, as list and watch requests give them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Entry

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_RE_NOT_EXISTS = re.compile(rf"!\s*({_KEY})")
_RE_EXISTS = re.compile(rf"({_KEY})")
_RE_EQ = re.compile(rf"({_KEY})\s*(==|=|!=)\s*({_VALUE})")
_RE_SET = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)")

Predicate = Callable[[Mapping[str, str]], bool]


def _split_terms(text: str) -> list[str]:
    # Commas inside "in (a,b)" do not separate requirements.
    terms, depth, cur = [], 0, []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> list[Predicate]:
    """Parse a labelSelector into AND-ed predicates; ValueError if malformed."""
    preds: list[Predicate] = []
    for term in _split_terms(text or ""):
        if m := _RE_NOT_EXISTS.fullmatch(term):
            k = m[1]
            preds.append(lambda lb, k=k: k not in lb)
        elif m := _RE_EQ.fullmatch(term):
            k, op, v = m[1], m[2], m[3]
            if op == "!=":
                # Like Kubernetes: "k!=v" also matches objects without label k.
                preds.append(lambda lb, k=k, v=v: lb.get(k) != v)
            else:
                preds.append(lambda lb, k=k, v=v: lb.get(k) == v)
        elif m := _RE_SET.fullmatch(term):
            k, op = m[1], m[2]
            vals = frozenset(x.strip() for x in m[3].split(",") if x.strip())
            if op == "in":
                preds.append(lambda lb, k=k, vals=vals: k in lb and lb[k] in vals)
            else:
                preds.append(lambda lb, k=k, vals=vals: lb.get(k) not in vals)
        elif m := _RE_EXISTS.fullmatch(term):
            k = m[1]
            preds.append(lambda lb, k=k: k in lb)
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return preds


def parse_field_selector(text: str | None) -> list[tuple[str, bool, str]]:
    """(field, equal?, value) for metadata.name / metadata.namespace; others ignored."""
    out: list[tuple[str, bool, str]] = []
    for term in _split_terms(text or ""):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        if m[1] in ("metadata.name", "metadata.namespace"):
            out.append((m[1], m[2] != "!=", m[3]))
    return out


def matches_selectors(e: Entry, labels: list[Predicate], fields: list[tuple[str, bool, str]]) -> bool:
    for field, eq, value in fields:
        actual = e.key[1] if field == "metadata.name" else e.key[0]
        if (actual == value) != eq:
            return False
    if labels:
        lb = e.labels
        return all(p(lb) for p in labels)
    return True
