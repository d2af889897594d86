"""The JSONL format of ``goalhorn subscribers import`` and ``export``: one subscriber per line.

::

    {"user_id": "u42", "locale": "fr", "timezone": "Europe/Paris",
     "devices": [{"platform": "apns", "address": "<64 hex>"},
                 {"platform": "webhook", "address": "https://bot.example/hook", "secret": "whsec_..."}],
     "follows": {"teams": ["16"], "matches": ["401461562"], "markets": ["7129..."], "sports": ["hockey"]},
     "preferences": {"muted_teams": ["29"], "muted_matches": [], "opted_in": ["GAME_END"],
                     "opted_out": ["GOAL"], "quiet_hours": {"start": "22:30", "end": "07:00"},
                     "cap": {"max_alerts": 1, "window_s": 600}}}

Only ``user_id`` is required; ``preferences`` holds the fields of
:class:`~goalhorn.preferences.model.Preferences` bar the time zone, which is ``timezone``. A
device's ``id`` defaults to one derived from its platform and address, so importing the same file
twice gives the same devices; its ``locale`` defaults to the user's. A line is parsed strictly (no
unknown keys, no numbers for strings) into a :class:`Subscriber`, or rejected with
:class:`LineRejected` naming the field, e.g. ``devices[0].address: not an APNs token``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from goalhorn.admin.addresses import address_problem, secret_problem
from goalhorn.errors import ConfigError
from goalhorn.keys import Platform
from goalhorn.models import Device, EventKind, Sport
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.preferences.quiet_hours import zone
from goalhorn.preferences.store import check_user_id
from goalhorn.providers.ssrf import AddressPolicy

MAX_LINE_BYTES = 64 * 1024
MAX_DEVICES = 50
MAX_ITEMS = 1000
"""Most entries in any one list of a line (follows of a kind, muted teams...)."""
MAX_ID_CHARS = 200
DEFAULT_LOCALE = "en"
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}")
_ID = re.compile(rf"\S{{1,{MAX_ID_CHARS}}}")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_SHOWN_ERRORS = 3


class LineRejected(ValueError):
    """A line that is not a subscriber; the message says where and why."""


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value) or not value.isprintable():
        raise PydanticCustomError("id", f"not an id (1-{MAX_ID_CHARS} printable characters, no spaces)")
    return value


def _check_user_id(value: str) -> str:
    try:
        check_user_id(value)
    except ConfigError:
        raise PydanticCustomError("user_id", "not a user id (printable, without spaces)") from None
    return _check_id(value)


def _check_locale(value: str) -> str:
    if not _LOCALE.fullmatch(value):
        raise PydanticCustomError("locale", "not a locale (like en, pt-BR)")
    return value


def _check_zone(value: str) -> str:
    try:
        zone(value)
    except ConfigError:
        raise PydanticCustomError("timezone", "unknown time zone (an IANA name, like Europe/London)") from None
    return value


def _check_clock(value: str) -> str:
    if not _CLOCK.fullmatch(value):
        raise PydanticCustomError("clock", "not a time of day (HH:MM, 00:00-23:59)")
    return value


Id = Annotated[str, AfterValidator(_check_id)]
Ids = Annotated[tuple[Id, ...], Field(max_length=MAX_ITEMS)]
Locale = Annotated[str, AfterValidator(_check_locale)]
Clock = Annotated[str, AfterValidator(_check_clock)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class DeviceLine(_Strict):
    platform: Platform
    address: str
    secret: str | None = None
    id: Id | None = None
    locale: Locale | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        platform = info.data.get("platform")
        policy = (info.context or {}).get("policy") or AddressPolicy()
        problem = address_problem(platform, value, policy) if platform else None
        if problem:
            raise PydanticCustomError("address", problem)
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("platform") in ("fcm", "apns"):
            raise PydanticCustomError("secret", "only a webhook has a secret")
        problem = secret_problem(value)
        if problem:
            raise PydanticCustomError("secret", problem)
        return value


class FollowsLine(_Strict):
    teams: Ids = ()
    matches: Ids = ()
    markets: Ids = ()
    sports: Annotated[tuple[Sport, ...], Field(max_length=len(Sport))] = ()


class QuietHoursLine(_Strict):
    start: Clock
    end: Clock


class CapLine(_Strict):
    max_alerts: Annotated[int, Field(ge=0, le=1000)]
    window_s: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 600


Kinds = Annotated[tuple[EventKind, ...], Field(max_length=len(EventKind))]


class PreferencesLine(_Strict):
    muted_teams: Ids = ()
    muted_matches: Ids = ()
    opted_in: Kinds = ()
    opted_out: Kinds = ()
    quiet_hours: QuietHoursLine | None = None
    cap: CapLine | None = None


class SubscriberLine(_Strict):
    user_id: Annotated[str, AfterValidator(_check_user_id)]
    locale: Locale = DEFAULT_LOCALE
    timezone: Annotated[str, AfterValidator(_check_zone)] = "UTC"
    devices: Annotated[tuple[DeviceLine, ...], Field(max_length=MAX_DEVICES)] = ()
    follows: FollowsLine = Field(default_factory=FollowsLine)  # a factory: a model default is deep-copied per line
    preferences: PreferencesLine = Field(default_factory=PreferencesLine)


@dataclass(frozen=True, slots=True)
class Follows:
    """What a user follows: the sets the segments are made of."""

    teams: frozenset[str] = frozenset()
    matches: frozenset[str] = frozenset()
    markets: frozenset[str] = frozenset()
    sports: frozenset[str] = frozenset()

    def record(self) -> dict[str, list[str]]:
        """Short keys, sorted, only the kinds followed."""
        out = {}
        for key, values in (("t", self.teams), ("m", self.matches), ("k", self.markets), ("s", self.sports)):
            if values:
                out[key] = sorted(values)
        return out

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Follows:
        return cls(*(frozenset(data.get(key, ())) for key in ("t", "m", "k", "s")))


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One user as the file describes it, in the stores' own types."""

    user_id: str
    locale: str = DEFAULT_LOCALE
    devices: tuple[Device, ...] = ()
    follows: Follows = field(default_factory=Follows)
    preferences: Preferences = field(default_factory=Preferences)


