"""Quiet hours: whether an instant falls inside a user's quiet window, in the user's own time zone.

The window is in local wall-clock minutes, so it follows daylight-saving changes: 22:00-07:00 in
New York is 03:00-12:00 UTC in winter and 02:00-11:00 UTC in summer. A window whose end is before
its start wraps midnight; an empty window (start == end) is never quiet.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from goalhorn.errors import ConfigError
from goalhorn.preferences.model import QuietHours


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name; ConfigError for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}") from None


def local_minute(at: datetime, time_zone: str) -> int:
    """Minutes after local midnight at the aware instant ``at``."""
    local = at.astimezone(zone(time_zone))
    return local.hour * 60 + local.minute


def in_window(start: int, end: int, minute: int) -> bool:
    """Whether a local ``minute`` of the day falls in the quiet window ``start``-``end``."""
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


def is_quiet(quiet: QuietHours, time_zone: str, at: datetime) -> bool:
    return in_window(quiet.start, quiet.end, local_minute(at, time_zone))
