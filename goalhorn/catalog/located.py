"""YAML read with the line of every value, so a problem in a rules file is reported as FILE:LINE."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from goalhorn.errors import ConfigError

Path = tuple[str | int, ...]


@dataclass(slots=True)
class Problems:
    """Problems found in one file, each with the line it is on."""

    filename: str
    lines: dict[Path, int] = field(default_factory=dict)
    found: list[tuple[int, str]] = field(default_factory=list)

    def add(self, path: Path, message: str) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        self.found.append((self.lines.get(probe, 1), message))

    def messages(self) -> list[str]:
        return [f"{self.filename}:{line}: {message}" for line, message in sorted(self.found)]

    def raise_if_any(self) -> None:
        if self.found:
            raise CatalogInvalid(self.messages())


class CatalogInvalid(ConfigError):
    """A rules file with problems; ``problems`` holds one ``FILE:LINE: what`` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def load_located(text: str, problems: Problems) -> Any:
    """Plain Python values of a YAML document, recording each value's line in ``problems.lines``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.found.append((line, f"not valid YAML: {what}"))
        return None
    if node is None:
        return None
    return _convert(node, (), problems)


def _convert(node: yaml.Node, path: Path, problems: Problems) -> Any:
    problems.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in out:
                problems.found.append((key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                continue
            out[key] = _convert(value_node, (*path, key), problems)
            problems.lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), problems) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
