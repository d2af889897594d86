"""Live Activity intents: a game's state change as an update of its score ticker, for iOS Live
Activities (ActivityKit push notifications) and Android live updates (an FCM data message).

One intent per game and change, with the audience ``live:<game key>`` (the game key, ``<source>:<feed's
game id>``, is the sidecar's id of the game); the fanout turns it into sends to the game's broadcast
channel, its activities' update tokens, push-to-start tokens (start only) and Android registrations.
The intent carries the ``aps`` dictionary the APNs provider sends as it is (``data["liveactivity"]``)
and the Android data message (``data["live_update"]``), both of one content-state schema, so no later
stage has to know a game. Which changes become intents, and at which priority, is decided by
``goalhorn.intents.live_pacing``; this module only builds them. A payload that would not fit Apple's
limits (4 KB token, 5 KB broadcast) or FCM's (4 KB of data) has its free texts cut (``last_event``,
``detail``, then alert and names) rather than being refused: the score is what the ticker is for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from goalhorn.models import SCORING_KINDS, EventKind, GameEvent, GameState, GameStatus, Intent

TEMPLATE = "liveactivity"
"""The intent's template name: the catalog never renders it (the intent carries its payloads)."""
ATTRIBUTES_TYPE = "GameActivityAttributes"
"""The app's ``ActivityAttributes`` type a push-to-start names."""
HIGH = 9
"""Intent priority of start, end, scores and red cards: sent at APNs priority 10."""
LOW = 3
"""Intent priority of clock and status ticks (and scores past the hourly budget): APNs priority 5."""
TOKEN_LIMIT = 4096
"""Apple's largest Live Activity payload sent to a token (bytes)."""
BROADCAST_LIMIT = 5120
"""Apple's largest broadcast (channel) payload (bytes)."""
FCM_DATA_LIMIT = 4096
"""FCM's largest data payload (bytes)."""
HEADROOM = 160
"""Bytes kept free below the token limit for what the fanout adds: ``input-push-channel`` on a push-to-start
(``, "input-push-channel": "<id>"``: 28 bytes and the channel id)."""
STALE_S = 1200
"""A ticker not updated for 20 minutes is shown as stale (ingest stopped, or its updates do not reach the
phone); a live game whose content does not change is refreshed before (``live_pacing.REFRESH_S``)."""
TTL_S = {"tick": 120, "update": 600, "end": 1800}
"""How long an intent may wait to be sent: a tick is soon superseded, an end must reach every phone."""
CUTS = (None, 120, 40, 12, 0)
"""The lengths ``last_event`` and ``detail`` are cut to, in turn, until the payloads fit."""
NAME_CUTS = (None, 64, 16)
"""The same for every other text (names, clock, alert), once the first two are gone."""

LiveEvent = Literal["start", "update", "end"]

NOTED = SCORING_KINDS | {EventKind.RED_CARD, EventKind.SCORE_CORRECTION}
"""Events the ticker names as its ``last_event``."""
URGENT = NOTED | {EventKind.GAME_START, EventKind.GAME_END}
"""Events worth an APNs priority-10 update (budget permitting, see ``goalhorn.intents.live_pacing``)."""


def game_key(state: GameState) -> str:
    """``<source>:<game id>``, as ``goalhorn.ingest.live`` and the sidecar name games."""
    return f"{state.source}:{state.game_id}"


def audience(key: str) -> str:
    """The intent's segment: every Live Activity and live update registered for the game."""
    return f"live:{key}"


def last_event_of(events: Iterable[GameEvent]) -> str:
    """The ticker's line for the last noted event (``"GOAL Messi 67'"``); ``""`` if there is none."""
    noted = [event for event in events if event.kind in NOTED]
    if not noted:
        return ""
    event = noted[-1]
    who = event.player or event.team or ""
    return " ".join(part for part in (event.kind.value.replace("_", " "), who, event.display_clock) if part)


def kind_of(events: Sequence[GameEvent], live_event: LiveEvent) -> EventKind:
    """The intent's kind: the start or end, else the last urgent event, else the last one, else a tick."""
    if live_event == "start":
        return EventKind.GAME_START
    if live_event == "end":
        return EventKind.GAME_END
    urgent = [event.kind for event in events if event.kind in URGENT]
    if urgent:
        return urgent[-1]
    return events[-1].kind if events else EventKind.LIVE_UPDATE


def wants_high(events: Iterable[GameEvent]) -> bool:
    return any(event.kind in URGENT for event in events)


def content_state(state: GameState, last_event: str) -> dict[str, str | int]:
    """The ticker's content, one schema for iOS (``content-state``) and Android (flattened to strings)."""
    return {
        "home": state.home_team,
        "away": state.away_team,
        "home_score": state.home_score,
        "away_score": state.away_score,
        "period": state.period,
        "clock": state.display_clock,
        "status": state.status.value,
        "detail": state.status_detail,
        "last_event": last_event,
        "updated_at": int(state.observed_at.timestamp()),
    }


