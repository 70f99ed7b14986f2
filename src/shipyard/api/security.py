"""Control-plane REST routes for API keys and the audit trail (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from shipyard.api.state import control_plane
from shipyard.durations import parse_duration
from shipyard.registry import records
from shipyard.registry.audit import current_actor
from shipyard.security.keys import KeyStore

router = APIRouter(prefix="/api", tags=["security"])


class NewKey(BaseModel):
    role: str
    name: str = ""
    models: list[str] | None = Field(default=None, description="Limit a key to these models.")
    expires: str | None = Field(default=None, description="Lifetime like 30d, 12h or 45m.")
    rate_per_second: float | None = None


class CreatedKey(BaseModel):
    key: str = Field(description="The key itself: shown this once, never stored.")
    record: records.ApiKey


class RevokedKey(records.ApiKey):
    warning: str | None = Field(
        default=None, description="Set when no admin key is left: how to get back in."
    )


def _keys(request: Request) -> KeyStore:
    return control_plane(request).keys


@router.get("/keys")
def list_keys(request: Request) -> list[records.ApiKey]:
    return _keys(request).list()


@router.post("/keys", status_code=201)
def create_key(request: Request, body: NewKey) -> CreatedKey:
    token, record = _keys(request).create(
        body.role,
        created_by=current_actor().name,
        name=body.name,
        models=body.models,
        expires_in=parse_duration(body.expires, "expiry") if body.expires else None,
        rate_per_second=body.rate_per_second,
    )
    return CreatedKey(key=token, record=record)


@router.post("/keys/{key_id}/revoke")
def revoke_key(request: Request, key_id: str) -> RevokedKey:
    """Revoke a key; revoking the last admin key is allowed, with a warning."""
    keys = _keys(request)
    record = keys.revoke(key_id)
    return RevokedKey(**record.model_dump(), warning=keys.lockout_warning())


@router.get("/audit")
def read_audit(
    request: Request,
    since: Annotated[
        datetime | None, Query(description="ISO time; one without a zone is UTC.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[records.AuditEvent]:
    return control_plane(request).trust.audit.events(since=since, limit=limit)
