"""``/v1/webhooks``: signed webhook endpoints for bots, with secrets made here and rotated without
a gap (see ``goalhorn.sidecar.webhooks``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from goalhorn.admin.addresses import url_problem
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, body_schema, caller, json_body, provide_services
from goalhorn.sidecar.problems import Invalid, not_found
from goalhorn.sidecar.webhooks import Endpoint

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Reader = Annotated[ApiKey, Depends(caller("read"))]
Writer = Annotated[ApiKey, Depends(caller("write"))]
Svc = Annotated[Services, Depends(provide_services)]
EndpointId = Annotated[str, Path(pattern=r"^wh_[0-9a-f]{16}$")]


class EndpointBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    user_id: str = Field(pattern=r"^[!-~]{1,128}$", description="The tenant's user whose follows it gets.")
    url: str = Field(max_length=2048)


class EndpointOut(BaseModel):
    id: str
    user_id: str
    url: str
    created_at: datetime
    rotated_at: datetime | None = None
    old_secret_valid_until: datetime | None = Field(
        default=None, description="Until then deliveries are signed with the previous secret too."
    )


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The whsec_ signing secret: shown this once.")


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def _out(endpoint: Endpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        user_id=endpoint.user_id,
        url=endpoint.url,
        created_at=datetime.fromtimestamp(endpoint.created_at, UTC),
        rotated_at=_when(endpoint.rotated_at),
        old_secret_valid_until=_when(endpoint.old_secret_until),
    )


@router.post("", status_code=201, response_model=EndpointCreated, openapi_extra=body_schema(EndpointBody))
async def create_webhook(request: Request, key: Writer, svc: Svc) -> EndpointCreated:
    """A webhook endpoint for one of the tenant's users; the answer holds its signing secret, once."""
    body = await json_body(request, EndpointBody)
    problem = url_problem(body.url, svc.policy)
    if problem:
        raise Invalid([{"field": "body.url", "detail": problem}])
    user = await svc.users.get(key.tenant, body.user_id)
    if user is None:
        raise Invalid([{"field": "body.user_id", "detail": "no such user (create it with PUT /v1/users/{user_id})"}])
    endpoint, secret = await svc.webhooks.create(key.tenant, body.user_id, body.url, user.locale)
    return EndpointCreated(**_out(endpoint).model_dump(), secret=secret)


@router.get("", response_model=list[EndpointOut])
async def list_webhooks(key: Reader, svc: Svc) -> list[EndpointOut]:
    return [_out(e) for e in await svc.webhooks.list(key.tenant)]


@router.get("/{endpoint_id}", response_model=EndpointOut)
async def get_webhook(endpoint_id: EndpointId, key: Reader, svc: Svc) -> EndpointOut:
    endpoint = await svc.webhooks.get(key.tenant, endpoint_id)
    if endpoint is None:
        raise not_found("webhook endpoint")
    return _out(endpoint)


@router.post("/{endpoint_id}/rotate", response_model=EndpointCreated)
async def rotate_webhook(endpoint_id: EndpointId, key: Writer, svc: Svc) -> EndpointCreated:
    """A new signing secret (shown once); the previous one keeps signing beside it for
    GOALHORN_API_WEBHOOK_ROTATION_WINDOW_S, so a bot can switch without missing a delivery."""
    rotated = await svc.webhooks.rotate(key.tenant, endpoint_id)
    if rotated is None:
        raise not_found("webhook endpoint")
    endpoint, secret = rotated
    return EndpointCreated(**_out(endpoint).model_dump(), secret=secret)


@router.delete("/{endpoint_id}", status_code=204, response_class=Response)
async def delete_webhook(endpoint_id: EndpointId, key: Writer, svc: Svc) -> Response:
    if not await svc.webhooks.delete(key.tenant, endpoint_id):
        raise not_found("webhook endpoint")
    return Response(status_code=204)


BODY_MODELS = (EndpointBody,)