def content_digest(state: GameState) -> str:
    """What a tick compares: the content without ``last_event`` (kept apart) and ``updated_at`` (which
    changes on every poll)."""
    content = content_state(state, "")
    del content["updated_at"], content["last_event"]
    return hashlib.blake2b(_compact(content).encode(), digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Sizes:
    """Bytes of what the providers send, as they send it (the intent's ids beside the payload, their JSON
    separators), measured with non-ASCII text escaped (never smaller)."""

    token: int
    """``{"aps": ..., "intent_id": ..., "event_id": ...}`` to one activity's token as aioapns writes it
    (``", "`` and ``": "``), with ``HEADROOM`` for the ``input-push-channel`` of a start."""
    broadcast: int
    """The same document, compact, sent to the game's channel."""
    android: int
    """The FCM message's ``{"data": {...}}`` (the live update and the intent's ids), compact, as FCM
    measures its 4 KB."""

    def fit(self) -> bool:
        return self.token <= TOKEN_LIMIT and self.broadcast <= BROADCAST_LIMIT and self.android <= FCM_DATA_LIMIT


def sizes_of(intent: Intent) -> Sizes:
    ids = {"intent_id": intent.intent_id, "event_id": intent.event_id}
    document = {"aps": json.loads(intent.data["liveactivity"]), **ids}
    token = len(json.dumps(document).encode())  # aioapns' separators, ", " and ": "
    broadcast = len(json.dumps(document, separators=(",", ":")).encode())
    data = {**json.loads(intent.data["live_update"]), **ids}
    android = len(json.dumps({"data": data}, separators=(",", ":")).encode())
    return Sizes(token=token + HEADROOM, broadcast=broadcast, android=android)


def live_intent(
    state: GameState,
    events: Sequence[GameEvent],
    *,
    live_event: LiveEvent,
    priority: int,
    last_event: str,
    now: datetime,
    dismiss_s: int,
) -> Intent:
    """The intent of one change of ``state``'s game, cut to fit every provider's limit.

    ``events`` are the events of the change (they name its kind, scoring team and alert);
    ``last_event`` is the ticker's line (kept from an earlier change when this one has none).
    """
    for names in NAME_CUTS:
        for cut in CUTS if names is None else (0,):
            intent = _build(state, events, live_event, priority, last_event, now, dismiss_s, cut, names)
            if sizes_of(intent).fit():
                return intent
    raise ValueError(f"the Live Activity of {game_key(state)} does not fit even with its texts cut")  # pragma: no cover


def _build(
    state: GameState,
    events: Sequence[GameEvent],
    live_event: LiveEvent,
    priority: int,
    last_event: str,
    now: datetime,
    dismiss_s: int,
    cut: int | None,
    names: int | None,
) -> Intent:
    key = game_key(state)
    shown = state.model_copy(
        update={
            "status_detail": _cut(state.status_detail, cut),
            "home_team": _cut(state.home_team, names),
            "away_team": _cut(state.away_team, names),
            "display_clock": _cut(state.display_clock, names),
        }
    )
    content = content_state(shown, _cut(last_event, cut))
    observed = int(state.observed_at.timestamp())
    kind = kind_of(events, live_event)
    aps: dict[str, object] = {
        "event": live_event,
        "timestamp": observed,
        "content-state": content,
        "stale-date": observed + STALE_S,
    }
    dismissal = max(observed, int(now.timestamp())) + dismiss_s
    if live_event == "end":
        aps["stale-date"] = dismissal
        aps["dismissal-date"] = dismissal
    alert = _alert(shown, events, live_event, names)
    if alert is not None:
        aps["alert"] = alert
    if live_event == "start":
        aps["attributes-type"] = ATTRIBUTES_TYPE
        aps["attributes"] = {
            "game_id": key,
            "league": _cut(state.league, names),
            "sport": state.sport.value,
            "home_team": shown.home_team,
            "away_team": shown.away_team,
            "home_team_id": _cut(state.home_team_id, names),
            "away_team_id": _cut(state.away_team_id, names),
        }
    android = {
        "activity_id": key,
        "event": live_event,
        "timestamp": str(observed),
        **{name: str(value) for name, value in content.items()},
        "stale_date": str(aps["stale-date"]),
    }
    if live_event == "end":
        android["dismissal_date"] = str(dismissal)
    if alert is not None:
        android["alert_title"], android["alert_body"] = alert["title"], alert["body"]
    event_id = f"live:{key}:{int(state.observed_at.timestamp() * 1000)}"
    scorer = next((e.team_id for e in reversed(events) if e.kind is kind and e.team_id), None)
    ttl = TTL_S["end" if live_event == "end" else "tick" if kind is EventKind.LIVE_UPDATE else "update"]
    return Intent(
        intent_id=hashlib.blake2b(f"{event_id}|{TEMPLATE}".encode(), digest_size=12).hexdigest(),
        event_id=event_id,
        kind=kind,
        sport=state.sport,
        game_id=key,
        team_id=scorer,
        priority=priority,
        segments=(audience(key),),
        template=TEMPLATE,
        data={
            "apns_push_type": "liveactivity",
            "liveactivity": _compact(aps),
            "live_update": _compact(android),
            "activity_id": key,
            "live_event": live_event,
            # whose followers a start goes to (the fanout), never cut like the payload's texts
            "home_team_id": state.home_team_id,
            "away_team_id": state.away_team_id,
        },
        collapse_key=audience(key),
        event_at=state.observed_at,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )


def _alert(
    state: GameState, events: Sequence[GameEvent], live_event: LiveEvent, names: int | None
) -> dict[str, str] | None:
    """The alert of a start, an end or a score (the ticker's own texts: a broadcast is not localised)."""
    score = f"{state.home_team} {state.home_score}-{state.away_score} {state.away_team}"
    if live_event == "start":
        return {"title": f"{state.home_team} vs {state.away_team}", "body": "The game is under way"}
    if live_event == "end" or state.status is GameStatus.FINAL:
        return {"title": "Final", "body": score}
    scores = [event for event in events if event.kind in SCORING_KINDS]
    if not scores:
        return None
    event = scores[-1]
    title = " ".join(part for part in (event.kind.value.replace("_", " "), event.team or "") if part)
    who = " ".join(part for part in (event.player or "", event.display_clock) if part)
    return {"title": _cut(title, names), "body": _cut(f"{score} ({who})" if who else score, names)}


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if limit > 1 else ""


def _compact(value: Mapping[str, object]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
