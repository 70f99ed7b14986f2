"""Monitoring as the control plane offers it: feedback, quality, drift, the log.

The REST API and the CLI's local mode both call this, so the two answer alike.
"""

from __future__ import annotations

import time
from typing import Any

from shipyard.errors import InvalidInput
from shipyard.monitoring.drift import DriftResult
from shipyard.monitoring.drift_monitor import DriftMonitor
from shipyard.monitoring.drift_report import render_html
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


class MonitoringService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = MonitoringStore(registry.engine)
        self.drift = DriftMonitor(registry, self.store)

    def feedback(self, items: list[FeedbackItem], created_by: str = "") -> FeedbackResult:
        return self.store.add_feedback(items, created_by)

    def predictions(
        self, where: PredictionFilter, limit: int = 100, after_id: int | None = None
    ) -> list[PredictionRecord]:
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be between 1 and 10000")
        return self.store.predictions(where, limit, after_id)

    def export(self, where: PredictionFilter, destination: str) -> int:
        return self.store.export_parquet(where, destination)

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
        return render_html(
            DriftResult.from_dict(report.result),
            title=f"Drift: {report.deployment} ({report.model}:{report.version})",
            subtitle=f"{when}, last {report.window_seconds:g} s of logged inputs "
            f"({report.current_rows} rows) against the version's reference sample",
        )
