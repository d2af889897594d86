"""``POST /v1/users:import``: many users at once, in the JSONL of ``goalhorn subscribers import``.

The same code imports them (``goalhorn.admin.subscribers``): a bad line is reported with its number
and reason and the rest are imported; an unchanged user costs no write. Users are the caller's
tenant's, as if each had been created with ``PUT /v1/users/{user_id}``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from goalhorn.admin.subscriber_lines import Subscriber
from goalhorn.admin.subscribers import import_subscribers
from goalhorn.sidecar.apikeys import ApiKey
from goalhorn.sidecar.deps import Services, caller, capped_body, provide_services
from goalhorn.sidecar.problems import Problem
from goalhorn.sidecar.tenants import stored_id

router = APIRouter(prefix="/v1", tags=["users"])
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/json-lines", "text/plain")


class Rejection(BaseModel):
    line: int
    reason: str


class ImportReport(BaseModel):
    imported: int
    changed: int
    unchanged: int
    rejected: int
    rejections: list[Rejection]
    devices_written: int
    devices_removed: int
    follows_added: int
    follows_removed: int
    preferences_written: int
    bloom_rebuilt: bool


_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {kind: {"schema": {"type": "string"}} for kind in JSONL_TYPES},
        "description": "One subscriber per line, as `goalhorn subscribers import` reads them.",
    }
}


@router.post("/users:import", response_model=ImportReport, openapi_extra=_BODY)
async def import_users(
    request: Request,
    key: Annotated[ApiKey, Depends(caller("write"))],
    svc: Annotated[Services, Depends(provide_services)],
) -> ImportReport:
    """Import users from JSONL (at most GOALHORN_API_IMPORT_MAX_BYTES); rejected lines are listed
    (the first 1,000) and counted, the others imported."""
    kind = request.headers.get("content-type", "application/jsonl").split(";")[0].strip()
    if kind not in JSONL_TYPES:
        raise Problem(415, f"the body must be JSON lines ({', '.join(JSONL_TYPES)})")
    raw = await capped_body(request, svc.settings.api_import_max_bytes)
    prefix = stored_id(key.tenant, "")

    async def register(chunk: Sequence[Subscriber]) -> None:
        await svc.users.register(key.tenant, {s.user_id.removeprefix(prefix): s.locale for s in chunk})

    report = await import_subscribers(svc.redis, svc.settings, io.BytesIO(raw), user_prefix=prefix, on_written=register)
    return ImportReport.model_validate(report.as_dict())
