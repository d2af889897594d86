"""``--where``: a small filter over drained messages, parsed once, never evaluated as code.

An expression is one or more comparisons joined by ``and``: ``PATH OP VALUE``, where ``PATH`` is a
dotted path into the message's view (``priority``, ``id``, ``queue``, ``headers.NAME`` and
``payload.…``, the intent or batch the message carries: ``payload.intent.kind``,
``payload.platform``), ``OP`` one of ``= != < <= > >=`` and ``VALUE`` a bare word or a quoted
string. Two numbers compare as numbers, anything else as text; a path the message does not have
makes the comparison false. Examples: ``priority>=9``, ``payload.intent.kind=GOAL and
payload.intent.game_id=401547``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from goalhorn.errors import AdminError

_CLAUSE = re.compile(r"""\s*([A-Za-z_][\w.-]*)\s*(==|=|!=|<=|>=|<|>)\s*("[^"]*"|'[^']*'|[^\s"']+)\s*$""")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
ROOTS = ("priority", "id", "queue", "headers", "payload")


@dataclass(frozen=True, slots=True)
class Clause:
    path: tuple[str, ...]
    op: str
    value: str

    def matches(self, view: Mapping[str, Any]) -> bool:
        found: Any = view
        for part in self.path:
            if not isinstance(found, Mapping) or part not in found:
                return False
            found = found[part]
        if found is None or isinstance(found, Mapping | list):
            return False
        left, right = _number(found), _number(self.value)
        if left is not None and right is not None:
            return _OPS[self.op](left, right)
        return _OPS[self.op](str(found).lower() if isinstance(found, bool) else str(found), self.value)


@dataclass(frozen=True, slots=True)
class Where:
    """A parsed ``--where`` expression; ``Where.parse("")`` matches everything."""

    clauses: tuple[Clause, ...]

    @classmethod
    def parse(cls, expr: str) -> Where:
        if not expr.strip():
            return cls(())
        clauses = []
        for text in re.split(r"\s+and\s+", expr.strip(), flags=re.IGNORECASE):
            found = _CLAUSE.match(text)
            if found is None:
                raise AdminError(
                    f"--where: cannot read {text.strip()!r}: expected PATH OP VALUE, e.g. priority>=9 "
                    "or payload.intent.kind=GOAL (OP is one of = != < <= > >=, clauses joined by 'and')"
                )
            path, op, value = found.groups()
            parts = tuple(path.split("."))
            if parts[0] not in ROOTS or any(not p for p in parts):
                raise AdminError(f"--where: unknown field {path!r}: a path starts with one of {', '.join(ROOTS)}")
            clauses.append(Clause(parts, op, value[1:-1] if value[0] in "\"'" else value))
        return cls(tuple(clauses))

    def matches(self, view: Mapping[str, Any]) -> bool:
        return all(clause.matches(view) for clause in self.clauses)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
