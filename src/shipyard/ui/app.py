"""The console's routes: sign in and out, static files, the overview; the other pages
live in their own modules and are gathered here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from shipyard.errors import NotFound, ShipyardError
from shipyard.security.policy import Permission, allows
from shipyard.security.sessions import COOKIE
from shipyard.transports.http import client_address
from shipyard.ui import admin, deployments, jobs, models, monitoring, rollouts
from shipyard.ui.common import SECURITY_HEADERS, plane, render
from shipyard.ui.live import traffic

router = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"htmx.min.js": "text/javascript", "console.css": "text/css",
                 "console.js": "text/javascript"}  # fmt: skip
"""Served by name from this list only: no path from a request reaches the file system."""


@router.get("/static/{file}")
def static(file: str) -> FileResponse:
    media = _STATIC_FILES.get(file)
    if media is None:
        raise NotFound(f"no static file {file!r}")
    return FileResponse(STATIC / file, media_type=media,
                        headers={"cache-control": "public, max-age=3600",
                                 "x-content-type-options": "nosniff"})  # fmt: skip


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html")


@router.post("/login", response_model=None)
async def login(request: Request, key: Annotated[str, Form()]) -> Response:
    """A key or JWT in, a session cookie out; the key is not kept anywhere."""
    gatekeeper = request.app.state.gatekeeper
    signer = gatekeeper.sessions
    if gatekeeper.open:
        return RedirectResponse("/ui", status_code=303)
    try:
        principal = await gatekeeper.sign_in(key.strip(), client_address(request.scope))
    except ShipyardError as exc:
        return render(request, "login.html", status_code=int(exc.status), error=exc.message)
    if not allows(principal.role, Permission.READ):
        return render(request, "login.html", status_code=403,
                      error=f"a {principal.role} key cannot use the console")  # fmt: skip
    value, _ = signer.issue(principal)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(COOKIE, value, max_age=int(signer.lifetime_seconds), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https",
                        path="/")  # fmt: skip
    response.headers.update(SECURITY_HEADERS)
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _overview(request: Request) -> dict[str, Any]:
    control = plane(request)
    registry = control.registry
    deployments_now = registry.deployments.list()
    rollouts_open = [r for d in deployments_now
                     if (r := registry.rollouts.active(d.deployment)) is not None]  # fmt: skip
    live = {d.deployment: traffic(registry, d.deployment) for d in deployments_now}
    drifted = []
    for d in deployments_now:
        reports = control.monitoring.drift_history(d.deployment, 1)
        if reports and reports[0].drifted:
            drifted.append(reports[0])
    models_page = registry.models.list_models(limit=200)
    return {"deployments": deployments_now, "live": live, "rollouts": rollouts_open,
            "drifted": drifted, "models": models_page.models}  # fmt: skip


@router.get("", response_class=HTMLResponse)
def overview(request: Request) -> HTMLResponse:
    return render(request, "overview.html", **_overview(request))


@router.get("/fragments/overview", response_class=HTMLResponse)
def overview_live(request: Request) -> HTMLResponse:
    return render(request, "overview_live.html", **_overview(request))


for module in (models, deployments, rollouts, monitoring, jobs, admin):
    router.include_router(module.router)
