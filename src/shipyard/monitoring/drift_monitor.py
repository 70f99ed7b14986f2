"""Drift checks of a deployment: on demand, on a schedule, kept as history, alerted.

A check compares each version's logged inputs over a window with the reference
sample stored with that version (`models register --signature-from`), and its
logged predictions with the version's own predictions on that sample.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid

import httpx
import numpy as np

from shipyard.errors import InvalidInput, NotFound
from shipyard.monitoring.drift import DriftResult, DriftThresholds, detect_drift
from shipyard.monitoring.store import DriftReport, MonitoringStore, prediction_output
from shipyard.registry.manifest import DeploymentManifest, DriftPolicy
from shipyard.registry.records import ModelVersion
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.signature import columns_to_inputs

log = logging.getLogger("shipyard.drift")
LEASE = "drift-monitor"
"""The scheduler's own lease, apart from the rollout controller's: replicas may hold one each."""
TICK_SECONDS = 5.0


class DriftMonitor:
    def __init__(self, registry: Registry, store: MonitoringStore | None = None) -> None:
        self.registry = registry
        self.store = store or MonitoringStore(registry.engine)
        self.latest: dict[tuple[str, int], DriftReport] = {}
        """The newest check of each (deployment, version) this process ran: /metrics."""
        self.checks = 0
        self.alerts = 0
        self._reference_outputs: dict[tuple[str, int], np.ndarray | None] = {}
        self._lock = threading.Lock()

    def check(
        self,
        deployment: str,
        window_seconds: float | None = None,
        version: int | None = None,
        trigger: str = "demand",
    ) -> list[DriftReport]:
        """Check every version that answered the deployment in the window (or one)."""
        manifest = self.registry.deployments.get(deployment).manifest
        policy = manifest.watch.drift
        window = window_seconds if window_seconds is not None else policy.window_seconds
        now = time.time()
        since = now - window
        if version is not None:
            versions = [version]
        else:
            versions = [v for model, v in self.store.versions_seen(deployment, since)
                        if model == manifest.model]  # fmt: skip
        if not versions:
            raise NotFound(
                f"no logged predictions of {deployment!r} in the last {window:g} s: "
                "is monitoring.sample above 0, and has it had traffic?"
            )
        reports = []
        for number in versions:
            record = self.registry.models.get_version(ModelRef(manifest.model, number))
            result, rows, failed = self._check_version(deployment, manifest, record, since, policy)
            report_id = self.store.save_drift(
                {
                    "deployment": deployment,
                    "model": manifest.model,
                    "version": number,
                    "at": now,
                    "window_seconds": window,
                    "current_rows": rows,
                    "drifted": result.drifted,
                    "share": result.share,
                    "trigger": trigger,
                    # Failed requests' inputs are in the sample (the prediction log keeps
                    # them): said, so a failed canary's report is read for what it is.
                    "result": {**result.to_dict(), "failed_rows": failed},
                }
            )
            report = self.store.drift_report(report_id)
            reports.append(report)
            self._remember(report, policy)
        return reports

    def _check_version(
        self,
        deployment: str,
        manifest: DeploymentManifest,
        record: ModelVersion,
        since: float,
        policy: DriftPolicy,
    ) -> tuple[DriftResult, int, int]:
        if record.reference_sample is None:
            raise InvalidInput(
                f"{record.model}:{record.version} has no reference sample to compare with: "
                "register it with --signature-from EXAMPLE.csv"
            )
        table = self.registry.artifacts.read_table(record.reference_sample.digest)
        reference = {name: table.column(name).to_numpy(zero_copy_only=False)
                     for name in table.column_names}  # fmt: skip
        inputs, outputs, rows, failed = self.store.window(deployment, record.version, since)
        current = _by_reference_columns(inputs, list(reference))
        thresholds = DriftThresholds(
            p_value=policy.p_value, psi=policy.psi, share=policy.share, min_rows=policy.min_rows
        )
        output_name = prediction_output(outputs, manifest.watch.prediction_output)
        reference_output = None
        if output_name is not None:
            reference_output = self._reference_output(record, reference, output_name)
            if reference_output is None:
                output_name = None
        return (
            detect_drift(
                reference,
                current,
                thresholds,
                reference_output=reference_output,
                current_output=outputs[output_name] if output_name is not None else None,
            ),
            rows,
            failed,
        )

    def _reference_output(
        self, record: ModelVersion, reference: dict[str, np.ndarray], output: str
    ) -> np.ndarray | None:
        """The version's own answers on its reference sample (computed once per process)."""
        key = (record.model, record.version)
        with self._lock:
            if key not in self._reference_outputs:
                self._reference_outputs[key] = self._predict_reference(record, reference, output)
            return self._reference_outputs[key]

    def _predict_reference(
        self, record: ModelVersion, reference: dict[str, np.ndarray], output: str
    ) -> np.ndarray | None:
        from shipyard.config import Settings
        from shipyard.runtimes import VersionSpec
        from shipyard.runtimes.environments import EnvironmentBuilder
        from shipyard.runtimes.isolated import predict_isolated

        try:
            path = self.registry.artifacts.materialize(record.artifact.digest)
            inputs = _signature_inputs(record, reference)
            spec = VersionSpec.of(record, path)
            settings = Settings()
            # The model's own code: run in a throw-away process, never in the server, on
            # the version's own environment when the server's packages do not suit it.
            answer = predict_isolated(
                spec,
                inputs,
                [output],
                settings.isolation_limits,
                task=f"predicting {record.model}:{record.version}'s reference sample",
                python=EnvironmentBuilder.from_settings(settings).python_for(spec.environment),
            )
            return np.asarray(answer[output])
        except Exception as exc:  # output drift is a bonus; the input check stands alone
            log.warning(
                "no output drift for %s:%s: predicting its reference sample failed: %s",
                record.model,
                record.version,
                exc,
            )
            return None

    def _remember(self, report: DriftReport, policy: DriftPolicy) -> None:
        key = (report.deployment, report.version)
        previous = self.latest.get(key)
        self.latest[key] = report
        self.checks += 1
        newly = report.drifted and (previous is None or not previous.drifted)
        if newly and policy.webhook:
            self.alerts += 1
            _alert(policy.webhook, report)


