"""Control-plane REST routes for monitoring: feedback, prediction log, quality, drift, cost."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from shipyard.api.state import control_plane
from shipyard.durations import duration_seconds
from shipyard.errors import Conflict
from shipyard.monitoring.service import MonitoringService
from shipyard.monitoring.store import (
    MAX_FEEDBACK_ITEMS,
    DriftReport,
    FeedbackItem,
    FeedbackResult,
    PredictionFilter,
    PredictionRecord,
)
from shipyard.registry.audit import current_actor
from shipyard.security.gate import caller_models, require_scope

router = APIRouter(prefix="/api", tags=["monitoring"])


class FeedbackBatch(BaseModel):
    items: list[FeedbackItem] = Field(max_length=MAX_FEEDBACK_ITEMS)


def _monitoring(request: Request) -> MonitoringService:
    return control_plane(request).monitoring


def _deployment_in_scope(request: Request, name: str) -> None:
    """A key limited to some models reads and checks only deployments of those models."""
    if caller_models() is not None:
        require_scope(control_plane(request).registry.deployments.get(name).manifest.model)


def _described(where: PredictionFilter) -> dict[str, Any]:
    """A filter as the audit trail records it: only the fields given (None and False
    are the defaults: nothing narrowed)."""
    return {k: v for k, v in asdict(where).items() if v is not None and v is not False}


def _filter(
    deployment: str | None = None,
    model: str | None = None,
    version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> PredictionFilter:
    """The prediction-log query parameters both reading routes take."""
    return PredictionFilter(
        deployment=deployment,
        model=model,
        version=version,
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
    )


@router.post("/feedback")
def post_feedback(request: Request, body: FeedbackBatch) -> FeedbackResult:
    """Ground-truth labels by request id (the `x-request-id` of the prediction)."""
    return _monitoring(request).feedback(body.items, current_actor().name, caller_models())


@router.get("/predictions")
def list_predictions(
    request: Request,
    where: Annotated[PredictionFilter, Depends(_filter)],
    limit: int = 100,
    after_id: int | None = None,
) -> list[PredictionRecord]:
    """Prediction log records, newest first (or oldest first after `after_id`)."""
    return _monitoring(request).predictions(where, limit, after_id, caller_models())


@router.get("/predictions/export", response_class=FileResponse)
async def export_predictions(
    request: Request, where: Annotated[PredictionFilter, Depends(_filter)]
) -> FileResponse:
    """The matching records as one Parquet file, one row per predicted row."""
    monitoring = _monitoring(request)
    where = monitoring.scoped(where, caller_models())
    folder = Path(tempfile.mkdtemp(prefix="shipyard-export-"))
    path = folder / "predictions.parquet"
    try:
        rows = await run_in_threadpool(monitoring.export, where, str(path))
        # Logged inputs may be personal data: who took a copy of what is on the record.
        audit = control_plane(request).trust.audit
        await run_in_threadpool(
            audit.record,
            "predictions.export",
            where.deployment or where.model or "*",
            rows=rows,
            **_described(where),
        )
    except BaseException:
        path.unlink(missing_ok=True)
        folder.rmdir()
        raise

    def remove() -> None:
        path.unlink(missing_ok=True)
        folder.rmdir()

    return FileResponse(
        path,
        media_type="application/vnd.apache.parquet",
        filename="predictions.parquet",
        background=BackgroundTask(remove),
    )


@router.get("/deployments/{name}/quality")
def deployment_quality(
    request: Request, name: str, window: str = "1h", bucket: str | None = None
) -> dict[str, Any]:
    """Accuracy/F1/AUC (classifiers) or MAE/RMSE (regressors) per version, from feedback."""
    _deployment_in_scope(request, name)
    return _monitoring(request).quality(
        name,
        duration_seconds(window, "window"),
        duration_seconds(bucket, "bucket") if bucket else None,
    )


@router.post("/deployments/{name}/drift")
def check_drift(
    request: Request, name: str, window: str | None = None, version: int | None = None
) -> list[DriftReport]:
    """Check the deployment's logged inputs for drift now; the result is kept as history."""
    _deployment_in_scope(request, name)
    seconds = duration_seconds(window, "window") if window else None
    reports = _monitoring(request).check_drift(name, seconds, version)
    control_plane(request).trust.audit.record(
        "drift.check",
        name,
        reports=[report.id for report in reports],
        drifted=[report.version for report in reports if report.drifted],
    )
    return reports


@router.get("/deployments/{name}/drift")
def drift_history(
    request: Request, name: str, limit: int = 20, version: int | None = None
) -> list[DriftReport]:
    _deployment_in_scope(request, name)
    return _monitoring(request).drift_history(name, limit, version)


@router.get("/drift/{report_id}/report", response_class=HTMLResponse)
def drift_report(request: Request, report_id: int) -> HTMLResponse:
    """The check as an HTML page: tests per feature, reference-vs-current histograms."""
    return HTMLResponse(_monitoring(request).drift_html(report_id))


@router.get("/monitoring/cost")
def cost(request: Request) -> list[dict[str, Any]]:
    """Cost per 1,000 predictions per loaded version (needs SHIPYARD_PRICE_PER_REPLICA_HOUR)."""
    meter = control_plane(request).cost
    if meter is None:
        raise Conflict("cost needs a price: set SHIPYARD_PRICE_PER_REPLICA_HOUR")
    return [asdict(usage) for usage in meter.read()]
