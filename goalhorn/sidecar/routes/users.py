"""``/v1/users``: subscribers, their devices, follows and mutes, as one tenant sees them.

Bodies are checked as ``goalhorn subscribers import`` checks a line (the same validators: locale,
time zone, quiet hours, kinds, caps; device addresses by platform, webhook URLs under the SSRF
rules and ``GOALHORN_WEBHOOK_ALLOWLIST``). A user must be created with ``PUT /v1/users/{user_id}``
before devices, follows or mutes are added; any user id the caller's tenant did not create answers
404, whoever else has one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from goalhorn.admin.subscriber_lines import (
    DEFAULT_LOCALE,
    MAX_DEVICES,
    CapLine,
    DeviceLine,
    Kinds,
    Locale,
    QuietHoursLine,
    device_id_for,
)
from goalhorn.errors import ConfigError
from goalhorn.models import Device
from goalhorn.preferences.model import Cap, Preferences, QuietHours
from goalhorn.preferences.quiet_hours import zone
from goalhorn.preferences.store import DeviceLimit
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, body_schema, caller, json_body, provide_services
from goalhorn.sidecar.problems import Invalid, Problem, not_found
from goalhorn.sidecar.tenants import SPORTS, FollowKind, UserRecord, stored_id

router = APIRouter(prefix="/v1/users", tags=["users"])

ID_PATTERN = r"^[!-~]{1,128}$"
"""Ids in paths: 1-128 printable ASCII characters without spaces."""
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="The user's id in the caller's tenant.")]
TargetId = Annotated[str, Path(pattern=ID_PATTERN)]
Reader = Annotated[ApiKey, Depends(caller("read"))]
Writer = Annotated[ApiKey, Depends(caller("write"))]
Svc = Annotated[Services, Depends(provide_services)]


def _check_zone(value: str) -> str:
    try:
        zone(value)
    except ConfigError:
        raise ValueError("unknown time zone (an IANA name, like Europe/London)") from None
    return value


class UserBody(BaseModel):
    """What ``PUT /v1/users/{user_id}`` sets; what it leaves out is back on the defaults. Mutes and
    follows have their own routes and are kept."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    locale: Locale = DEFAULT_LOCALE
    timezone: Annotated[str, AfterValidator(_check_zone)] = "UTC"
    quiet_hours: QuietHoursLine | None = None
    opted_in: Kinds = ()
    opted_out: Kinds = ()
    cap: CapLine | None = None


class DeviceOut(BaseModel):
    device_id: str
    platform: Literal["fcm", "apns", "webhook"]
    address: str
    locale: str
    added_at: datetime | None = None


class Follows(BaseModel):
    teams: list[str] = Field(default_factory=list)
    matches: list[str] = Field(default_factory=list)
    markets: list[str] = Field(default_factory=list)
    sports: list[str] = Field(default_factory=list)


class Mutes(BaseModel):
    teams: list[str] = Field(default_factory=list)
    matches: list[str] = Field(default_factory=list)


class UserOut(BaseModel):
    user_id: str
    locale: str
    timezone: str
    quiet_hours: QuietHoursLine | None = None
    opted_in: list[str]
    opted_out: list[str]
    cap: CapLine | None = None
    mutes: Mutes
    follows: Follows
    devices: list[DeviceOut]
    created_at: datetime


class DeviceCreated(BaseModel):
    device_id: str


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


async def _existing(svc: Services, key: ApiKey, user_id: str) -> UserRecord:
    record = await svc.users.get(key.tenant, user_id)
    if record is None:
        raise not_found("user")
    return record


async def _describe(svc: Services, key: ApiKey, record: UserRecord) -> UserOut:
    user = stored_id(key.tenant, record.user_id)
    prefs = await svc.store.preferences_of(user)
    devices = await svc.store.devices_of(user)
    follows = await svc.users.follows(key.tenant, record.user_id)
    quiet = prefs.quiet_hours
    return UserOut(
        user_id=record.user_id,
        locale=record.locale,
        timezone=prefs.time_zone,
        quiet_hours=QuietHoursLine(start=_clock(quiet.start), end=_clock(quiet.end)) if quiet else None,
        opted_in=sorted(prefs.opted_in),
        opted_out=sorted(prefs.opted_out),
        cap=CapLine(max_alerts=prefs.cap.max_alerts, window_s=prefs.cap.window_s) if prefs.cap else None,
        mutes=Mutes(teams=sorted(prefs.muted_teams), matches=sorted(prefs.muted_matches)),
        follows=Follows(**follows),
        devices=[
            DeviceOut(
                device_id=d.device_id, platform=d.platform, address=d.address, locale=d.locale, added_at=d.added_at
            )
            for d in devices
        ],
        created_at=datetime.fromtimestamp(record.created_at, UTC),
    )


