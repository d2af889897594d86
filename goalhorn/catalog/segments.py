"""Segment definitions: named set algebra over follower sets, templated from the intent.

A segment is one expression plus optional device filters::

    scoring_team_fans:
      difference:
        - source: "team:{team_id}:followers"
        - segment: bots
      filters: {platform: [fcm, apns], locale: [en, es]}

An expression is exactly one of ``source`` (a follower set: ``team:<id>:followers``,
``match:<id>:watching``, ``market:<id>:watchers``, ``sport:<id>:all``, the id literal or a
``{field}`` of the intent), ``segment`` (another segment, without filters), ``static`` (a list of user
ids), ``union``, ``intersection`` or ``difference`` (of a list of expressions; difference is the first
minus the others). Resolving a segment for an intent gives a tree of Redis set keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from goalhorn.catalog.located import Path, Problems
from goalhorn.catalog.templates import TemplateError, compile_template
from goalhorn.keys import PLATFORMS

FIELDS = ("team_id", "game_id", "sport", "league", "token_id")
OPERATORS = ("union", "intersection", "difference")
EXPRESSION_KEYS = ("source", "segment", "static", *OPERATORS)
_SOURCE = re.compile(r"^(?P<kind>team|match|market|sport):(?P<id>[^:\s]+):(?P<suffix>[a-z]+)$")
_SUFFIX = {"team": "followers", "match": "watching", "market": "watchers", "sport": "all"}

Operator = Literal["union", "intersection", "difference"]


@dataclass(frozen=True, slots=True)
class Source:
    kind: str
    id_template: str


@dataclass(frozen=True, slots=True)
class Ref:
    name: str


@dataclass(frozen=True, slots=True)
class Static:
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Combine:
    op: Operator
    children: tuple[Expr, ...]


Expr = Source | Ref | Static | Combine


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    expr: Expr
    platforms: frozenset[str] | None = None
    locales: frozenset[str] | None = None

    def admits(self, platform: str, locale: str) -> bool:
        """Whether a device passes the segment's filters (a locale matches itself or its language)."""
        if self.platforms is not None and platform not in self.platforms:
            return False
        if self.locales is not None:
            return locale in self.locales or locale.split("-", 1)[0].split("_", 1)[0].lower() in self.locales
        return True


def check_template(text: str, path: Path, problems: Problems, what: str) -> None:
    """Report a key or id template that is malformed, uses a field outside ``FIELDS``, or formats a
    field in any way (it only ever names fields); ``what`` names it."""
    try:
        compile_template(text, FIELDS, specs=False)
    except TemplateError as exc:
        problems.add(path, f"{what}: {exc}")


def parse_expression(raw: Any, path: Path, problems: Problems, *, top: bool = False) -> Expr | None:
    allowed = set(EXPRESSION_KEYS) | ({"filters", "description"} if top else set())
    if not isinstance(raw, dict):
        problems.add(path, f"expected a mapping with one of {', '.join(EXPRESSION_KEYS)}")
        return None
    for key in raw:
        if key not in allowed:
            problems.add((*path, key), f"unknown key {key!r} (expected one of {', '.join(sorted(allowed))})")
    present = [k for k in EXPRESSION_KEYS if k in raw]
    if len(present) != 1:
        problems.add(path, f"needs exactly one of {', '.join(EXPRESSION_KEYS)}, found {present or 'none'}")
        return None
    key = present[0]
    value, where = raw[key], (*path, key)
    if key == "source":
        return _parse_source(value, where, problems)
    if key == "segment":
        if not isinstance(value, str):
            problems.add(where, "segment must be the name of another segment")
            return None
        return Ref(value)
    if key == "static":
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            problems.add(where, "static must be a list of user ids")
            return None
        return Static(tuple(str(v) for v in value))
    if not isinstance(value, list) or len(value) < 2:
        problems.add(where, f"{key} needs a list of at least two expressions")
        return None
    children = [parse_expression(child, (*where, i), problems) for i, child in enumerate(value)]
    if any(c is None for c in children):
        return None
    return Combine(key, tuple(c for c in children if c is not None))  # type: ignore[arg-type]


def _parse_source(value: Any, path: Path, problems: Problems) -> Source | None:
    match = _SOURCE.match(value) if isinstance(value, str) else None
    if match is None or _SUFFIX[match["kind"]] != match["suffix"]:
        known = ", ".join(f"{k}:<id>:{s}" for k, s in _SUFFIX.items())
        problems.add(path, f"unknown source {value!r} (expected {known})")
        return None
    check_template(match["id"], path, problems, f"source {value!r}")
    return Source(match["kind"], match["id"])


def parse_segments(raw: Any, path: Path, problems: Problems) -> dict[str, Segment]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, "segments must be a mapping of name -> definition")
        return {}
    segments: dict[str, Segment] = {}
    for name, body in raw.items():
        where = (*path, name)
        expr = parse_expression(body, where, problems, top=True)
        if expr is None:
            continue
        platforms, locales = _parse_filters(body.get("filters"), (*where, "filters"), problems)
        segments[name] = Segment(name, expr, platforms, locales)
    for name, segment in segments.items():
        _check_refs(segment.expr, (*path, name), segments, problems)
    _check_cycles(segments, path, problems)
    return segments


def _parse_filters(raw: Any, path: Path, problems: Problems) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        problems.add(path, "filters must be a mapping with platform and/or locale")
        return None, None
    out: dict[str, frozenset[str] | None] = {"platform": None, "locale": None}
    for key, value in raw.items():
        if key not in out:
            problems.add((*path, key), f"unknown filter {key!r} (expected platform, locale)")
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            problems.add((*path, key), f"filter {key} must be a non-empty list of strings")
            continue
        if key == "platform":
            for v in values:
                if v not in PLATFORMS:
                    problems.add((*path, key), f"unknown platform {v!r} (expected {', '.join(PLATFORMS)})")
        out[key] = frozenset(v if key == "platform" else v.lower() for v in values)
    return out["platform"], out["locale"]


def _walk(expr: Expr) -> list[Expr]:
    if isinstance(expr, Combine):
        return [expr, *(e for child in expr.children for e in _walk(child))]
    return [expr]


def _check_refs(expr: Expr, path: Path, segments: Mapping[str, Segment], problems: Problems) -> None:
    for node in _walk(expr):
        if isinstance(node, Ref):
            target = segments.get(node.name)
            if target is None:
                problems.add(path, f"unknown segment {node.name!r}")
            elif target.platforms is not None or target.locales is not None:
                problems.add(path, f"segment {node.name!r} has filters and cannot be used inside another segment")


def _check_cycles(segments: Mapping[str, Segment], path: Path, problems: Problems) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in segments:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            problems.add((*path, name), f"segment cycle: {' -> '.join(cycle)}")
            return
        state[name] = 1
        for node in _walk(segments[name].expr):
            if isinstance(node, Ref):
                visit(node.name, [*trail, name])
        state[name] = 2

    for name in segments:
        visit(name, [])
