"""Alert rules: which game events become which intents, at what priority, for which segments.

Rules come from the YAML catalog (``goalhorn.catalog``). A rule's collapse-key template is
filled from the event (``{team_id}``, ``{game_id}``, ``{sport}``, ``{league}``, ``{token_id}``); its
segments are names the segmenter resolves against the same fields when it expands the intent. Intent
ids are derived from the event id and the rule name, so the same event always yields the same intent
id and the delivery markers can recognise a repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from goalhorn.catalog.rules import Rule
from goalhorn.models import EventKind, GameEvent, Intent, Sport


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def event_fields(event: GameEvent) -> dict[str, str]:
    return {
        "team_id": event.team_id or "",
        "game_id": event.game_id,
        "sport": event.sport.value,
        "league": event.league,
    }


def intent_id_for(event_id: str, rule_name: str) -> str:
    return hashlib.blake2b(f"{event_id}|{rule_name}".encode(), digest_size=12).hexdigest()


def intent_of(
    rule: Rule,
    *,
    event_id: str,
    kind: EventKind,
    sport: Sport,
    game_id: str,
    team_id: str | None,
    data: dict[str, str],
    fields: Mapping[str, str],
    event_at: datetime,
    now: datetime,
) -> Intent:
    """The intent ``rule`` makes of one event; ``fields`` fill its collapse-key template."""
    return Intent(
        intent_id=intent_id_for(event_id, rule.name),
        event_id=event_id,
        kind=kind,
        sport=sport,
        game_id=game_id,
        team_id=team_id,
        priority=rule.priority,
        segments=rule.segments,
        template=rule.template,
        data=data,
        collapse_key=rule.collapse_key.format_map(_Blank(fields)) if rule.collapse_key else None,
        event_at=event_at,
        created_at=now,
        expires_at=now + timedelta(seconds=rule.ttl_s),
        bypass_quiet_hours=rule.bypass_quiet_hours,
        opt_in_required=rule.opt_in_required,
    )


def intents_for(event: GameEvent, rules: Iterable[Rule], now: datetime) -> list[Intent]:
    """The intents ``event`` triggers under ``rules``."""
    matching = [rule for rule in rules if event.kind in rule.kinds]
    if not matching:
        return []
    data = {
        "team": event.team or "",
        "home_team": event.home_team,
        "away_team": event.away_team,
        "home_score": str(event.home_score),
        "away_score": str(event.away_score),
        "clock": event.display_clock or f"P{event.period}",
        "league": event.league,
    }
    if event.player:
        data["player"] = event.player
    fields = event_fields(event)
    return [
        intent_of(
            rule,
            event_id=event.event_id,
            kind=event.kind,
            sport=event.sport,
            game_id=event.game_id,
            team_id=event.team_id,
            data=data,
            fields=fields,
            event_at=event.observed_at,
            now=now,
        )
        for rule in matching
    ]


def intent_fields(intent: Intent) -> dict[str, str]:
    """The template fields of an intent, for resolving its segments."""
    return {
        "team_id": intent.team_id or "",
        "game_id": intent.game_id,
        "sport": intent.sport.value,
        "league": intent.data.get("league", ""),
        "token_id": intent.data.get("token_id", ""),
    }
