"""Whether a user's preferences let an intent through, and if not, why.

Checked in this order, the first that applies being the reason: the kind is opted out of (or needs an
opt-in the user did not give), the team or the match is muted, the user is in quiet hours (unless the
rule bypasses them). Caps come last and need Redis (``goalhorn.preferences.caps``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from goalhorn.models import Intent
from goalhorn.preferences.model import Preferences
from goalhorn.preferences.quiet_hours import is_quiet

Reason = Literal["opted_out", "muted", "quiet_hours", "capped"]
REASONS: tuple[Reason, ...] = ("opted_out", "muted", "quiet_hours", "capped")


def suppression(prefs: Preferences, intent: Intent, now: datetime) -> Reason | None:
    """Why ``prefs`` keep ``intent`` from its user at ``now``, or None when they let it through."""
    kind = intent.kind.value
    if kind in prefs.opted_out or (intent.opt_in_required and kind not in prefs.opted_in):
        return "opted_out"
    if (intent.team_id is not None and intent.team_id in prefs.muted_teams) or intent.game_id in prefs.muted_matches:
        return "muted"
    quiet = prefs.quiet_hours
    if not intent.bypass_quiet_hours and quiet is not None and is_quiet(quiet, prefs.time_zone, now):
        return "quiet_hours"
    return None
