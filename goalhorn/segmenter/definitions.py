"""Segments resolved for one intent: the catalog's expressions (``goalhorn.catalog.segments``) with
sources turned into Redis set keys, references inlined and static lists as members."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from goalhorn.catalog.segments import Expr, Operator, Ref, Segment, Source, Static
from goalhorn.errors import ConfigError
from goalhorn.keys import Keys


# --- resolved for one intent --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SetKey:
    key: str


@dataclass(frozen=True, slots=True)
class Members:
    users: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class Op:
    op: Operator
    children: tuple[Resolved, ...]


Resolved = SetKey | Members | Op

EMPTY = Members(frozenset())


def resolve(segment: Segment, segments: Mapping[str, Segment], fields: Mapping[str, str], keys: Keys) -> Resolved:
    """The segment's expression for one intent: sources become set keys, references are inlined.

    A source whose field is empty for this intent (a goal without a team, say) is the empty set."""

    def walk(expr: Expr, depth: int) -> Resolved:
        if depth > 64:
            raise ConfigError(f"segment {segment.name!r} nests too deeply (a cycle?)")
        if isinstance(expr, Source):
            try:
                target = expr.id_template.format_map(fields)
            except KeyError:
                return EMPTY
            if not target:
                return EMPTY
            key = {
                "team": keys.team_followers,
                "match": keys.match_watchers,
                "market": keys.market_watchers,
                "sport": keys.sport_fans,
            }[expr.kind](target)
            return SetKey(key)
        if isinstance(expr, Static):
            return Members(frozenset(member.encode() for member in expr.members))
        if isinstance(expr, Ref):
            try:
                return walk(segments[expr.name].expr, depth + 1)
            except KeyError:
                raise ConfigError(f"unknown segment {expr.name!r}") from None
        return Op(expr.op, tuple(walk(child, depth + 1) for child in expr.children))

    return walk(segment.expr, 0)