def _alert(url: str, report: DriftReport) -> None:
    """Tell the webhook once per crossing; a failed call is logged, never raised."""
    drifted = [f["name"] for f in report.result.get("features", []) if f.get("drifted")]
    body = {
        "event": "drift_detected",
        "deployment": report.deployment,
        "model": report.model,
        "version": report.version,
        "share": report.share,
        "drifted_features": drifted,
        "report_id": report.id,
        "at": report.at,
    }
    try:
        httpx.post(url, json=body, timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("drift alert to %s failed: %s", url, exc)


def _by_reference_columns(
    inputs: dict[str, np.ndarray], columns: list[str]
) -> dict[str, np.ndarray]:
    """Logged inputs keyed like the reference sample's columns.

    Named inputs match by name. A model fed one 2-D tensor logs it under one name;
    its columns then match the reference's columns by position.
    """
    if any(name in inputs for name in columns):
        return {name: inputs[name] for name in columns if name in inputs}
    if len(inputs) == 1:
        (array,) = inputs.values()
        if array.ndim == 2 and array.shape[1] == len(columns):
            return {name: array[:, j] for j, name in enumerate(columns)}
    return {}


def _signature_inputs(
    record: ModelVersion, reference: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The reference sample shaped as the model's inputs (named columns, or one matrix)."""
    try:
        return columns_to_inputs(reference, record.signature)
    except KeyError:
        raise InvalidInput(
            "the reference sample's columns do not match the model's inputs"
        ) from None


class DriftScheduler:
    """Runs each deployment's scheduled drift check; among replicas, the lease holder."""

    def __init__(self, monitor: DriftMonitor, lease_seconds: float = 30.0) -> None:
        self.monitor = monitor
        self.lease_seconds = lease_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.last_run: dict[str, float] = {}

    async def run(self, tick_seconds: float = TICK_SECONDS) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("scheduled drift checks failed")
            await asyncio.sleep(tick_seconds)  # a schedule's cadence, not a sync point

    def tick(self, now: float | None = None) -> list[DriftReport]:
        """Run the checks that are due; returns what was checked."""
        now = time.time() if now is None else now
        due = []
        for revision in self.monitor.registry.deployments.list():
            every = revision.manifest.watch.drift.schedule_seconds
            if every is not None and now - self.last_run.get(revision.deployment, 0.0) >= every:
                due.append(revision.deployment)
        if not due:
            return []
        holds = self.monitor.registry.leases.hold(LEASE, self.holder, self.lease_seconds)
        if not holds:
            return []
        reports: list[DriftReport] = []
        for deployment in due:
            self.last_run[deployment] = now
            try:
                reports += self.monitor.check(deployment, trigger="schedule")
            except (NotFound, InvalidInput) as exc:
                log.info("drift check of %s skipped: %s", deployment, exc.message)
        return reports
