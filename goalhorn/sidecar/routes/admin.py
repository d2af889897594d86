"""``/v1/admin/switches``: kill switches (admin scope), see ``goalhorn.sidecar.switches``; the ops
commands' routes (``/v1/admin/status``...) are in ``operations``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, body_schema, caller, json_body, provide_services
from goalhorn.sidecar.problems import not_found
from goalhorn.sidecar.routes import operations

router = APIRouter(prefix="/v1/admin", tags=["admin"])
Admin = Annotated[ApiKey, Depends(caller("admin", switchable=False))]
Svc = Annotated[Services, Depends(provide_services)]
SwitchName = Annotated[str, Path(pattern=r"^[a-z_]{1,64}$", description="A route group (tag) or a route's name.")]


class SwitchBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    reason: str = Field(min_length=1, max_length=200)


@router.get("/switches", response_model=dict[str, str])
async def list_switches(key: Admin, svc: Svc) -> dict[str, str]:
    """The switches set, with their reasons."""
    return await svc.switches.current()


@router.put("/switches/{name}", status_code=204, response_class=Response, openapi_extra=body_schema(SwitchBody))
async def switch_off(name: SwitchName, request: Request, key: Admin, svc: Svc) -> Response:
    """Switch a route group or a route off (503 with the reason) in every API process within a second."""
    body = await json_body(request, SwitchBody)
    await svc.switches.set(name, body.reason)
    return Response(status_code=204)


@router.delete("/switches/{name}", status_code=204, response_class=Response)
async def switch_on(name: SwitchName, key: Admin, svc: Svc) -> Response:
    if not await svc.switches.clear(name):
        raise not_found("switch")
    return Response(status_code=204)


router.include_router(operations.router)
BODY_MODELS = (SwitchBody,)
