"""Live Activities (iOS) and Android live updates: the tokens an app registers for a user, and a
game's broadcast channel.

- ``PUT|DELETE /v1/users/{user_id}/live-activities/start-tokens/{activity_type}``: the user's
  push-to-start token of an ActivityKit attributes type (``GameActivityAttributes``); a new one
  replaces the old. With it, the user's phone gets a game's Live Activity at kickoff (a game of a
  team they follow, their preferences permitting).
- ``PUT|DELETE /v1/users/{user_id}/live-activities/games/{game_id}/update-token``: the push token of
  the activity a device shows for a game (``Activity.pushTokenUpdates``), per ``device`` (the app's
  install id; each of a user's devices shows its own activity); a rotation replaces the device's token,
  and the replaced token is refused from then on (409), so a late request cannot bring it back.
- ``PUT|DELETE /v1/users/{user_id}/live-activities/games/{game_id}/android``: the FCM token an Android
  app wants a game's live updates on, per ``device`` too.
- ``PUT /v1/users/{user_id}/live-activities/games/{game_id}/running``: the phone shows the game's
  activity already (the app started it, on the game's channel for instance): no push-to-start of the
  game for this user.
- ``GET /v1/games/{game_id}/live-activity``: what an app needs to start the activity itself: the
  activity id, the attributes type, and the game's broadcast channel id when it has one (start the
  activity with ``pushType: .channel(id)`` and it gets the broadcasts; without one, register its
  update token).

Games are named by their key, ``<source>:<feed's game id>``, as in ``/v1/games``. Tokens are checked
as device addresses are (``goalhorn.admin.addresses``: APNs tokens hex, FCM tokens URL-safe text),
and a user the caller's tenant did not create answers 404.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from goalhorn.admin.addresses import address_problem
from goalhorn.keys import GAME_KEY_PATTERN, Platform
from goalhorn.liveactivities.registry import Saved, TokenRejected
from goalhorn.providers.ssrf import AddressPolicy
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, body_schema, caller, json_body, provide_services
from goalhorn.sidecar.problems import Problem, not_found
from goalhorn.sidecar.tenants import stored_id

router = APIRouter(tags=["live-activities"])

UserId = Annotated[str, Path(pattern=r"^[!-~]{1,128}$", description="The user's id in the caller's tenant.")]
GameKey = Annotated[str, Path(pattern=GAME_KEY_PATTERN, description="<source>:<game id>")]
ActivityType = Annotated[
    str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$", description="The ActivityKit attributes type.")
]
Reader = Annotated[ApiKey, Depends(caller("read"))]
Writer = Annotated[ApiKey, Depends(caller("write"))]
Svc = Annotated[Services, Depends(provide_services)]
DEVICE_PATTERN = r"^[A-Za-z0-9._-]{0,64}$"
"""A device: the app's install id (``goalhorn.liveactivities.registry.DEVICE_RE``)."""
DeviceQuery = Annotated[str, Query(pattern=DEVICE_PATTERN, description="The device the registration was made for.")]


def _token(platform: Platform, value: str) -> str:
    problem = address_problem(platform, value, AddressPolicy())  # the policy is for webhook URLs only
    if problem:
        raise ValueError(problem)
    return value


class ApnsTokenBody(BaseModel):
    """An ActivityKit push token (push-to-start or update), hex as ``Data`` prints it."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    token: str = Field(description="The token's hex digits (an even number, 32-200).")

    @field_validator("token")
    @classmethod
    def _apns(cls, value: str) -> str:
        return _token("apns", value)


DEVICE_DOC = (
    "The app's install id on this device (a UUID, a Firebase installation id): each device of the user keeps "
    "its own registration of the game (a fan's iPhone and iPad each show the activity), and a new token "
    "replaces only that device's. Empty or left out: one registration per user and game."
)


class UpdateTokenBody(ApnsTokenBody):
    """The push token of the activity a device shows for the game (``Activity.pushTokenUpdates``)."""

    device: str = Field(default="", pattern=DEVICE_PATTERN, description=DEVICE_DOC)


class FcmTokenBody(BaseModel):
    """The FCM registration token of the Android app that shows the game's live update."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    token: str = Field(description="The FCM registration token.")
    device: str = Field(default="", pattern=DEVICE_PATTERN, description=DEVICE_DOC)

    @field_validator("token")
    @classmethod
    def _fcm(cls, value: str) -> str:
        return _token("fcm", value)


class Registered(BaseModel):
    """What a registration did: ``created``, ``replaced`` (another token was registered) or ``unchanged``."""

    result: Literal["created", "replaced", "unchanged"]


class GameLiveActivity(BaseModel):
    game_id: str = Field(description="The game's key, <source>:<game id>.")
    activity_id: str = Field(description="The game's activity id (the Android live update's key too).")
    attributes_type: str = Field(description="The ActivityKit attributes type goalhorn starts the activity as.")
    channel_id: str | None = Field(description="The game's APNs broadcast channel, if it has one now.")
    channel_storage: int | None = Field(description="The channel's message storage policy (0: none kept).")
    channel_created_at: datetime | None = None


