"""Rule conditions: a small, safe expression language over documented event facts.

A rule's ``when:`` is parsed once, when the catalog loads, into a tree of closures; nothing is ever
passed to ``eval``. The grammar::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | compare
    compare := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "-" unary | atom
    atom    := NUMBER | 'text' | "text" | true | false | FIELD | FUNC "(" expr ("," expr)* ")" | "(" expr ")"

Every field has a type (number, bool or text, ``FIELDS``) and every expression is type-checked when
it is parsed: an unknown field or function, ``abs(lead_changed)``, ``period and 3``, ``'x' < 2`` or
a ``when`` that is not true-or-false is a :class:`ConditionError` with the column, which the catalog
reports as FILE:LINE. A fact an event lacks (``seconds_left`` of a soccer goal, ``win_prob_before``
without a model) is null: arithmetic and comparisons with null are null, ``and``/``or`` follow
three-valued logic, and a rule fires only when its condition is true — never on an unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Value = float | bool | str | None
Facts = Mapping[str, Value]
Type = Literal["number", "bool", "text"]

FIELDS: dict[str, tuple[Type, str]] = {
    "kind": ("text", "the event kind, e.g. 'GOAL'"),
    "sport": ("text", "soccer, hockey, basketball, football or baseball"),
    "league": ("text", "the feed's league, e.g. 'nba', 'usa.1'"),
    "team_id": ("text", "the scoring team's id (empty when the event has none)"),
    "period": ("number", "period, quarter or inning"),
    "home_score": ("number", "home score after the event"),
    "away_score": ("number", "away score after the event"),
    "margin": ("number", "home score minus away score, after the event"),
    "team_margin": ("number", "the event's team's score minus the other's, after it"),
    "points": ("number", "points (goals, runs) the event's team gained by it"),
    "seconds_left": ("number", "seconds left in the period, where the clock counts down"),
    "lead_changed": ("bool", "the event's team was not ahead before it and is ahead after it"),
    "tied": ("bool", "the scores are level after the event"),
    "is_home": ("bool", "the event's team is the home team"),
    "win_prob_before": ("number", "the event's team's win probability before it (0-1), from the model"),
    "win_prob_after": ("number", "the event's team's win probability after it (0-1), from the model"),
}
FUNCTIONS = ("abs", "min", "max")
MAX_LENGTH = 500
MAX_DEPTH = 32

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<text>'[^'\\]{0,200}'|\"[^\"\\]{0,200}\")|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|==|!=|[<>+\-*/(),]))"
)
_KEYWORDS = ("and", "or", "not", "true", "false")

Eval = Callable[[Facts], Value]


class ConditionError(ValueError):
    """A condition that does not parse or type-check; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.column = column


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed ``when:``: ``test(facts)`` is True only when the expression is true."""

    source: str
    fields: frozenset[str]
    _eval: Eval

    def test(self, facts: Facts) -> bool:
        return self._eval(facts) is True


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["number", "text", "name", "op", "end"]
    text: str
    column: int


def parse_condition(source: str) -> Condition:
    """Parse and type-check ``source``; raises :class:`ConditionError`."""
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"a condition is at most {MAX_LENGTH} characters", MAX_LENGTH)
    parser = _Parser(_tokens(source))
    kind, node = parser.expression(0)
    parser.expect_end()
    if kind != "bool":
        raise ConditionError(f"a condition must be true or false, not a {kind}", 1)
    return Condition(source, frozenset(parser.fields), node)


def _tokens(source: str) -> list[_Token]:
    out, at = [], 0
    while at < len(source):
        if source[at:].strip() == "":
            break
        found = _TOKEN.match(source, at)
        if found is None or found.end() == at:
            column = at + 1 + (len(source[at:]) - len(source[at:].lstrip()))
            raise ConditionError(f"unexpected {source[column - 1]!r}", column)
        group = found.lastgroup
        assert group is not None
        column = found.start(group) + 1
        out.append(_Token(group, found[group], column))  # type: ignore[arg-type]
        at = found.end()
    out.append(_Token("end", "", len(source) + 1))
    return out


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.at = 0
        self.fields: set[str] = set()

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def accept(self, *texts: str) -> _Token | None:
        token = self.peek()
        if token.kind in ("op", "name") and token.text in texts:
            self.at += 1
            return token
        return None

    def expect_end(self) -> None:
        token = self.peek()
        if token.kind != "end":
            raise ConditionError(f"unexpected {token.text!r}", token.column)

    def expression(self, depth: int) -> tuple[Type, Eval]:
        if depth > MAX_DEPTH:
            raise ConditionError("the condition is nested too deeply", self.peek().column)
        return self.either(depth)

    def either(self, depth: int) -> tuple[Type, Eval]:
        kind, left = self.both(depth)
        while (token := self.accept("or")) is not None:
            right_kind, right = self.both(depth)
            _need(("bool", kind), ("bool", right_kind), "or", token.column)
            left = _or(left, right)
        return kind, left

    def both(self, depth: int) -> tuple[Type, Eval]:
        kind, left = self.negation(depth)
        while (token := self.accept("and")) is not None:
            right_kind, right = self.negation(depth)
            _need(("bool", kind), ("bool", right_kind), "and", token.column)
            left = _and(left, right)
        return kind, left

    def negation(self, depth: int) -> tuple[Type, Eval]:
        token = self.accept("not")
        if token is None:
            return self.comparison(depth)
        if depth > MAX_DEPTH:
            raise ConditionError("the condition is nested too deeply", token.column)
        kind, inner = self.negation(depth + 1)
        _need(("bool", kind), None, "not", token.column)
        return "bool", _not(inner)

    def comparison(self, depth: int) -> tuple[Type, Eval]:
        kind, left = self.sum(depth)
        token = self.accept("<", "<=", ">", ">=", "==", "!=")
        if token is None:
            return kind, left
        right_kind, right = self.sum(depth)
        if token.text in ("==", "!="):
            if kind != right_kind:
                raise ConditionError(f"{token.text} compares a {kind} with a {right_kind}", token.column)
        else:
            _need(("number", kind), ("number", right_kind), token.text, token.column)
        return "bool", _compare(token.text, left, right)

    def sum(self, depth: int) -> tuple[Type, Eval]:
        kind, left = self.product(depth)
        while (token := self.accept("+", "-")) is not None:
            right_kind, right = self.product(depth)
            _need(("number", kind), ("number", right_kind), token.text, token.column)
            left = _arith(token.text, left, right)
        return kind, left

    def product(self, depth: int) -> tuple[Type, Eval]:
        kind, left = self.unary(depth)
        while (token := self.accept("*", "/")) is not None:
            right_kind, right = self.unary(depth)
            _need(("number", kind), ("number", right_kind), token.text, token.column)
            left = _arith(token.text, left, right)
        return kind, left

    def unary(self, depth: int) -> tuple[Type, Eval]:
        token = self.accept("-")
        if token is None:
            return self.atom(depth)
        if depth > MAX_DEPTH:
            raise ConditionError("the condition is nested too deeply", token.column)
        kind, inner = self.unary(depth + 1)
        _need(("number", kind), None, "-", token.column)
        return "number", _arith("-", lambda facts: 0.0, inner)

    def atom(self, depth: int) -> tuple[Type, Eval]:
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            return "number", lambda facts: number
        if token.kind == "text":
            text = token.text[1:-1]
            return "text", lambda facts: text
        if token.kind == "op" and token.text == "(":
            kind, inner = self.expression(depth + 1)
            self.close(token)
            return kind, inner
        if token.kind == "name":
            if token.text in ("true", "false"):
                flag = token.text == "true"
                return "bool", lambda facts: flag
            if token.text in FUNCTIONS:
                return self.call(token, depth)
            if token.text in _KEYWORDS:
                raise ConditionError(f"{token.text!r} needs something before it", token.column)
            field = FIELDS.get(token.text)
            if field is None:
                known = ", ".join(FIELDS)
                raise ConditionError(f"unknown field {token.text!r} (known: {known})", token.column)
            self.fields.add(token.text)
            name = token.text
            return field[0], lambda facts: facts.get(name)
        if token.kind == "end":
            raise ConditionError("the condition ends too early", token.column)
        raise ConditionError(f"unexpected {token.text!r}", token.column)

    def call(self, name: _Token, depth: int) -> tuple[Type, Eval]:
        opening = self.take()
        if opening.kind != "op" or opening.text != "(":
            raise ConditionError(f"{name.text} needs its arguments in parentheses", opening.column)
        args: list[Eval] = []
        while True:
            kind, arg = self.expression(depth + 1)
            _need(("number", kind), None, f"{name.text}()", name.column)
            args.append(arg)
            if self.accept(",") is None:
                break
        self.close(opening)
        if name.text == "abs":
            if len(args) != 1:
                raise ConditionError("abs takes one number", name.column)
            return "number", _call(abs, args)
        if len(args) < 2:
            raise ConditionError(f"{name.text} takes two numbers or more", name.column)
        return "number", _call(min if name.text == "min" else max, args)

    def close(self, opening: _Token) -> None:
        token = self.take()
        if token.kind != "op" or token.text != ")":
            raise ConditionError(f"the parenthesis at column {opening.column} is not closed", token.column)


def _need(left: tuple[Type, Type], right: tuple[Type, Type] | None, op: str, column: int) -> None:
    for want, got in (left, right) if right is not None else (left,):
        if want != got:
            raise ConditionError(f"{op} needs a {want}, not a {got}", column)


def _and(left: Eval, right: Eval) -> Eval:
    def run(facts: Facts) -> Value:
        a = left(facts)
        if a is False:
            return False
        b = right(facts)
        if b is False:
            return False
        return None if a is None or b is None else True

    return run


def _or(left: Eval, right: Eval) -> Eval:
    def run(facts: Facts) -> Value:
        a = left(facts)
        if a is True:
            return True
        b = right(facts)
        if b is True:
            return True
        return None if a is None or b is None else False

    return run


def _not(inner: Eval) -> Eval:
    def run(facts: Facts) -> Value:
        value = inner(facts)
        return None if value is None else not value

    return run


_COMPARE: dict[str, Callable[[object, object], bool]] = {
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _compare(op: str, left: Eval, right: Eval) -> Eval:
    test = _COMPARE[op]

    def run(facts: Facts) -> Value:
        a, b = left(facts), right(facts)
        return None if a is None or b is None else test(a, b)

    return run


def _arith(op: str, left: Eval, right: Eval) -> Eval:
    def run(facts: Facts) -> Value:
        a, b = left(facts), right(facts)
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return None
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return None if b == 0 else a / b

    return run


def _call(function: Callable[..., float], args: list[Eval]) -> Eval:
    def run(facts: Facts) -> Value:
        values = [arg(facts) for arg in args]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        return None if len(numbers) < len(values) else function(*numbers)

    return run
