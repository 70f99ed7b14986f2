"""Console pages: a deployment's rollout, its gates against the live window, and the
buttons that steer it (promote, pause, resume, abort)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from shipyard.errors import NotFound, ShipyardError
from shipyard.registry import records
from shipyard.registry.records import RolloutState
from shipyard.routing.rollouts import RolloutService
from shipyard.security.gate import require_scope
from shipyard.ui.common import plane, render
from shipyard.ui.live import Series, traffic

router = APIRouter()
ACTIONS = ("promote", "pause", "resume", "abort")
ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


@dataclass(frozen=True)
class Gate:
    """One gate as the page shows it: its threshold and, when the live window has the
    numbers, the current value and whether it holds."""

    name: str
    label: str
    threshold: str
    current: str | None
    passing: bool | None
    note: str = ""


def _ratio(candidate: float | None, stable: float | None) -> float | None:
    if candidate is None or stable is None or stable <= 0:
        return None
    return candidate / stable


def gates(rollout: records.Rollout, series: list[Series]) -> list[Gate]:
    """Each gate of the rollout against the last minutes of fleet traffic (the controller
    judges over the step's own window; this is the live picture)."""
    by_version = {s.version: s for s in series}
    candidate = by_version.get(str(rollout.candidate_version))
    stable = by_version.get(str(rollout.stable_version))
    g = rollout.gates
    shown: list[Gate] = []

    cand_rate = candidate.error_rate if candidate else None
    stable_rate = (stable.error_rate if stable else None) or 0.0
    increase = None if cand_rate is None else cand_rate - stable_rate
    shown.append(Gate(
        "max_error_rate_increase", "Error rate increase over stable",
        f"≤ +{100 * g.max_error_rate_increase:.1f} pts",
        None if increase is None else
        f"{100 * increase:+.1f} pts ({100 * (cand_rate or 0):.1f}% vs {100 * stable_rate:.1f}%)",
        None if increase is None else increase <= g.max_error_rate_increase,
    ))  # fmt: skip
    ratio = _ratio(candidate.latest_p95 if candidate else None,
                   stable.latest_p95 if stable else None)  # fmt: skip
    shown.append(Gate(
        "max_p95_ratio", "p95 latency ratio (candidate / stable)", f"≤ {g.max_p95_ratio:g}x",
        None if ratio is None else f"{ratio:.2f}x",
        None if ratio is None else ratio <= g.max_p95_ratio,
    ))  # fmt: skip
    shown.append(Gate(
        "max_drift", "Prediction drift (KS distance)", f"≤ {g.max_drift:g}", None, None,
        "judged by the controller at the end of each step",
    ))  # fmt: skip
    if g.min_agreement > 0:
        agreement = candidate.agreement if candidate else None
        shown.append(Gate(
            "min_agreement", "Agreement with stable", f"≥ {100 * g.min_agreement:.0f}%",
            None if agreement is None else f"{100 * agreement:.1f}%",
            None if agreement is None else agreement >= g.min_agreement,
        ))  # fmt: skip
    if g.max_input_drift_share < 1.0:
        shown.append(Gate(
            "max_input_drift_share", "Share of input features drifted",
            f"≤ {100 * g.max_input_drift_share:.0f}%", None, None,
            "judged by the controller at the end of each step",
        ))  # fmt: skip
    return shown


def _context(request: Request, name: str) -> dict[str, Any]:
    registry = plane(request).registry
    try:
        rollout = registry.rollouts.latest(name)
    except NotFound:
        registry.deployments.get(name)  # an unknown deployment is a 404, not "no rollout"
        return {"name": name, "rollout": None}
    series = traffic(registry, name)
    return {
        "name": name,
        "rollout": rollout,
        "active": rollout.state in ACTIVE,
        "gates": gates(rollout, series),
        "series": {s.version: s for s in series},
    }


@router.get("/deployments/{name}/rollout", response_class=HTMLResponse)
def rollout_page(request: Request, name: str) -> HTMLResponse:
    return render(request, "rollout.html", **_context(request, name))


@router.get("/deployments/{name}/rollout/live", response_class=HTMLResponse)
def rollout_live(request: Request, name: str) -> HTMLResponse:
    return render(request, "rollout_live.html", **_context(request, name))


@router.post("/deployments/{name}/rollout/{action}", response_class=HTMLResponse)
def steer_rollout(request: Request, name: str, action: str) -> HTMLResponse:
    """The refreshed rollout section, with what happened (or why not) swapped in beside it;
    a refusal comes back as a 200 so htmx shows it."""
    registry = plane(request).registry
    message, failed = "", False
    try:
        if action not in ACTIONS:
            raise ShipyardError(f"unknown rollout action {action!r}: {', '.join(ACTIONS)}")
        require_scope(registry.deployments.get(name).manifest.model, action="deploy")
        done = RolloutService(registry).act(name, action)
        message = f"Rollout {done.id}: {action} done; state is now {done.state.value}."
    except ShipyardError as exc:
        message, failed = exc.message, True
    return render(request, "rollout_live.html", message=message, failed=failed,
                  **_context(request, name))  # fmt: skip
