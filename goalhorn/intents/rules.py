"""Alert rules: which game events become which intents, at what priority, for which segments.

Rules come from the YAML catalog (``goalhorn.intents.catalog``). A rule's collapse-key template is
filled from the event (``{team_id}``, ``{game_id}``, ``{sport}``, ``{league}``, ``{token_id}``); its
segments are names the segmenter resolves against the same fields when it expands the intent. Intent
ids are derived from the event id and the rule name, so the same event always yields the same intent
id and the delivery markers can recognise a repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from goalhorn.intents.located import Path, Problems
from goalhorn.models import EventKind, GameEvent, Intent, Sport
from goalhorn.segmenter.definitions import check_template

RULE_KEYS = (
    "kinds",
    "priority",
    "segments",
    "template",
    "ttl_s",
    "collapse_key",
    "bypass_quiet_hours",
    "opt_in_required",
    "description",
)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    kinds: frozenset[EventKind]
    priority: int
    segments: tuple[str, ...]
    template: str
    ttl_s: int = 300
    collapse_key: str | None = None
    bypass_quiet_hours: bool = False
    opt_in_required: bool = False


def parse_rules(
    raw: Any, path: Path, problems: Problems, segments: Collection[str], templates: Collection[str]
) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add(path, "rules must be a mapping of name -> rule")
        return ()
    rules = []
    for name, body in raw.items():
        where = (*path, name)
        if not isinstance(body, dict):
            problems.add(where, f"rule {name!r} must be a mapping")
            continue
        before = len(problems.found)
        for key in body:
            if key not in RULE_KEYS:
                problems.add((*where, key), f"unknown key {key!r} in rule {name!r} (expected {', '.join(RULE_KEYS)})")
        for key in ("kinds", "priority", "segments", "template"):
            if key not in body:
                problems.add(where, f"rule {name!r} needs {key}")
        kinds = body.get("kinds", [])
        if not isinstance(kinds, list) or not kinds:
            problems.add((*where, "kinds"), "kinds must be a non-empty list of event kinds")
            kinds = []
        for kind in kinds:
            if kind not in EventKind.__members__:
                problems.add((*where, "kinds"), f"unknown event kind {kind!r} (known: {', '.join(EventKind)})")
        priority = body.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            problems.add((*where, "priority"), f"priority {priority!r} is outside 0..9")
        names = body.get("segments", [])
        if not isinstance(names, list) or not names:
            problems.add((*where, "segments"), "segments must be a non-empty list of segment names")
            names = []
        for segment in names:
            if segment not in segments:
                problems.add((*where, "segments"), f"unknown segment {segment!r}")
        template = body.get("template")
        if "template" in body and template not in templates:
            problems.add((*where, "template"), f"unknown template {template!r}")
        ttl = body.get("ttl_s", 300)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            problems.add((*where, "ttl_s"), f"ttl_s {ttl!r} must be a positive number of seconds")
        collapse = body.get("collapse_key")
        if collapse is not None:
            check_template(str(collapse), (*where, "collapse_key"), problems, f"collapse_key {collapse!r}")
        for flag in ("bypass_quiet_hours", "opt_in_required"):
            if not isinstance(body.get(flag, False), bool):
                problems.add((*where, flag), f"{flag} must be true or false")
        if len(problems.found) > before:
            continue
        rules.append(
            Rule(
                name=name,
                kinds=frozenset(EventKind[k] for k in kinds),
                priority=priority,
                segments=tuple(names),
                template=str(template),
                ttl_s=ttl,
                collapse_key=None if collapse is None else str(collapse),
                bypass_quiet_hours=body.get("bypass_quiet_hours", False),
                opt_in_required=body.get("opt_in_required", False),
            )
        )
    return tuple(rules)


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
