"""Whether a user's preferences let an intent through, and if not, why.

Checked in this order, the first that applies being the reason: the kind is opted out of (or needs an
opt-in the user did not give), the team or the match is muted, the user is in quiet hours (unless the
rule bypasses them). Caps come last and need Redis (``goalhorn.preferences.caps``).

The check reads the compact record Redis holds (``Preferences.record``), as the expander gets it, so
a preference lookup costs one JSON parse and a few list lookups; an ``Eligibility`` is built once per
intent and instant and keeps each time zone's local minute and each distinct record's verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic_core import from_json

from goalhorn.models import Intent
from goalhorn.preferences.model import Cap, Preferences, record_cap
from goalhorn.preferences.quiet_hours import in_window, local_minute

MAX_VERDICTS = 100_000
Reason = Literal["opted_out", "muted", "quiet_hours", "capped"]
REASONS: tuple[Reason, ...] = ("opted_out", "muted", "quiet_hours", "capped")


class Eligibility:
    """Why a compact preferences record keeps one intent from its user at one instant."""

    __slots__ = ("_game", "_kind", "_minutes", "_now", "_opt_in", "_quiet_applies", "_team", "_verdicts", "default")

    def __init__(self, intent: Intent, now: datetime) -> None:
        self._kind = intent.kind.value
        self._opt_in = intent.opt_in_required
        self._team = intent.team_id
        self._game = intent.game_id
        self._quiet_applies = not intent.bypass_quiet_hours
        self._now = now
        self._minutes: dict[str, int] = {}
        self._verdicts: dict[bytes, tuple[Reason | None, Cap | None]] = {}
        self.default: Reason | None = self.reason({})
        """The reason a user on the defaults is suppressed (an opt-in they lack), or None."""

    def judge(self, raw: bytes) -> tuple[Reason | None, Cap | None]:
        """The reason a stored preferences record suppresses the intent (None: it lets it through) and
        its cap. Verdicts are kept per record: users often share one (the same team muted, the same
        kinds opted out of). ValueError, TypeError or LookupError for a record of the wrong shape."""
        verdict = self._verdicts.get(raw)
        if verdict is None:
            record = from_json(raw)
            verdict = (self.reason(record), record_cap(record))
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[raw] = verdict
        return verdict

    def reason(self, record: Mapping[str, Any]) -> Reason | None:
        """The reason ``record`` suppresses the intent, or None when it lets it through. ValueError
        (or TypeError, LookupError) for a record of the wrong shape."""
        kind = self._kind
        opted_out, opted_in, teams, matches = record.get("out"), record.get("in"), record.get("mt"), record.get("mm")
        if not (
            (opted_out is None or type(opted_out) is list)
            and (opted_in is None or type(opted_in) is list)
            and (teams is None or type(teams) is list)
            and (matches is None or type(matches) is list)
        ):  # a string would turn membership into a substring test
            raise ValueError("a preferences list field (out, in, mt, mm) is not a list")
        if (opted_out and kind in opted_out) or (self._opt_in and not (opted_in and kind in opted_in)):
            return "opted_out"
        if (self._team is not None and teams and self._team in teams) or (matches and self._game in matches):
            return "muted"
        quiet = record.get("q")
        if quiet and self._quiet_applies and in_window(quiet[0], quiet[1], self._minute(record.get("tz", "UTC"))):
            return "quiet_hours"
        return None

    def _minute(self, time_zone: str) -> int:
        minute = self._minutes.get(time_zone)
        if minute is None:
            minute = self._minutes[time_zone] = local_minute(self._now, time_zone)
        return minute


def suppression(prefs: Preferences, intent: Intent, now: datetime) -> Reason | None:
    """Why ``prefs`` keep ``intent`` from its user at ``now``, or None when they let it through."""
    return Eligibility(intent, now).reason(prefs.record())