def device_id_for(platform: str, address: str) -> str:
    """The id of a device imported without one: the same address always gets the same id."""
    digest = hashlib.blake2b(f"{platform}\n{address}".encode(), digest_size=8).hexdigest()
    return f"{platform}-{digest}"


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:_SHOWN_ERRORS]:
        where = _location(error["loc"])
        message = error["msg"]
        if error["type"] == "json_invalid":
            message = f"not valid JSON ({message.removeprefix('Invalid JSON: ')})"
        elif error["type"] == "model_type" and not error["loc"]:
            message = "not a JSON object"
        elif error["type"] in ("literal_error", "enum"):
            message = f"{error['input']!r} is not one of {message.removeprefix('Input should be ')}"
        problems.append(f"{where}: {message}" if where else message)
    more = exc.error_count() - _SHOWN_ERRORS
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def parse_line(raw: bytes, policy: AddressPolicy) -> Subscriber:
    """The subscriber on one line (without its newline); :class:`LineRejected` if it is not one."""
    if len(raw) > MAX_LINE_BYTES:
        raise LineRejected(f"line longer than {MAX_LINE_BYTES // 1024} KiB")
    try:
        line = SubscriberLine.model_validate_json(raw, context={"policy": policy})
    except ValidationError as exc:
        raise LineRejected(_describe(exc)) from None
    devices: dict[str, Device] = {}
    for n, item in enumerate(line.devices):
        device_id = item.id or device_id_for(item.platform, item.address)
        if device_id in devices:
            raise LineRejected(f"devices[{n}]: the same device as an earlier one (id {device_id})")
        if item.platform == "webhook" and item.secret is None:
            raise LineRejected(f"devices[{n}].secret: a webhook needs a whsec_ signing secret")
        devices[device_id] = Device(
            platform=item.platform,
            device_id=device_id,
            user_id=line.user_id,
            address=item.address,
            secret=item.secret,
            locale=item.locale or line.locale,
        )
    wants = line.preferences
    both = set(wants.opted_in) & set(wants.opted_out)
    if both:
        raise LineRejected(f"preferences.opted_in: {', '.join(sorted(both))} is also opted out")
    quiet = wants.quiet_hours
    preferences = Preferences(
        time_zone=line.timezone,
        quiet_hours=QuietHours(_minutes(quiet.start), _minutes(quiet.end)) if quiet else None,
        muted_teams=frozenset(wants.muted_teams),
        muted_matches=frozenset(wants.muted_matches),
        opted_in=frozenset(k.value for k in wants.opted_in),
        opted_out=frozenset(k.value for k in wants.opted_out),
        cap=Cap(wants.cap.max_alerts, wants.cap.window_s) if wants.cap else None,
    )
    follows = Follows(
        frozenset(line.follows.teams),
        frozenset(line.follows.matches),
        frozenset(line.follows.markets),
        frozenset(s.value for s in line.follows.sports),
    )
    return Subscriber(line.user_id, line.locale, tuple(devices.values()), follows, preferences)


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def format_line(subscriber: Subscriber) -> bytes:
    """``subscriber`` as one line of the format (with its newline): what :func:`parse_line` reads back
    as the same subscriber. Defaults are left out."""
    out: dict[str, Any] = {"user_id": subscriber.user_id}
    if subscriber.locale != DEFAULT_LOCALE:
        out["locale"] = subscriber.locale
    prefs = subscriber.preferences
    if prefs.time_zone != "UTC":
        out["timezone"] = prefs.time_zone
    devices = []
    for device in subscriber.devices:
        item: dict[str, Any] = {"platform": device.platform, "address": device.address}
        if device.secret is not None:
            item["secret"] = device.secret
        if device.device_id != device_id_for(device.platform, device.address):
            item["id"] = device.device_id
        if device.locale != subscriber.locale:
            item["locale"] = device.locale
        devices.append(item)
    out["devices"] = devices
    follows = subscriber.follows
    out["follows"] = {
        name: sorted(values)
        for name, values in (
            ("teams", follows.teams),
            ("matches", follows.matches),
            ("markets", follows.markets),
            ("sports", follows.sports),
        )
        if values
    }
    wants: dict[str, Any] = {}
    for name, values in (
        ("muted_teams", prefs.muted_teams),
        ("muted_matches", prefs.muted_matches),
        ("opted_in", prefs.opted_in),
        ("opted_out", prefs.opted_out),
    ):
        if values:
            wants[name] = sorted(values)
    if prefs.quiet_hours is not None:
        wants["quiet_hours"] = {"start": _clock(prefs.quiet_hours.start), "end": _clock(prefs.quiet_hours.end)}
    if prefs.cap is not None:
        wants["cap"] = {"max_alerts": prefs.cap.max_alerts, "window_s": prefs.cap.window_s}
    if wants:
        out["preferences"] = wants
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
