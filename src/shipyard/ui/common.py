"""What every console page shares: who is looking, rendering, headers, small SVG charts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from shipyard.api.state import ControlPlane, control_plane
from shipyard.security.gate import OPEN, current_caller
from shipyard.security.policy import Permission, allows
from shipyard.security.sessions import Session

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
SECURITY_HEADERS = {
    # No inline script or style anywhere: htmx and the stylesheet come from /ui/static.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """Who is looking, and what the page may offer them (the server refuses the rest
    anyway: a button not shown is a courtesy, the gate is the rule)."""

    name: str
    role: str
    csrf: str
    open: bool
    """The server runs without authentication (loopback, no keys): say so on every page."""

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    @property
    def can_deploy(self) -> bool:
        return self.may(Permission.DEPLOY)

    @property
    def can_admin(self) -> bool:
        return self.may(Permission.ADMIN)


def viewer(request: Request) -> Viewer:
    caller = current_caller()
    session: Session | None = request.scope.get("shipyard.session")
    name, role = (caller.name, caller.role) if caller is not None else ("anonymous", "")
    return Viewer(name, role, session.csrf if session else "", caller == OPEN)


def plane(request: Request) -> ControlPlane:
    return control_plane(request)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page (or an htmx fragment) with the viewer in its context and the console's
    security headers."""
    response = TEMPLATES.TemplateResponse(
        request, template, {"viewer": viewer(request), **context}, status_code=status_code
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def sparkline(values: Sequence[float | None], width: int = 160, height: int = 32,
              label: str = "") -> str:  # fmt: skip
    """A small inline SVG line of `values` (None: a gap), with a text title for screen
    readers; attributes only, no style, so the CSP holds."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    title = html.escape(label)
    if not points:
        return (f'<svg class="spark" width="{width}" height="{height}" role="img" '
                f'aria-label="{title}: no data"><title>{title}: no data</title></svg>')  # fmt: skip
    top = max(v for _, v in points) or 1.0
    step = width / max(len(values) - 1, 1)
    ys = [height - 2 - (v / top) * (height - 4) for _, v in points]
    path = " ".join(f"{'M' if n == 0 else 'L'}{i * step:.1f},{y:.1f}"
                    for n, ((i, _), y) in enumerate(zip(points, ys, strict=True)))  # fmt: skip
    last = points[-1][1]
    return (f'<svg class="spark" width="{width}" height="{height}" role="img" '
            f'aria-label="{title}: latest {last:.3g}, peak {top:.3g}">'
            f"<title>{title}: latest {last:.3g}, peak {top:.3g}</title>"
            f'<path d="{path}" fill="none" stroke="currentColor" '
            'stroke-width="1.5"/></svg>')  # fmt: skip


def _spark(values: Sequence[float | None], label: str) -> Markup:
    return Markup(sparkline(values, label=label))  # built from numbers and an escaped label


TEMPLATES.env.globals["spark"] = _spark


# ---- console-a (deployment page): a larger chart with its scale written out ----------


def chart(values: Sequence[float | None], label: str, unit: str = "", width: int = 320,
          height: int = 96) -> str:  # fmt: skip
    """A line chart of `values` (None: a gap) with its peak and latest value as text in
    the SVG, so the numbers read without the line; attributes only (CSP)."""
    title = html.escape(label)
    unit_text = html.escape(unit)
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    frame = (f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" '
             'stroke="currentColor" stroke-opacity="0.3"/>')  # fmt: skip
    if not points:
        return (f'<svg class="chart" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}: no data">'
                f"<title>{title}: no data</title>{frame}"
                f'<text x="8" y="{height // 2}" font-size="12" fill="currentColor">'
                "no requests</text></svg>")  # fmt: skip
    top = max(v for _, v in points) or 1.0
    plot_top, plot_bottom = 18, height - 4
    step = (width - 8) / max(len(values) - 1, 1)
    ys = [plot_bottom - (v / top) * (plot_bottom - plot_top) for _, v in points]
    path = " ".join(f"{'M' if n == 0 else 'L'}{4 + i * step:.1f},{y:.1f}"
                    for n, ((i, _), y) in enumerate(zip(points, ys, strict=True)))  # fmt: skip
    last = points[-1][1]
    summary = f"{title}: latest {last:.3g}{unit_text}, peak {top:.3g}{unit_text}"
    return (f'<svg class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{summary}">'
            f"<title>{summary}</title>{frame}"
            f'<line x1="4" y1="{plot_top}" x2="{width - 4}" y2="{plot_top}" '
            'stroke="currentColor" stroke-opacity="0.2" stroke-dasharray="3 3"/>'
            f'<text x="6" y="13" font-size="11" fill="currentColor">peak {top:.3g}{unit_text}'
            f'</text><text x="{width - 6}" y="13" font-size="11" fill="currentColor" '
            f'text-anchor="end">now {last:.3g}{unit_text}</text>'
            f'<path d="{path}" fill="none" stroke="currentColor" '
            'stroke-width="2"/></svg>')  # fmt: skip


def _chart(values: Sequence[float | None], label: str, unit: str = "") -> Markup:
    return Markup(chart(values, label, unit))  # built from numbers and escaped text


TEMPLATES.env.globals["chart"] = _chart