async def _user(svc: Services, key: ApiKey, user_id: str) -> str:
    """The stored id of one of the tenant's users (404 for anyone else's)."""
    if await svc.users.get(key.tenant, user_id) is None:
        raise not_found("user")
    return stored_id(key.tenant, user_id)


def _answer(response: Response, saved: Saved) -> Registered:
    response.status_code = 201 if saved == "created" else 200
    return Registered(result=saved)


REGISTERED: dict[int | str, dict[str, Any]] = {201: {"model": Registered, "description": "Registered"}}


@router.put(
    "/v1/users/{user_id}/live-activities/start-tokens/{activity_type}",
    response_model=Registered,
    responses=REGISTERED,
    openapi_extra=body_schema(ApnsTokenBody),
)
async def put_start_token(
    user_id: UserId, activity_type: ActivityType, request: Request, response: Response, key: Writer, svc: Svc
) -> Registered:
    """Register the user's push-to-start token of ``activity_type`` (replacing the one registered)."""
    user = await _user(svc, key, user_id)
    body = await json_body(request, ApnsTokenBody)
    return _answer(response, await svc.activities.set_start_token(user, activity_type, body.token))


@router.delete(
    "/v1/users/{user_id}/live-activities/start-tokens/{activity_type}", status_code=204, response_class=Response
)
async def delete_start_token(user_id: UserId, activity_type: ActivityType, key: Writer, svc: Svc) -> Response:
    user = await _user(svc, key, user_id)
    if not await svc.activities.delete_start_token(user, activity_type):
        raise not_found("push-to-start token")
    return Response(status_code=204)


@router.put(
    "/v1/users/{user_id}/live-activities/games/{game_id}/update-token",
    response_model=Registered,
    responses=REGISTERED,
    openapi_extra=body_schema(UpdateTokenBody),
)
async def put_update_token(
    user_id: UserId, game_id: GameKey, request: Request, response: Response, key: Writer, svc: Svc
) -> Registered:
    """Register the update token of the activity the user's ``device`` shows for the game; the one it
    replaces on that device is refused from then on (409)."""
    user = await _user(svc, key, user_id)
    body = await json_body(request, UpdateTokenBody)
    try:
        saved = await svc.activities.set_update_token(user, game_id, body.token, body.device)
    except TokenRejected as exc:
        raise Problem(409, str(exc)) from None
    return _answer(response, saved)


@router.delete(
    "/v1/users/{user_id}/live-activities/games/{game_id}/update-token", status_code=204, response_class=Response
)
async def delete_update_token(
    user_id: UserId, game_id: GameKey, key: Writer, svc: Svc, device: DeviceQuery = ""
) -> Response:
    """The activity on ``device`` ended: its token is forgotten (and refused from then on)."""
    user = await _user(svc, key, user_id)
    if not await svc.activities.delete_update_token(user, game_id, device):
        raise not_found("update token")
    return Response(status_code=204)


@router.put(
    "/v1/users/{user_id}/live-activities/games/{game_id}/android",
    response_model=Registered,
    responses=REGISTERED,
    openapi_extra=body_schema(FcmTokenBody),
)
async def put_android(
    user_id: UserId, game_id: GameKey, request: Request, response: Response, key: Writer, svc: Svc
) -> Registered:
    """Send the game's live updates to this FCM token (replacing the one ``device`` registered for the game)."""
    user = await _user(svc, key, user_id)
    body = await json_body(request, FcmTokenBody)
    return _answer(response, await svc.activities.set_android(user, game_id, body.token, body.device))


@router.delete("/v1/users/{user_id}/live-activities/games/{game_id}/android", status_code=204, response_class=Response)
async def delete_android(
    user_id: UserId, game_id: GameKey, key: Writer, svc: Svc, device: DeviceQuery = ""
) -> Response:
    user = await _user(svc, key, user_id)
    if not await svc.activities.delete_android(user, game_id, device):
        raise not_found("Android registration")
    return Response(status_code=204)


@router.put("/v1/users/{user_id}/live-activities/games/{game_id}/running", status_code=204, response_class=Response)
async def put_running(user_id: UserId, game_id: GameKey, key: Writer, svc: Svc) -> Response:
    """The user's phone shows the game's activity already (the app started it, on the game's channel or
    with a token): the game's start is not pushed to them (a second ticker)."""
    user = await _user(svc, key, user_id)
    await svc.activities.mark_running(user, game_id)
    return Response(status_code=204)


@router.get("/v1/games/{game_id}/live-activity", response_model=GameLiveActivity)
async def game_live_activity(game_id: GameKey, key: Reader, svc: Svc) -> GameLiveActivity:
    """The game's activity id and broadcast channel (null until the channel is made, about half an
    hour before kickoff for games with many followers, and again after it is deleted)."""
    channel = await svc.activities.channel(game_id)
    return GameLiveActivity(
        game_id=game_id,
        activity_id=game_id,
        attributes_type=svc.settings.live_activity_type,
        channel_id=channel.channel_id if channel else None,
        channel_storage=channel.storage if channel else None,
        channel_created_at=datetime.fromtimestamp(channel.created_at, UTC) if channel else None,
    )


BODY_MODELS = (ApnsTokenBody, UpdateTokenBody, FcmTokenBody)
