"""Console pages for admins: the audit trail, and API keys (list, create, revoke).

A new key's secret is in one response only, the one that made it: it is not stored, so
it cannot be shown again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from shipyard.durations import parse_duration
from shipyard.errors import ShipyardError
from shipyard.registry.audit import current_actor
from shipyard.security.keys import ROLES
from shipyard.ui.common import plane, render

router = APIRouter()
AUDIT_LIMIT = 100


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> HTMLResponse:
    events = plane(request).trust.audit.events(limit=AUDIT_LIMIT)
    return render(request, "audit.html", events=list(reversed(events)), limit=AUDIT_LIMIT)


def _keys(request: Request) -> dict[str, Any]:
    keys = plane(request).keys
    return {"keys": keys.list(), "roles": ROLES, "now": datetime.now(UTC),
            "warning": keys.lockout_warning()}  # fmt: skip


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request) -> HTMLResponse:
    return render(request, "keys.html", **_keys(request))


@router.post("/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    role: Annotated[str, Form()],
    name: Annotated[str, Form(max_length=200)] = "",
    models: Annotated[str, Form(max_length=2000)] = "",
    expires: Annotated[str, Form(max_length=20)] = "",
) -> HTMLResponse:
    """The new key, shown once, and the refreshed list; a refusal as a 200 with why."""
    token, created, error = "", None, ""
    try:
        chosen = [m.strip() for m in models.split(",") if m.strip()] or None
        expires = expires.strip()
        token, created = plane(request).keys.create(
            role,
            created_by=current_actor().name,
            name=name.strip(),
            models=chosen,
            expires_in=parse_duration(expires, "expiry") if expires else None,
        )
    except ShipyardError as exc:
        error = exc.message
    return render(request, "keys_result.html", token=token, created=created, error=error,
                  oob=True, **_keys(request))  # fmt: skip


@router.post("/keys/{key_id}/revoke", response_class=HTMLResponse)
def revoke_key(request: Request, key_id: str) -> HTMLResponse:
    revoked, error = None, ""
    try:
        revoked = plane(request).keys.revoke(key_id)
    except ShipyardError as exc:
        error = exc.message
    return render(request, "keys_result.html", revoked=revoked, error=error, oob=True,
                  **_keys(request))  # fmt: skip
