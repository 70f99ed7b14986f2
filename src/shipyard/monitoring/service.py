"""Monitoring as the control plane offers it: feedback, quality, drift, the log.

The REST API and the CLI's local mode both call this, so the two answer alike.
A caller whose key is limited to some models (`models`; None: any) reads and labels
only their predictions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from shipyard.errors import Forbidden, InvalidInput
from shipyard.monitoring.drift import DriftResult
from shipyard.monitoring.drift_monitor import DriftMonitor
from shipyard.monitoring.drift_report import render_html, rows_described
from shipyard.monitoring.quality import quality_by_version, quality_over_time
from shipyard.monitoring.store import (
    DriftReport,
    FeedbackItem,
    FeedbackResult,
    MonitoringStore,
    PredictionFilter,
    PredictionRecord,
)
from shipyard.registry.service import Registry
from shipyard.security.gate import check_scope


class MonitoringService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = MonitoringStore(registry.engine)
        self.drift = DriftMonitor(registry, self.store)

    def feedback(
        self,
        items: list[FeedbackItem],
        created_by: str = "",
        models: frozenset[str] | None = None,
    ) -> FeedbackResult:
        """Labels by request id. A caller limited to `models` may label only predictions
        it could have made: logged ones, of those models (else nothing is written)."""
        if models is not None:
            self._check_labels(items, models)
        return self.store.add_feedback(items, created_by)

    def _check_labels(self, items: Sequence[FeedbackItem], models: frozenset[str]) -> None:
        ids = [item.request_id for item in items]
        owners = self.store.models_of(ids)
        for request_id in ids:
            # One answer for unknown ids and other models' ids: no oracle for either.
            found = owners.get(request_id)
            if not found or not found <= models:
                raise Forbidden(
                    f"request {request_id[:128]!r} is not a logged prediction of a model "
                    "this key may call"
                )

    def scoped(self, where: PredictionFilter, models: frozenset[str] | None) -> PredictionFilter:
        """The filter narrowed to the one model a limited caller may read: the one it
        names, its deployment's, or its only one. Forbidden outside its models."""
        if models is None:
            return where
        model = where.model
        if model is None and where.deployment is not None:
            model = self.registry.deployments.get(where.deployment).manifest.model
        if model is None:
            if len(models) != 1:
                raise InvalidInput(
                    f"this key reads only models {', '.join(sorted(models))}: name one (model=)"
                )
            (model,) = models
        check_scope(models, model, action="read predictions of")
        return dataclasses.replace(where, model=model)

    def predictions(
        self,
        where: PredictionFilter,
        limit: int = 100,
        after_id: int | None = None,
        models: frozenset[str] | None = None,
    ) -> list[PredictionRecord]:
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be between 1 and 10000")
        return self.store.predictions(self.scoped(where, models), limit, after_id)

    def export(
        self, where: PredictionFilter, destination: str, models: frozenset[str] | None = None
    ) -> int:
        return self.store.export_parquet(self.scoped(where, models), destination)

    def quality(
        self, deployment: str, window_seconds: float, bucket_seconds: float | None = None
    ) -> dict[str, Any]:
        """Live quality per version over the window, and per time bucket if asked."""
        manifest = self.registry.deployments.get(deployment).manifest
        since = time.time() - window_seconds
        items = self.store.labelled(deployment, since, None, manifest.watch.prediction_output)
        answer: dict[str, Any] = {
            "deployment": deployment,
            "window_seconds": window_seconds,
            "labelled_rows": len(items),
            "by_version": quality_by_version(items),
        }
        if bucket_seconds is not None:
            answer["bucket_seconds"] = bucket_seconds
            answer["over_time"] = quality_over_time(items, bucket_seconds)
        return answer

    def check_drift(
        self, deployment: str, window_seconds: float | None = None, version: int | None = None
    ) -> list[DriftReport]:
        return self.drift.check(deployment, window_seconds, version, trigger="demand")

    def drift_history(
        self, deployment: str, limit: int = 20, version: int | None = None
    ) -> list[DriftReport]:
        self.registry.deployments.get(deployment)  # 404 for an unknown deployment
        return self.store.drift_reports(deployment, limit, version)

    def drift_html(self, report_id: int) -> str:
        report = self.store.drift_report(report_id)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.at))
        rows = rows_described(report.current_rows, report.result)
        return render_html(
            DriftResult.from_dict(report.result),
            title=f"Drift: {report.deployment} ({report.model}:{report.version})",
            subtitle=f"{when}, last {report.window_seconds:g} s of logged inputs "
            f"({rows}) against the version's reference sample",
        )
