"""Console pages: a deployment's drift by feature, live quality from feedback, and the
prediction log searched by request id."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from shipyard.errors import ShipyardError
from shipyard.monitoring import drift_report
from shipyard.monitoring.drift import DriftResult, FeatureDrift
from shipyard.monitoring.store import PredictionFilter, PredictionRecord
from shipyard.security.gate import caller_models, require_scope
from shipyard.ui.common import plane, render

router = APIRouter()
QUALITY_WINDOW = 3600.0
QUALITY_BUCKET = 600.0
SEARCH_DEPTH = 500
"""The prediction log has no request-id filter: the newest this many records are searched."""


def _number(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None and math.isfinite(value) else "—"


def _histogram(feature: FeatureDrift) -> Markup:
    # The drift report's SVG: numbers, escaped labels and presentation attributes only.
    return Markup(drift_report._histogram_svg(feature.histogram))


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@router.get("/monitoring/{name}", response_class=HTMLResponse)
def monitoring_page(request: Request, name: str) -> HTMLResponse:
    control = plane(request)
    model = control.registry.deployments.get(name).manifest.model  # 404 when unknown
    if caller_models() is not None:
        require_scope(model, action="read")
    reports = control.monitoring.drift_history(name, 1)
    report = reports[0] if reports else None
    result = DriftResult.from_dict(report.result) if report else None
    features: list[tuple[FeatureDrift, bool]] = []
    if result is not None:
        features = [(f, False) for f in result.features]
        if result.output is not None:
            features.append((result.output, True))
    quality: dict[str, Any] | None = None
    quality_error = ""
    try:
        quality = control.monitoring.quality(name, QUALITY_WINDOW, QUALITY_BUCKET)
    except ShipyardError as exc:
        quality_error = exc.message
    metric_names: list[str] = []
    if quality:
        for metrics in [*quality["by_version"].values(), *quality.get("over_time", [])]:
            for key in metrics:
                if key not in metric_names and key not in ("version", "start", "end", "count"):
                    metric_names.append(key)
    return render(request, "monitoring.html", name=name, model=model, report=report,
                  result=result, features=features, histogram=_histogram, number=_number,
                  when=_when, quality=quality, quality_error=quality_error,
                  metric_names=metric_names, window=QUALITY_WINDOW,
                  bucket=QUALITY_BUCKET)  # fmt: skip


@router.get("/predictions", response_class=HTMLResponse)
def predictions_page(
    request: Request, request_id: Annotated[str, Query(max_length=128)] = ""
) -> HTMLResponse:
    wanted = request_id.strip()
    found: list[PredictionRecord] = []
    error = ""
    if wanted:
        try:
            recent = plane(request).monitoring.predictions(
                PredictionFilter(), limit=SEARCH_DEPTH, models=caller_models()
            )
            found = [record for record in recent if record.request_id == wanted]
        except ShipyardError as exc:
            error = exc.message
    return render(request, "predictions.html", request_id=wanted, found=found, error=error,
                  depth=SEARCH_DEPTH, when=_when)  # fmt: skip
