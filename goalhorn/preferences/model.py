"""A subscriber's preferences and devices in the compact forms the expander reads.

Both are stored as short values in bucketed Redis hashes (see ``goalhorn.preferences.store``): a
user's devices are their compact ``Device`` JSON, one per line, each starting with its platform
(``{"platform":"fcm",...``), so the expander copies them into delivery batches by platform without
parsing them; preferences are a JSON object with short keys that is absent altogether for a user on
the defaults, which is most. Last-seen times live apart, so the app opening does not rewrite what the
expander reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import from_json

from goalhorn.errors import ConfigError
from goalhorn.models import Device


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local ``start``-``end`` in minutes after midnight; an ``end`` before ``start`` wraps midnight."""

    start: int
    end: int

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not 0 <= value < 24 * 60:
                raise ConfigError(f"quiet hours {name} {value} is not a minute of the day (0..1439)")


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``max_alerts`` alerts per match within any ``window_s`` seconds."""

    max_alerts: int
    window_s: int = 600

    def __post_init__(self) -> None:
        if self.max_alerts < 0 or self.window_s < 1:
            raise ConfigError(f"a cap needs max_alerts >= 0 and window_s >= 1, not {self.max_alerts}/{self.window_s}")


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a user wants besides the defaults (every default kind, any hour, no cap)."""

    time_zone: str = "UTC"
    quiet_hours: QuietHours | None = None
    muted_teams: frozenset[str] = field(default_factory=frozenset)
    muted_matches: frozenset[str] = field(default_factory=frozenset)
    opted_in: frozenset[str] = field(default_factory=frozenset)
    opted_out: frozenset[str] = field(default_factory=frozenset)
    cap: Cap | None = None

    def is_default(self) -> bool:
        return self == DEFAULT_PREFERENCES

    def with_changes(self, **changes: Any) -> Preferences:
        return replace(self, **changes)

    def record(self) -> dict[str, Any]:
        """The compact record: short keys, only what differs from the defaults (what Redis holds)."""
        out: dict[str, Any] = {}
        if self.time_zone != "UTC":
            out["tz"] = self.time_zone
        if self.quiet_hours is not None:
            out["q"] = [self.quiet_hours.start, self.quiet_hours.end]
        for key, values in (
            ("mt", self.muted_teams),
            ("mm", self.muted_matches),
            ("in", self.opted_in),
            ("out", self.opted_out),
        ):
            if values:
                out[key] = sorted(values)
        if self.cap is not None:
            out["cap"] = [self.cap.max_alerts, self.cap.window_s]
        return out

    def encode(self) -> bytes:
        return json.dumps(self.record(), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Preferences:
        return cls.from_record(from_json(raw))

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Preferences:
        quiet = data.get("q")
        return cls(
            time_zone=data.get("tz", "UTC"),
            quiet_hours=QuietHours(quiet[0], quiet[1]) if quiet else None,
            muted_teams=frozenset(data.get("mt", ())),
            muted_matches=frozenset(data.get("mm", ())),
            opted_in=frozenset(data.get("in", ())),
            opted_out=frozenset(data.get("out", ())),
            cap=record_cap(data),
        )


HARMLESS_KEYS = frozenset({"tz", "in"})
"""Keys of a preferences record that can never exclude its user from an alert that needs no opt-in: a
time zone (it only places quiet hours, and there are none) and opt-ins (they only add alerts)."""


def can_exclude(raw: bytes | str | None) -> bool:
    """Whether a stored preferences record (None: the user has none) may keep its user from an alert
    that needs no opt-in: a mute, an opt-out, quiet hours or a cap. An unreadable one may (it is
    looked at per token, where it is reported)."""
    if raw is None:
        return False
    try:
        record = from_json(raw)
    except ValueError:
        return True
    return not isinstance(record, dict) or not set(record) <= HARMLESS_KEYS


def record_cap(record: dict[str, Any]) -> Cap | None:
    """The cap of a compact preferences record, if it has one."""
    cap = record.get("cap")
    return Cap(cap[0], cap[1]) if cap else None


DEFAULT_PREFERENCES = Preferences()


_DEVICE_LIST = TypeAdapter(list[Device])


def encode_devices(devices: list[Device]) -> bytes:
    """One user's devices: compact JSON lines, platform first (JSON escapes every newline in a string,
    so a line is always one device)."""
    return b"\n".join(d.to_json() for d in devices)


def decode_devices(raw: bytes) -> list[Device]:
    """Devices from their stored lines, parsed and validated in one pass by pydantic-core."""
    return _DEVICE_LIST.validate_json(b"[" + raw.replace(b"\n", b",") + b"]")


def encode_last_seen(seen: dict[str, datetime]) -> bytes:
    return json.dumps({k: int(v.timestamp()) for k, v in seen.items()}, separators=(",", ":")).encode()


def decode_last_seen(raw: bytes | str) -> dict[str, datetime]:
    return {k: datetime.fromtimestamp(v, UTC) for k, v in json.loads(raw).items()}
