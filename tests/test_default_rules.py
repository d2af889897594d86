"""The packaged rules alert each sport's scoring plays, starts, red cards, period ends and finals,
in English, Spanish, Portuguese and French, and not every basket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from goalhorn.catalog import default_catalog
from goalhorn.ingest.sportradar import SportradarAdapter
from goalhorn.intents.rules import intents_for
from goalhorn.models import EventKind
from tests.feeds import fixture

AT = datetime(2025, 7, 4, 23, 30, tzinfo=UTC)


def events_of(league: str):
    return SportradarAdapter().feed(fixture(f"sportradar/{league}_push.jsonstream"), received_at=AT).events


@pytest.mark.parametrize(
    ("league", "kind", "priority", "titles"),
    [
        ("mlb", EventKind.RUN, 9, {"en": "NYY score!", "es": "¡Carrera de NYY!", "pt": "Corrida do NYY!"}),
        ("nfl", EventKind.TOUCHDOWN, 9, {"en": "TOUCHDOWN KC!", "fr": "TOUCHDOWN pour KC !"}),
        ("nfl", EventKind.FIELD_GOAL, 8, {"en": "Field goal BUF", "es": "Gol de campo de BUF"}),
        ("nfl", EventKind.SAFETY, 8, {"en": "Safety for KC", "pt": "Safety para o KC"}),
        ("nfl", EventKind.TWO_POINT_CONVERSION, 6, {"en": "Two-point conversion BUF"}),
        ("nhl", EventKind.GOAL, 9, {"en": "GOAL! EDM", "fr": "BUT ! EDM"}),
    ],
)
def test_each_sports_scoring_play_alerts_in_every_language(
    league: str, kind: EventKind, priority: int, titles: dict[str, str]
) -> None:
    catalog = default_catalog()
    event = next(e for e in events_of(league) if e.kind is kind)
    intents = intents_for(event, catalog.rules, AT)
    assert intents, f"no default rule takes {kind}"
    assert {i.priority for i in intents} == {priority}
    for locale, title in titles.items():
        assert catalog.render(intents[0], locale).title == title
    assert all(catalog.render(intents[0], locale).title for locale in ("en", "es", "pt", "fr"))
    body = catalog.render(intents[0], "en").body
    assert f"{event.away_score} - {event.home_score}" in body


def test_every_default_template_has_the_four_languages() -> None:
    catalog = default_catalog()
    missing = {
        name: sorted({"en", "es", "pt", "fr"} - set(locales))
        for name, locales in catalog.templates.items()
        if name not in ("edge", "message")  # for bots and operators
    }
    assert {name: gone for name, gone in missing.items() if gone} == {}


def test_extra_points_and_baskets_alert_nobody_by_default() -> None:
    rules = default_catalog().rules
    assert not [r for r in rules if EventKind.EXTRA_POINT in r.kinds]
    assert not [r for r in rules if EventKind.BASKET in r.kinds and r.when is None], "only conditional ones"
    events = SportradarAdapter().feed(fixture("sportradar/nba_v7_push.jsonstream"), received_at=AT).events
    baskets = [e for e in events if e.kind is EventKind.BASKET]
    assert baskets
    assert all(intents_for(e, rules, AT) == [] for e in baskets)


@pytest.mark.parametrize("kind", [EventKind.GAME_START, EventKind.RED_CARD, EventKind.PERIOD_END, EventKind.GAME_END])
def test_starts_cards_period_ends_and_finals_have_a_rule_for_the_match_watchers(kind: EventKind) -> None:
    (rule,) = [r for r in default_catalog().rules if kind in r.kinds]
    assert rule.segments == ("match_watchers",)
    assert rule.ttl_s >= 300
