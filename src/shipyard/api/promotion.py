"""Control-plane REST routes for evaluations, replays, promotion policies and promotions.

Starting an evaluation, a replay or a promotion answers 202 with the stored record at
once; the work runs as a background job (promotion/jobs.py) and the record is polled
until its state leaves `running` (evaluations) or `evaluating` (promotions).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from shipyard.api.models import receive_file, version_ref
from shipyard.api.state import control_plane
from shipyard.errors import InvalidInput
from shipyard.promotion.policy import parse_policy
from shipyard.promotion.service import EvaluationOrder
from shipyard.registry import records
from shipyard.registry.refs import parse_ref

router = APIRouter(prefix="/api", tags=["promotion"])


class ReplayOrder(BaseModel):
    to: str = Field(description="The candidate: NAME:VERSION or NAME@ALIAS.")
    window: str | None = Field(default="24h", description="How far back: 24h, 30m…; null: all.")
    limit: int | None = Field(default=None, ge=1, description="Newest requests at most.")


class Decision(BaseModel):
    reason: str = ""


def _order(
    data: UploadFile | None, path: str | None, label: str | None, slice_by: str | None,
    max_rows: int | None, scratch: Path,
) -> EvaluationOrder | None:  # fmt: skip
    """The data to evaluate on: an uploaded file (the usual case), or a path the server
    itself reads (an object-store URI shared with it)."""
    if data is None and path is None:
        return None
    if label is None:
        raise InvalidInput("label: name the column that holds the true values")
    if data is not None:
        received = receive_file(data, scratch)
        return EvaluationOrder(str(received), label, slice_by, max_rows, shown_as=received.name)
    return EvaluationOrder(str(path), label, slice_by, max_rows)


@router.post("/models/{name}/versions/{version}/evaluations", status_code=202)
def start_evaluation(
    request: Request,
    name: str,
    version: str,
    label: Annotated[str, Form(description="The column of true values.")],
    data: Annotated[UploadFile | None, File(description="Holdout .csv or .parquet.")] = None,
    path: Annotated[str | None, Form(description="Or a URI the server reads.")] = None,
    against: Annotated[str | None, Form(description="Champion alias or version.")] = None,
    slice_by: Annotated[str | None, Form()] = None,
    max_rows: Annotated[int | None, Form(ge=1)] = None,
) -> records.Evaluation:
    scratch = Path(tempfile.mkdtemp(prefix="shipyard-evaluation-"))
    order = _order(data, path, label, slice_by, max_rows, scratch)
    if order is None:
        raise InvalidInput("data: upload a holdout file or give a path the server can read")
    jobs = control_plane(request).jobs
    return jobs.evaluate(version_ref(name, version), order, against or "production", scratch)


@router.get("/models/{name}/versions/{version}/evaluations")
def list_evaluations(
    request: Request, name: str, version: str, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[records.Evaluation]:
    registry = control_plane(request).registry
    found = registry.models.get_version(version_ref(name, version))
    return registry.evaluations.recent(found.model, found.version, limit=limit)


@router.get("/evaluations/{evaluation_id}")
def get_evaluation(request: Request, evaluation_id: int) -> records.Evaluation:
    return control_plane(request).registry.evaluations.get(evaluation_id)


@router.get("/evaluations/{evaluation_id}/report", response_class=HTMLResponse)
def evaluation_report(request: Request, evaluation_id: int) -> HTMLResponse:
    return HTMLResponse(control_plane(request).registry.evaluations.report(evaluation_id))


@router.post("/deployments/{name}/replay", status_code=202)
def start_replay(request: Request, name: str, body: ReplayOrder) -> records.Evaluation:
    return control_plane(request).jobs.replay(name, parse_ref(body.to), body.window, body.limit)


@router.get("/policies")
def list_policies(request: Request) -> list[records.PolicyRevision]:
    return control_plane(request).registry.policies.latest_all()


@router.post("/policies", status_code=201)
def apply_policy(
    request: Request, policy: Annotated[str, Form(description="The policy file (YAML).")]
) -> records.PolicyRevision:
    parsed = parse_policy(policy)
    return control_plane(request).registry.policies.apply(parsed.name, parsed.document())


@router.get("/policies/{name}")
def get_policy(
    request: Request, name: str, revision: Annotated[int | None, Query(ge=1)] = None
) -> records.PolicyRevision:
    return control_plane(request).registry.policies.get(name, revision)


@router.post("/promotions", status_code=202)
def start_promotion(
    request: Request,
    candidate: Annotated[str, Form(description="NAME:VERSION to promote.")],
    policy: Annotated[str, Form(description="The policy file (YAML).")],
    data: Annotated[
        UploadFile | None, File(description="Holdout, overriding the policy's.")
    ] = None,
    path: Annotated[str | None, Form()] = None,
    label: Annotated[str | None, Form()] = None,
    slice_by: Annotated[str | None, Form()] = None,
) -> records.Promotion:
    parsed = parse_policy(policy)
    scratch = Path(tempfile.mkdtemp(prefix="shipyard-promotion-"))
    label = label or (parsed.data.label if parsed.data else None)
    order = _order(data, path, label, slice_by, None, scratch)
    if order is not None and order.slice_by is None and parsed.data is not None:
        order = EvaluationOrder(order.path, order.label, parsed.data.slice_by,
                                parsed.data.max_rows, order.shown_as)  # fmt: skip
    jobs = control_plane(request).jobs
    return jobs.promote(parse_ref(candidate), parsed.document(), order, scratch)


@router.get("/promotions")
def list_promotions(
    request: Request, model: str | None = None,
    state: records.PromotionState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[records.Promotion]:  # fmt: skip
    return control_plane(request).registry.promotions.recent(model, state, limit)


@router.get("/promotions/{promotion_id}")
def get_promotion(request: Request, promotion_id: int) -> records.Promotion:
    return control_plane(request).registry.promotions.get(promotion_id)


@router.post("/promotions/{promotion_id}/approve")
def approve(request: Request, promotion_id: int, body: Decision) -> records.Promotion:
    return control_plane(request).jobs.service.decide(promotion_id, True, body.reason)


@router.post("/promotions/{promotion_id}/reject")
def reject(request: Request, promotion_id: int, body: Decision) -> records.Promotion:
    return control_plane(request).jobs.service.decide(promotion_id, False, body.reason)
