"""Message templates: an intent's template key and data rendered to a title and body in a locale.

A locale falls back to its language (``pt-BR`` -> ``pt``) and then to English.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter

from goalhorn.errors import ConfigError
from goalhorn.models import Intent

FALLBACK_LOCALE = "en"

TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "goal": {
        "en": ("GOAL! {team}", "{away_team} {away_score} - {home_score} {home_team} ({clock})"),
        "es": ("¡GOL! {team}", "{away_team} {away_score} - {home_score} {home_team} ({clock})"),
        "pt": ("GOL! {team}", "{away_team} {away_score} - {home_score} {home_team} ({clock})"),
        "fr": ("BUT ! {team}", "{away_team} {away_score} - {home_score} {home_team} ({clock})"),
    },
    "message": {"en": ("{title}", "{body}")},
}


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str


def template_fields(key: str) -> set[str]:
    """The data fields a template needs, over all its locales."""
    fields: set[str] = set()
    for title, body in TEMPLATES[key].values():
        for text in (title, body):
            fields.update(name for _, name, _, _ in Formatter().parse(text) if name)
    return fields


def render(intent: Intent, locale: str) -> Rendered:
    """Render ``intent`` for ``locale``; raises ConfigError for an unknown template or missing field."""
    try:
        by_locale = TEMPLATES[intent.template]
    except KeyError:
        raise ConfigError(f"unknown message template {intent.template!r}") from None
    language = locale.split("-", 1)[0].split("_", 1)[0].lower()
    title, body = by_locale.get(locale) or by_locale.get(language) or by_locale[FALLBACK_LOCALE]
    try:
        return Rendered(title.format_map(intent.data), body.format_map(intent.data))
    except KeyError as exc:
        raise ConfigError(f"template {intent.template!r} needs field {exc.args[0]!r}") from None
