"""Message templates: an intent's template key and data rendered to a title and body in a locale.

Templates come from the catalog's ``templates:`` section (name -> locale -> title and body). A
locale falls back to its language (``pt-BR`` -> ``pt``) and then to English, which every template
must have. Providers get a :data:`Renderer` from their process's catalog (``CatalogFile.render``), never
a process-global one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from goalhorn.catalog.located import Path, Problems
from goalhorn.errors import ConfigError
from goalhorn.models import Intent

FALLBACK_LOCALE = "en"

Templates = Mapping[str, Mapping[str, tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str


def parse_templates(raw: Any, path: Path, problems: Problems) -> dict[str, dict[str, tuple[str, str]]]:
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
        out[name] = {}
        for locale, text in locales.items():
            at = (*where, locale)
            if not isinstance(text, dict) or set(text) != {"title", "body"}:
                problems.add(at, f"template {name!r} locale {locale!r} needs exactly title and body")
                continue
            if not all(isinstance(v, str) for v in text.values()):
                problems.add(at, f"template {name!r} locale {locale!r}: title and body must be strings")
                continue
            out[name][str(locale)] = (text["title"], text["body"])
    return out


Renderer = Callable[[Intent, str], Rendered]
"""What providers format messages with: ``render(intent, locale)``."""


def render(intent: Intent, locale: str, templates: Templates) -> Rendered:
    """Render ``intent`` for ``locale``; raises ConfigError for an unknown template or missing field."""
    try:
        by_locale = templates[intent.template]
    except KeyError:
        raise ConfigError(f"unknown message template {intent.template!r}") from None
    language = locale.split("-", 1)[0].split("_", 1)[0].lower()
    title, body = by_locale.get(locale) or by_locale.get(language) or by_locale[FALLBACK_LOCALE]
    try:
        return Rendered(title.format_map(intent.data), body.format_map(intent.data))
    except KeyError as exc:
        raise ConfigError(f"template {intent.template!r} needs field {exc.args[0]!r}") from None
