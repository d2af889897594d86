"""The catalog product edits: alert rules, segments and message templates in one YAML file.

``load_catalog`` validates a whole file and raises :class:`CatalogInvalid` listing every problem as
``FILE:LINE: what is wrong``; ``CatalogFile`` reloads a file when it changes and keeps serving the last
good version when an edit is bad. The packaged default (``goalhorn/catalog/default.yaml``) is what runs
when ``Settings.rules_file`` is unset.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from importlib import resources

from goalhorn.catalog.located import MAX_BYTES, CatalogInvalid, Problems, load_located
from goalhorn.catalog.rules import Rule, parse_rules
from goalhorn.catalog.segments import Segment, parse_segments
from goalhorn.catalog.templates import Rendered, fields_used, parse_templates, render
from goalhorn.models import Intent

log = logging.getLogger(__name__)

TOP_KEYS = ("segments", "rules", "templates")
DEFAULT_NAME = "default.yaml"


@dataclass(frozen=True, slots=True)
class Catalog:
    rules: tuple[Rule, ...]
    segments: dict[str, Segment]
    templates: dict[str, dict[str, tuple[str, str]]]
    origin: str = "<memory>"

    def render(self, intent: Intent, locale: str) -> Rendered:
        """The :data:`Renderer` of this catalog's templates."""
        return render(intent, locale, self.templates)


def parse_catalog(text: str, filename: str) -> Catalog:
    """A validated catalog from YAML text; CatalogInvalid lists every problem found."""
    problems = Problems(filename)
    raw = load_located(text, problems)
    problems.raise_if_any()
    if not isinstance(raw, dict):
        problems.add((), "expected a mapping with segments, rules and templates")
        raise CatalogInvalid(problems.messages())
    for key in raw:
        if key not in TOP_KEYS:
            problems.add((key,), f"unknown key {key!r} (expected {', '.join(TOP_KEYS)})")
    segments = parse_segments(raw.get("segments"), ("segments",), problems)
    templates = parse_templates(raw.get("templates"), ("templates",), problems)
    declared_segments = set(raw.get("segments") or {}) if isinstance(raw.get("segments"), dict) else set()
    declared_templates = set(raw.get("templates") or {}) if isinstance(raw.get("templates"), dict) else set()
    used = {name: fields_used(texts) for name, texts in templates.items()}
    rules = parse_rules(raw.get("rules"), ("rules",), problems, declared_segments, declared_templates, used)
    problems.raise_if_any()
    return Catalog(rules, segments, templates, filename)


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read and validate one file; a file that cannot be read, or is larger than ``MAX_BYTES``, is one
    problem on line 1 (only that much of it is read)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise CatalogInvalid([f"{name}:1: file is larger than {MAX_BYTES:,} bytes"])
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogInvalid([f"{name}:1: cannot read: {exc}"]) from None
    return parse_catalog(text, name)


@functools.cache
def default_catalog() -> Catalog:
    """The rules, segments and templates shipped with goalhorn (parsed once; a Catalog is immutable)."""
    text = resources.files("goalhorn.catalog").joinpath(DEFAULT_NAME).read_text(encoding="utf-8")
    return parse_catalog(text, f"goalhorn/catalog/{DEFAULT_NAME}")


@dataclass(slots=True)
class CatalogFile:
    """A catalog that follows its file: ``current()`` reloads after a change and keeps the last good
    version when the new one is invalid (``rejected`` counts those, ``problems`` holds the last)."""

    path: str | None
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    _catalog: Catalog | None = None
    _stamp: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._catalog = default_catalog() if self.path is None else load_catalog(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> Catalog:
        stamp = self._stat()
        if self.path is not None and stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                self._catalog = load_catalog(self.path)
            except CatalogInvalid as exc:
                self.rejected += 1
                self.problems = exc.problems
                log.error("rejected an edit of %s, keeping the last good version:\n%s", self.path, exc)
            else:
                self.problems = []
                log.info("reloaded %s", self.path)
        assert self._catalog is not None
        return self._catalog

    def render(self, intent: Intent, locale: str) -> Rendered:
        """The :data:`Renderer` of this file: its current templates (reloaded after an edit)."""
        return render(intent, locale, self.current().templates)
