"""Console pages: a model, its versions (lineage, signature, evaluations), promotions,
and moving an alias."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from shipyard.errors import ShipyardError
from shipyard.registry import records
from shipyard.registry.refs import check_model_name
from shipyard.security.gate import require_scope
from shipyard.ui.common import plane, render

router = APIRouter()

VERSIONS_SHOWN = 100
EXPANDED = 3
"""The newest versions open their details at once; the rest are a click away."""


def evaluation_summary(evaluation: records.Evaluation) -> str:
    """One line for a table cell: the error, the gates' verdict and a few metrics."""
    if evaluation.error:
        return f"failed: {evaluation.error[:160]}"
    result = evaluation.result
    if not result:
        return evaluation.state
    parts = []
    gates = result.get("gates")
    if isinstance(gates, list) and gates:
        failed = sum(not (isinstance(g, Mapping) and g.get("passed")) for g in gates)
        parts.append(f"{failed} of {len(gates)} gates failed" if failed else "all gates passed")
    metrics = result.get("metrics")
    candidate = metrics.get("candidate") if isinstance(metrics, Mapping) else None
    if isinstance(candidate, Mapping):
        numbers = [(k, v) for k, v in candidate.items() if isinstance(v, int | float)][:3]
        parts.extend(f"{k} {v:.4g}" for k, v in numbers)
    return "; ".join(parts) or evaluation.state


def _model_context(request: Request, name: str) -> dict[str, Any]:
    registry = plane(request).registry
    model = registry.models.get_model(name)
    page = registry.models.list_versions(name, include_archived=True, limit=VERSIONS_SHOWN)
    versions = sorted(page.versions, key=lambda v: v.version, reverse=True)
    # One query for the model's evaluations, grouped here: none per version.
    evaluations: dict[int, list[records.Evaluation]] = defaultdict(list)
    for evaluation in registry.evaluations.recent(model=name, limit=200):
        evaluations[evaluation.version].append(evaluation)
    return {
        "model": model,
        "versions": versions,
        "more_versions": page.next_page_token is not None,
        "evaluations": evaluations,
        "summary": evaluation_summary,
        "promotions": registry.promotions.recent(model=name, limit=20),
        "expanded": EXPANDED,
    }


@router.get("/models/{name}", response_class=HTMLResponse)
async def model_page(request: Request, name: str) -> HTMLResponse:
    check_model_name(name)
    require_scope(name)
    context = await run_in_threadpool(_model_context, request, name)
    return render(request, "model.html", **context)


def _move_alias(request: Request, name: str, alias: str, version: int) -> records.Alias:
    return plane(request).jobs.set_alias(name, alias, version)


@router.post("/models/{name}/aliases", response_class=HTMLResponse)
async def move_alias(
    request: Request,
    name: str,
    alias: Annotated[str, Form()],
    version: Annotated[str, Form()],
) -> HTMLResponse:
    """Point `alias` at `version`; answers the result and the model's aliases now."""
    require_scope(name, action="deploy")
    moved: records.Alias | None = None
    error = ""
    try:
        number = int(version)
    except ValueError:
        error = f"version must be a number, not {version[:40]!r}"
    else:
        try:
            moved = await run_in_threadpool(_move_alias, request, name, alias.strip(), number)
        except ShipyardError as exc:  # shown in the page: htmx swaps only 2xx answers
            error = exc.message
    model = await run_in_threadpool(plane(request).registry.models.get_model, name)
    return render(request, "model_alias_result.html", model=model, moved=moved, error=error)
