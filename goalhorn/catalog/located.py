"""YAML read with the line of every value, so a problem in a rules file is reported as FILE:LINE.

Rules files are edited by hand and reloaded by running workers, so reading one is bounded: at most
``MAX_BYTES`` of text, ``MAX_DEPTH`` levels of nesting, and ``MAX_ALIAS_VALUES`` values reached through
aliases (a "billion laughs" file is stopped at the alias that crosses the budget, before anything is
expanded). Only the plain YAML types are read (strings, numbers, booleans, null, timestamps, lists and
mappings); any other tag, a value its tag cannot read, or an alias inside its own anchor is a problem on
its line, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import ComposerError

from goalhorn.errors import ConfigError

Path = tuple[str | int, ...]

MAX_BYTES = 1024 * 1024
"""Largest rules file read (the shipped one is about 3 KiB)."""
MAX_DEPTH = 50
"""Deepest nesting of lists and mappings, aliases expanded."""
MAX_ALIAS_VALUES = 10_000
"""Most values a document may reach through aliases, counted as expanded."""

_STD = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE, _VALUE = (_STD + name for name in ("map", "seq", "merge", "value"))
_SCALARS = frozenset(_STD + name for name in ("str", "int", "float", "bool", "null", "timestamp"))


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


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer, stopping at ``MAX_DEPTH`` and ``MAX_ALIAS_VALUES`` with the line it
    stopped on. Every composed node's expanded size (values, depth) is kept, so an alias costs what it
    would expand to without expanding it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._through_aliases = 0
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise ComposerError(None, None, f"alias *{event.anchor} is inside its own anchor", event.start_mark)
                values, depth = size
                self._through_aliases += values
                if self._through_aliases > MAX_ALIAS_VALUES:
                    what = f"aliases expand to more than {MAX_ALIAS_VALUES:,} values"
                    raise ComposerError(None, None, what, event.start_mark)
                if self._depth + depth > MAX_DEPTH:
                    what = f"alias *{event.anchor} nests values deeper than {MAX_DEPTH} levels"
                    raise ComposerError(None, None, what, event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias raises here
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            return 1, 1
        sizes = [self._sizes[id(child)] for child in children]
        return 1 + sum(v for v, _ in sizes), 1 + max((d for _, d in sizes), default=0)


def load_located(text: str, problems: Problems) -> Any:
    """Plain Python values of a YAML document, recording each value's line in ``problems.lines``."""
    if len(text) > MAX_BYTES:
        problems.found.append((1, f"file is larger than {MAX_BYTES:,} bytes"))
        return None
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # refuses characters YAML does not allow right away
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        problems.found.append((_error_line(exc, text), f"not valid YAML: {_error_text(exc)}"))
        return None
    else:
        return None if node is None else _convert(node, (), problems, loader)
    finally:
        if loader is not None:
            loader.dispose()


def _error_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)  # a ReaderError (a character YAML does not allow)
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else 1


def _error_text(exc: yaml.YAMLError) -> str:
    what = getattr(exc, "problem", None) or getattr(exc, "context", None)
    return str(what) if what else str(exc).splitlines()[0]


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_STD) if tag.startswith(_STD) else tag


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _convert(node: yaml.Node, path: Path, problems: Problems, loader: yaml.SafeLoader) -> Any:
    line = node.start_mark.line + 1
    problems.lines[path] = line
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            problems.found.append((line, f"unsupported tag {_tag(node.tag)} (use a plain mapping)"))
            return None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.found.append((key_line, "a key must be plain text, not a list or a mapping"))
                continue
            if key_node.tag == _MERGE:
                problems.found.append((key_line, "merge keys (<<) are not supported"))
                continue
            if key_node.tag not in _SCALARS:
                problems.found.append((key_line, f"unsupported tag {_tag(key_node.tag)} on a key"))
                continue
            key = str(key_node.value)
            if key in out:
                problems.found.append((key_line, f"duplicate key {key!r}"))
                continue
            out[key] = _convert(value_node, (*path, key), problems, loader)
            problems.lines[(*path, key)] = key_line
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            problems.found.append((line, f"unsupported tag {_tag(node.tag)} (use a plain list)"))
            return None
        return [_convert(item, (*path, i), problems, loader) for i, item in enumerate(node.value)]
    if node.tag == _VALUE:  # a plain "=", which the resolver tags specially
        return str(node.value)
    if node.tag not in _SCALARS:
        problems.found.append((line, f"unsupported tag {_tag(node.tag)} on {_shown(node.value)}"))
        return None
    try:
        return loader.yaml_constructors[node.tag](loader, node)
    except Exception:  # PyYAML's constructors fail on bad text with ValueError, KeyError, IndexError...
        problems.found.append((line, f"{_shown(node.value)} is not a valid {_tag(node.tag)}"))
        return None
