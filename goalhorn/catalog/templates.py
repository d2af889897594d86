"""Message templates: an intent's template key and data rendered to a title and body in a locale.

Templates come from the catalog's ``templates:`` section (name -> locale -> title and body). A
locale falls back to its language (``pt-BR`` -> ``pt``) and then to English, which every template
must have. Providers get a :data:`Renderer` from their process's catalog (``CatalogFile.render``), never
a process-global one.

A template is ``str.format`` text limited to what a product person needs: named fields the intents
carry (``{team}``), optionally with a plain string spec (``{team:.20}``, ``{team:<12}``, width and
precision at most ``MAX_SPEC``). Attribute and index access, positional and empty fields,
conversions (``!r``) and nested fields are refused, when the file is validated and again at render
time, with the same rules. A rendered title is cut to ``MAX_TITLE`` characters and a body to
``MAX_BODY`` (ending in "…"): field values are only known at send time, and a push must stay well
inside APNs' 4 KB payload and a phone's title line; a template whose fixed text alone is longer is
refused at validation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from string import Formatter
from typing import Any

from goalhorn.catalog.located import Path, Problems
from goalhorn.errors import ConfigError
from goalhorn.models import EventKind, Intent

FALLBACK_LOCALE = "en"
MAX_TITLE = 100
MAX_BODY = 400
MAX_SPEC = 100
ELLIPSIS = "…"

GAME_FIELDS = frozenset({"team", "home_team", "away_team", "home_score", "away_score", "clock", "league", "player"})
"""The data of an intent made from a game event (``goalhorn.intents.rules.intents_for``)."""
OPTIONAL_FIELDS = frozenset({"player"})
"""Fields some intents of a kind lack (a goal whose scorer the feed did not name): they render empty."""
EDGE_FIELDS = frozenset(
    {
        "token_id",
        "game",
        "side",
        "fair",
        "ask",
        "edge_cents",
        "book_age_s",
        "state_age_s",
        "home_team",
        "away_team",
        "home_score",
        "away_score",
        "league",
    }
)
"""The data of an edge intent (``goalhorn.intents.edge.edge_intents``)."""
MESSAGE_FIELDS = frozenset({"title", "body"})
"""The data of an operator's one-off message (``goalhorn send``, template ``message``)."""
KNOWN_FIELDS = GAME_FIELDS | EDGE_FIELDS | MESSAGE_FIELDS

Templates = Mapping[str, Mapping[str, tuple[str, str]]]

_SPEC = re.compile(r"(?:(?P<fill>.)?[<>^])?(?P<width>\d+)?(?:\.(?P<precision>\d+))?s?", re.DOTALL)


class TemplateError(ConfigError):
    """A template text outside what templates may do; the message says what and where."""


class RenderFailed(ConfigError):
    """An intent that cannot be rendered: unknown template, missing field, or a template that breaks
    the rules above. Providers turn it into the device's ``render_failed`` result."""


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str


@dataclass(frozen=True, slots=True)
class Piece:
    """Literal text, then optionally one field with its (validated) format spec."""

    literal: str
    field: str | None = None
    spec: str = ""


def names_in(text: str) -> list[str]:
    """Names of the fields of a template text that passes :func:`compile_template`."""
    return [piece.field for piece in compile_template(text) if piece.field is not None]