@router.put(
    "/{user_id}",
    response_model=UserOut,
    responses={201: {"model": UserOut, "description": "Created"}},
    openapi_extra=body_schema(UserBody),
)
async def put_user(user_id: UserId, request: Request, response: Response, key: Writer, svc: Svc) -> UserOut:
    """Create a user, or replace their locale, time zone, quiet hours, opt-ins and cap."""
    body = await json_body(request, UserBody)
    both = sorted(set(body.opted_in) & set(body.opted_out))
    if both:
        raise Invalid([{"field": "body.opted_in", "detail": f"{', '.join(both)} is also opted out"}])
    quiet = body.quiet_hours

    def apply(prefs: Preferences) -> Preferences:
        return prefs.with_changes(
            time_zone=body.timezone,
            quiet_hours=QuietHours(_minutes(quiet.start), _minutes(quiet.end)) if quiet else None,
            opted_in=frozenset(k.value for k in body.opted_in),
            opted_out=frozenset(k.value for k in body.opted_out),
            cap=Cap(body.cap.max_alerts, body.cap.window_s) if body.cap else None,
        )

    record, created = await svc.users.put(key.tenant, user_id, body.locale)
    await svc.store.change_preferences(stored_id(key.tenant, user_id), apply)
    if created:
        response.status_code = 201
    return await _describe(svc, key, record)


@router.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: UserId, key: Reader, svc: Svc) -> UserOut:
    return await _describe(svc, key, await _existing(svc, key, user_id))


@router.delete("/{user_id}", status_code=204, response_class=Response)
async def delete_user(user_id: UserId, key: Writer, svc: Svc) -> Response:
    """Remove a user with their devices, webhook endpoints, follows, preferences and push-to-start tokens."""
    if not await svc.users.delete(key.tenant, user_id):
        raise not_found("user")
    await svc.activities.forget_user(stored_id(key.tenant, user_id))  # push-to-start tokens (games' expire)
    for endpoint in await svc.webhooks.list(key.tenant):
        if endpoint.user_id == user_id:
            await svc.webhooks.delete(key.tenant, endpoint.id)
    return Response(status_code=204)


@router.post(
    "/{user_id}/devices",
    status_code=201,
    response_model=DeviceCreated,
    responses={200: {"model": DeviceCreated, "description": "Already registered"}},
    openapi_extra=body_schema(DeviceLine),
)
async def add_device(user_id: UserId, request: Request, response: Response, key: Writer, svc: Svc) -> DeviceCreated:
    """Register a device (an FCM or APNs token, or a webhook URL with its ``whsec_`` secret). The same
    address registered again is the same device (200)."""
    record = await _existing(svc, key, user_id)
    line = await json_body(request, DeviceLine, context={"policy": svc.policy})
    if line.platform == "webhook" and line.secret is None:
        raise Invalid([{"field": "body.secret", "detail": "a webhook needs a whsec_ signing secret"}])
    user = stored_id(key.tenant, user_id)
    device_id = line.id or device_id_for(line.platform, line.address)
    device = Device(
        platform=line.platform,
        device_id=device_id,
        user_id=user,
        address=line.address,
        secret=line.secret,
        locale=line.locale or record.locale,
    )
    try:
        created = await svc.store.register_device(device, max_devices=MAX_DEVICES)
    except DeviceLimit:
        raise Problem(409, f"a user has at most {MAX_DEVICES} devices: remove one first") from None
    if not created:
        response.status_code = 200
    return DeviceCreated(device_id=device_id)


@router.delete("/{user_id}/devices/{device_id}", status_code=204, response_class=Response)
async def remove_device(user_id: UserId, device_id: TargetId, key: Writer, svc: Svc) -> Response:
    await _existing(svc, key, user_id)
    if not await svc.store.remove_device(stored_id(key.tenant, user_id), device_id):
        raise not_found("device")
    return Response(status_code=204)


def _target(kind: FollowKind, target: str) -> str:
    if kind == "sports" and target not in SPORTS:
        raise Invalid([{"field": "path.target_id", "detail": f"not a sport (one of {', '.join(sorted(SPORTS))})"}])
    return target


@router.put("/{user_id}/follows/{kind}/{target_id}", status_code=204, response_class=Response)
async def follow(user_id: UserId, kind: FollowKind, target_id: TargetId, key: Writer, svc: Svc) -> Response:
    """Follow a team, watch a match or a market, or follow a whole sport."""
    await _existing(svc, key, user_id)
    await svc.users.follow(key.tenant, user_id, kind, _target(kind, target_id))
    return Response(status_code=204)


@router.delete("/{user_id}/follows/{kind}/{target_id}", status_code=204, response_class=Response)
async def unfollow(user_id: UserId, kind: FollowKind, target_id: TargetId, key: Writer, svc: Svc) -> Response:
    await _existing(svc, key, user_id)
    await svc.users.unfollow(key.tenant, user_id, kind, _target(kind, target_id))
    return Response(status_code=204)


MuteKind = Literal["teams", "matches"]


@router.put("/{user_id}/mutes/{kind}/{target_id}", status_code=204, response_class=Response)
async def mute(user_id: UserId, kind: MuteKind, target_id: TargetId, key: Writer, svc: Svc) -> Response:
    """Mute a team or a match: no alert about it, whatever else the user follows."""
    await _existing(svc, key, user_id)
    user = stored_id(key.tenant, user_id)
    if kind == "teams":
        await svc.store.mute_team(user, target_id)
    else:
        await svc.store.mute_match(user, target_id)
    return Response(status_code=204)


@router.delete("/{user_id}/mutes/{kind}/{target_id}", status_code=204, response_class=Response)
async def unmute(user_id: UserId, kind: MuteKind, target_id: TargetId, key: Writer, svc: Svc) -> Response:
    await _existing(svc, key, user_id)
    user = stored_id(key.tenant, user_id)
    if kind == "teams":
        await svc.store.unmute_team(user, target_id)
    else:
        await svc.store.unmute_match(user, target_id)
    return Response(status_code=204)


BODY_MODELS = (UserBody, DeviceLine)
