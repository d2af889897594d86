"""Alert rules: which game events become which intents, at what priority, for which segments.

A rule's segment and collapse-key templates are filled from the event (``{team_id}``, ``{game_id}``,
``{sport}``, ``{league}``). Intent ids are derived from the event id and the rule name, so the same
event always yields the same intent id and the delivery markers can recognise a repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from goalhorn.errors import ConfigError
from goalhorn.models import EventKind, GameEvent, Intent


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kinds: frozenset[EventKind]
    priority: int
    segments: tuple[str, ...]
    template: str
    ttl_s: int = 300
    collapse_key: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= 9:
            raise ConfigError(f"rule {self.name!r}: priority {self.priority} is outside 0..9")
        if not self.segments:
            raise ConfigError(f"rule {self.name!r} has no segments")


GOAL_RULE = Rule(
    name="goal",
    kinds=frozenset({EventKind.GOAL}),
    priority=9,
    segments=("team:{team_id}:followers",),
    template="goal",
    ttl_s=300,
    collapse_key="goal:{game_id}",
)

DEFAULT_RULES: tuple[Rule, ...] = (GOAL_RULE,)


def _fields(event: GameEvent) -> dict[str, str]:
    return {
        "team_id": event.team_id or "",
        "game_id": event.game_id,
        "sport": event.sport.value,
        "league": event.league,
    }


def intent_id_for(event_id: str, rule_name: str) -> str:
    return hashlib.blake2b(f"{event_id}|{rule_name}".encode(), digest_size=12).hexdigest()


def intents_for(event: GameEvent, rules: Iterable[Rule], now: datetime) -> list[Intent]:
    """The intents ``event`` triggers under ``rules``."""
    fields = _fields(event)
    intents: list[Intent] = []
    for rule in rules:
        if event.kind not in rule.kinds:
            continue
        try:
            segments = tuple(s.format_map(fields) for s in rule.segments)
            collapse = rule.collapse_key.format_map(fields) if rule.collapse_key else None
        except KeyError as exc:
            raise ConfigError(f"rule {rule.name!r} uses unknown field {exc.args[0]!r}") from None
        data = {
            "team": event.team or "",
            "home_team": event.home_team,
            "away_team": event.away_team,
            "home_score": str(event.home_score),
            "away_score": str(event.away_score),
            "clock": event.display_clock or f"P{event.period}",
        }
        if event.player:
            data["player"] = event.player
        intents.append(
            Intent(
                intent_id=intent_id_for(event.event_id, rule.name),
                event_id=event.event_id,
                kind=event.kind,
                sport=event.sport,
                game_id=event.game_id,
                team_id=event.team_id,
                priority=rule.priority,
                segments=segments,
                template=rule.template,
                data=data,
                collapse_key=collapse,
                event_at=event.observed_at,
                created_at=now,
                expires_at=now + timedelta(seconds=rule.ttl_s),
            )
        )
    return intents
