"""What a scoring play was, per sport, when a push feed does not name it plainly.

Sportradar names a basket (``twopointmade``) and a hockey goal (``goal``), but not every score:

- **American football**: a scoring play is a ``pass``, ``rush``, ``punt`` return... with
  ``scoring_play: true``. The points one side gained tell it apart: 6 (7 or 8 when the try came in
  the same message) is a touchdown, 3 a field goal, 1 an extra point, and 2 either a safety (scored by
  the side without the ball) or a two-point conversion (by the side with it, or on a ``conversion``
  play). A field goal, an extra point and a conversion are also recognised by their play type when
  the previous score is unknown (the first message after connecting).
- **Baseball**: there is no run event; ``pitch``, ``atbat`` or ``steal`` messages carry the game's
  ``runs``, and a run is a side's runs going up (one ``RUN`` per message, however many scored on it).
"""

from __future__ import annotations

from goalhorn.models import EventKind

FIELD_GOAL_PLAYS = frozenset({"fieldgoal", "field_goal"})
EXTRA_POINT_PLAYS = frozenset({"extrapoint", "extra_point"})
CONVERSION_PLAYS = frozenset({"conversion", "two_point_conversion", "twopointconversion"})


def football_kind(gained: int | None, play: str | None, *, by_offense: bool | None) -> EventKind:
    """The kind of a football scoring play: ``gained`` points by the side that scored (None when the
    score before it is unknown), the play type, and whether that side had the ball (None: unknown)."""
    if gained is None:
        if play in FIELD_GOAL_PLAYS:
            return EventKind.FIELD_GOAL
        if play in EXTRA_POINT_PLAYS:
            return EventKind.EXTRA_POINT
        if play in CONVERSION_PLAYS:
            return EventKind.TWO_POINT_CONVERSION
        return EventKind.SCORE
    if gained in (6, 7, 8):
        return EventKind.TOUCHDOWN
    if gained == 3:
        return EventKind.FIELD_GOAL
    if gained == 1:
        return EventKind.EXTRA_POINT
    if gained == 2:
        if play in CONVERSION_PLAYS or by_offense is True:
            return EventKind.TWO_POINT_CONVERSION
        return EventKind.SAFETY
    return EventKind.SCORE
