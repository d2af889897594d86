"""Alert rules: which game events become which intents, at what priority, for which segments.

Rules come from the YAML catalog (``goalhorn.catalog``). A rule with a condition (``when:``) takes
only the events whose facts (``event_facts``: scores, margins, the clock, who scored, a lead that
changed; the win probabilities the ingest stage adds) make it true. A rule's collapse-key template is
filled from the event (``{team_id}``, ``{game_id}``, ``{sport}``, ``{league}``, ``{token_id}``); its
segments are names the segmenter resolves against the same fields when it expands the intent. Intent
ids are derived from the event id and the rule name, so the same event always yields the same intent
id and the delivery markers can recognise a repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from goalhorn.catalog.conditions import Value
from goalhorn.catalog.rules import Rule
from goalhorn.models import EventKind, GameEvent, Intent, Sport

COUNTDOWN = frozenset({Sport.BASKETBALL, Sport.HOCKEY, Sport.FOOTBALL})
"""Sports whose clock counts down, so that ``clock_s`` is what is left of the period."""


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


def event_side(event: GameEvent) -> bool | None:
    """True if the event's team is the home team, False if the away team, None if it has no team."""
    if event.team is None:
        return None
    return True if event.team == event.home_team else False if event.team == event.away_team else None


def event_facts(event: GameEvent, extra: Mapping[str, Value] | None = None) -> dict[str, Value]:
    """The facts rule conditions read (``goalhorn.catalog.conditions.FIELDS``); ``extra`` adds the ones
    the event cannot tell alone (``win_prob_before``, ``win_prob_after``). Unknown facts are None."""
    home, away = event.home_score, event.away_score
    side = event_side(event)
    before = (
        (event.home_score_before, event.away_score_before)
        if event.home_score_before is not None and event.away_score_before is not None
        else None
    )
    team_margin = None if side is None else (home - away if side else away - home)
    points = lead_changed = None
    if side is not None and before is not None:
        points = (home - before[0]) if side else (away - before[1])
        was = before[0] - before[1] if side else before[1] - before[0]
        lead_changed = was <= 0 < (team_margin or 0)
    facts: dict[str, Value] = {
        "kind": event.kind.value,
        "sport": event.sport.value,
        "league": event.league,
        "team_id": event.team_id or "",
        "period": event.period,
        "home_score": home,
        "away_score": away,
        "margin": home - away,
        "team_margin": team_margin,
        "points": points,
        "seconds_left": event.clock_s if event.sport in COUNTDOWN else None,
        "lead_changed": lead_changed,
        "tied": home == away,
        "is_home": side,
        "win_prob_before": None,
        "win_prob_after": None,
    }
    if extra:
        facts.update(extra)
    return facts


@dataclass(frozen=True, slots=True)
class Original:
    """An alert a correction may take back: the intent's id, the segments and collapse key it went out with."""

    intent_id: str
    segments: tuple[str, ...]
    collapse_key: str | None

    def to_dict(self) -> dict[str, object]:
        return {"intent_id": self.intent_id, "segments": list(self.segments), "collapse_key": self.collapse_key}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Original:
        segments = raw.get("segments")
        collapse = raw.get("collapse_key")
        if not isinstance(raw.get("intent_id"), str) or not isinstance(segments, list) or not segments:
            raise ValueError("not a recorded alert")
        return cls(str(raw["intent_id"]), tuple(str(s) for s in segments), None if collapse is None else str(collapse))


def originals_of(intents: Iterable[Intent]) -> list[Original]:
    return [Original(i.intent_id, i.segments, i.collapse_key) for i in intents]


def corrections_for(
    event: GameEvent,
    rules: Iterable[Rule],
    originals: Sequence[Original],
    now: datetime,
    extra: Mapping[str, Value] | None = None,
) -> list[Intent]:
    """The intents of ``to_original_recipients`` rules for a correction of the alerts ``originals``:
    one per original, to its segments (the expander keeps only the devices it was sent to, by
    ``data["corrects"]``) under its collapse key, so it replaces the wrong alert on the phone."""
    if event.kind is not EventKind.SCORE_CORRECTION or not originals:
        return []
    matching = [rule for rule in rules if rule.to_original_recipients and event.kind in rule.kinds]
    if any(rule.when is not None for rule in matching):
        facts = event_facts(event, extra)
        matching = [rule for rule in matching if rule.when is None or rule.when.test(facts)]
    out = []
    for rule in matching:
        for original in originals:
            follows = replace(rule, name=f"{rule.name}:{original.intent_id}", segments=original.segments)
            intent = intent_of(
                follows,
                event_id=event.event_id,
                kind=event.kind,
                sport=event.sport,
                game_id=event.game_id,
                team_id=event.team_id,
                data={**event_data(event), "corrects": original.intent_id},
                fields=event_fields(event),
                event_at=event.observed_at,
                now=now,
            )
            out.append(intent.model_copy(update={"collapse_key": original.collapse_key}))
    return out


def event_data(event: GameEvent) -> dict[str, str]:
    """The template data of a game event's intents."""
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
    return data


def intents_for(
    event: GameEvent, rules: Iterable[Rule], now: datetime, extra: Mapping[str, Value] | None = None
) -> list[Intent]:
    """The intents ``event`` triggers under ``rules``; ``extra`` facts feed their conditions.
    (``to_original_recipients`` rules are :func:`corrections_for`'s.)"""
    matching = [rule for rule in rules if event.kind in rule.kinds and not rule.to_original_recipients]
    if any(rule.when is not None for rule in matching):
        facts = event_facts(event, extra)
        matching = [rule for rule in matching if rule.when is None or rule.when.test(facts)]
    if not matching:
        return []
    data = event_data(event)
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