def compile_template(text: str, known: Collection[str] | None = None, *, specs: bool = True) -> tuple[Piece, ...]:
    """The pieces of a template text, or TemplateError saying what is not allowed in it.

    ``known`` limits the field names (None: any plain name); ``specs=False`` refuses format specs too
    (for key and id templates)."""
    try:
        parsed = list(Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{exc} (write {{{{ and }}}} for a literal brace)") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append(Piece(literal))
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name == "":
            raise TemplateError(f"empty field {shown}: name a field, e.g. {{team}}")
        if name[0].isdigit():
            raise TemplateError(f"positional field {shown}: name a field, e.g. {{team}}")
        if any(c in name for c in ".[]"):
            raise TemplateError(f"field {shown} reaches into a value: only plain fields like {{team}} are allowed")
        if known is not None and name not in known:
            raise TemplateError(f"unknown field {{{name}}} (known: {', '.join(sorted(known))})")
        if conversion:
            raise TemplateError(f"field {shown}: conversions (!r, !s, !a) are not allowed")
        if spec:
            _check_spec(spec, shown, specs)
        pieces.append(Piece(literal, name, spec or ""))
    return tuple(pieces)


def _check_spec(spec: str, shown: str, allowed: bool) -> None:
    if not allowed:
        raise TemplateError(f"field {shown}: no format spec is allowed here")
    match = _SPEC.fullmatch(spec)
    if "{" in spec or match is None:
        raise TemplateError(f"field {shown}: format spec {spec!r} is not [[fill]<|>|^][width][.precision]")
    for part in ("width", "precision"):
        if match[part] is not None and int(match[part]) > MAX_SPEC:
            raise TemplateError(f"field {shown}: {part} {int(match[part])} is over {MAX_SPEC}")


def _least_length(pieces: tuple[Piece, ...]) -> int:
    """How long a text renders with every field empty."""
    total = 0
    for piece in pieces:
        total += len(piece.literal)
        match = _SPEC.fullmatch(piece.spec) if piece.spec else None
        if match is not None and match["width"] is not None:
            total += int(match["width"])
    return total


def fields_for(kinds: Collection[EventKind]) -> frozenset[str]:
    """The fields every intent of a rule taking ``kinds`` carries (or may leave empty)."""
    carried = [EDGE_FIELDS if kind is EventKind.EDGE else GAME_FIELDS for kind in kinds]
    return frozenset.intersection(*carried) if carried else frozenset()


def fields_used(by_locale: Mapping[str, tuple[str, str]]) -> frozenset[str]:
    """Every field a (valid) template's texts use, in any locale."""
    return frozenset(name for title, body in by_locale.values() for name in (*names_in(title), *names_in(body)))


def parse_templates(raw: Any, path: Path, problems: Problems) -> dict[str, dict[str, tuple[str, str]]]:
    """The valid templates of a ``templates:`` section; every problem of the others is reported."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, "templates must be a mapping of name -> locale -> {title, body}")
        return {}
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for name, locales in raw.items():
        where = (*path, name)
        if not isinstance(locales, dict) or FALLBACK_LOCALE not in locales:
            problems.add(where, f"template {name!r} needs a mapping of locales including {FALLBACK_LOCALE!r}")
            continue
        texts: dict[str, tuple[str, str]] = {}
        for locale, text in locales.items():
            at = (*where, locale)
            if not isinstance(text, dict) or set(text) != {"title", "body"}:
                problems.add(at, f"template {name!r} locale {locale!r} needs exactly title and body")
                continue
            if not all(isinstance(v, str) for v in text.values()):
                problems.add(at, f"template {name!r} locale {locale!r}: title and body must be strings")
                continue
            good = True
            for part, limit in (("title", MAX_TITLE), ("body", MAX_BODY)):
                what = f"template {name!r} locale {locale!r} {part}"
                try:
                    pieces = compile_template(text[part], KNOWN_FIELDS)
                except TemplateError as exc:
                    problems.add((*at, part), f"{what}: {exc}")
                    good = False
                    continue
                least = _least_length(pieces)
                if least > limit:
                    problems.add((*at, part), f"{what} is at least {least} characters; at most {limit} are sent")
                    good = False
            if good:
                texts[str(locale)] = (text["title"], text["body"])
        if len(texts) == len(locales):
            out[name] = texts
    return out


Renderer = Callable[[Intent, str], Rendered]
"""What providers format messages with: ``render(intent, locale)``; raises only :class:`RenderFailed`."""


def render(intent: Intent, locale: str, templates: Templates) -> Rendered:
    """Render ``intent`` for ``locale``; RenderFailed (and nothing else) when it cannot be."""
    try:
        return _render(intent, locale, templates)
    except RenderFailed:
        raise
    except Exception as exc:  # not expected; but a send must get RenderFailed, never a crash, from here
        raise RenderFailed(f"template {intent.template!r}: {type(exc).__name__}: {exc}") from exc


def _render(intent: Intent, locale: str, templates: Templates) -> Rendered:
    name = intent.template
    by_locale = templates.get(name)
    if by_locale is None:
        raise RenderFailed(f"unknown message template {name!r}")
    language = locale.split("-", 1)[0].split("_", 1)[0].lower()
    texts = by_locale.get(locale) or by_locale.get(language) or by_locale.get(FALLBACK_LOCALE)
    if texts is None:
        raise RenderFailed(f"template {name!r} has no {locale!r}, {language!r} or {FALLBACK_LOCALE!r} text")
    title, body = texts
    return Rendered(_fill(name, title, intent.data, MAX_TITLE), _fill(name, body, intent.data, MAX_BODY))


def _fill(name: str, text: str, data: Mapping[str, str], limit: int) -> str:
    try:
        pieces = compile_template(text)
    except TemplateError as exc:
        raise RenderFailed(f"template {name!r}: {exc}") from None
    out: list[str] = []
    for piece in pieces:
        out.append(piece.literal)
        if piece.field is None:
            continue
        value = data.get(piece.field)
        if value is None:
            if piece.field not in OPTIONAL_FIELDS:
                raise RenderFailed(f"template {name!r} needs field {piece.field!r}, which the intent lacks")
            value = ""
        try:
            out.append(format(str(value), piece.spec))
        except ValueError as exc:  # not expected after compile_template; a send never raises past here
            raise RenderFailed(f"template {name!r}: field {piece.field!r}: {exc}") from None
    rendered = "".join(out)
    return rendered if len(rendered) <= limit else rendered[: limit - len(ELLIPSIS)] + ELLIPSIS
