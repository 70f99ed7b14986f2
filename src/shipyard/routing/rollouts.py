"""Progressive rollouts: move a deployment to a candidate version step by step.

At each step the candidate gets its share of traffic (a new deployment
revision), then the controller waits for the bake time and a minimum number of
candidate requests, and compares candidate with stable over that same window:
error rate, p95 latency ratio and prediction drift (two-sample
Kolmogorov-Smirnov distance). A failed gate sends all traffic back to stable at
once, and the numbers go into the rollout record, the audit trail and the
optional webhook. State lives in the registry, so a restarted server resumes a
rollout at its step; among replicas sharing a database, one holds the
controller lease at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, NotFound
from shipyard.monitoring.drift_monitor import DriftMonitor
from shipyard.registry import records
from shipyard.registry.audit import Actor, acting_as
from shipyard.registry.manifest import DeploymentManifest, RolloutPolicy, Route
from shipyard.registry.records import RolloutGates, RolloutState
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.routing.arms import main_index
from shipyard.routing.deployments import ArmWindow, DeploymentRouter
from shipyard.routing.fleet_gates import fleet_window

log = logging.getLogger("shipyard.rollouts")
LEASE = "rollout-controller"
"""The controller's own lease; the drift scheduler holds another, so two replicas may
run one loop each."""


class RolloutService:
    """Starting and steering rollouts; used by the API, the CLI and the controller."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _manifest(self, deployment: str) -> DeploymentManifest:
        return self.registry.deployments.get(deployment).manifest

    def _version(self, manifest: DeploymentManifest, route: Route) -> int:
        if route.version is not None:
            return route.version
        ref = ModelRef(manifest.model, alias=route.alias)
        return self.registry.models.get_version(ref).version

    def start(
        self,
        deployment: str,
        to: int,
        steps: list[int] | None = None,
        bake_seconds: float | None = None,
        min_requests: int | None = None,
        gates: dict[str, float] | None = None,
        webhook: str | None = None,
    ) -> records.Rollout:
        manifest = self._manifest(deployment)
        self.registry.models.get_version(ModelRef(manifest.model, version=to))  # exists?
        main = manifest.routes[main_index(manifest.routes)]
        stable = self._version(manifest, main)
        policy = manifest.rollout or RolloutPolicy()
        return self.registry.rollouts.start(
            deployment,
            stable=stable,
            candidate=to,
            steps=steps or policy.steps,
            bake_seconds=bake_seconds if bake_seconds is not None else policy.bake_seconds,
            min_requests=min_requests or policy.min_requests,
            gates={**policy.gates, **(gates or {})},
            webhook=webhook or policy.webhook,
            alias=main.alias,  # promotion moves it: the deployment keeps routing by it
        )

    def route(self, rollout: records.Rollout, candidate_weight: int, reason: str) -> int:
        """Apply the split stable/candidate as a new revision; returns the live revision."""
        manifest = self._manifest(rollout.deployment)
        routes = []
        if candidate_weight < 100:
            routes.append(Route(version=rollout.stable_version, weight=100 - candidate_weight))
        if candidate_weight > 0:
            routes.append(Route(version=rollout.candidate_version, weight=candidate_weight))
        updated = manifest.model_copy(update={"routes": routes})
        return self.registry.deployments.apply(updated, reason=reason).revision

    def conclude(self, rollout: records.Rollout, promoted: bool, reason: str) -> int:
        """All traffic to the candidate (promoted) or back to stable; returns the live
        revision. A deployment that routed by an alias routes by it again: promotion moves
        the alias to the candidate first, so every other user of the alias follows, and
        a later alias move (a guardrail's, a promotion's) still reaches this deployment."""
        if rollout.alias is None:
            return self.route(rollout, 100 if promoted else 0, reason)
        manifest = self._manifest(rollout.deployment)
        if promoted:
            self.registry.models.set_alias(manifest.model, rollout.alias,
                                           rollout.candidate_version)  # fmt: skip
        routes = [Route(alias=rollout.alias, weight=100)]
        updated = manifest.model_copy(update={"routes": routes})
        return self.registry.deployments.apply(updated, reason=reason).revision

    def act(self, deployment: str, action: str) -> records.Rollout:
        rollout = self.registry.rollouts.active(deployment)
        if rollout is None:
            raise NotFound(f"{deployment} has no rollout in progress")
        rollouts = self.registry.rollouts
        if action == "pause":
            return rollouts.update(rollout.id, "rollout.pause", state=RolloutState.PAUSED)
        if action == "resume":
            return rollouts.update(rollout.id, "rollout.resume", state=RolloutState.RUNNING)
        if action == "promote":
            self.conclude(rollout, True, f"rollout {rollout.id} promoted")
            return rollouts.update(rollout.id, "rollout.promote", "promoted by hand",
                                   state=RolloutState.PROMOTED,
                                   step_index=len(rollout.steps) - 1)  # fmt: skip
        if action == "abort":
            self.conclude(rollout, False, f"rollout {rollout.id} aborted")
            return rollouts.update(rollout.id, "rollout.abort", "aborted by hand",
                                   state=RolloutState.ABORTED)  # fmt: skip
        raise InvalidInput(f"unknown rollout action {action!r}: promote, pause, resume or abort")


def _p95(values: Any) -> float:
    return float(np.percentile(np.fromiter(values, float), 95))


def evaluate(gates: RolloutGates, candidate: ArmWindow, stable: ArmWindow) -> str | None:
    """Why the candidate fails its gates against stable, or None if it passes."""
    failures = []
    candidate_rate = candidate.errors / candidate.requests if candidate.requests else 0.0
    stable_rate = stable.errors / stable.requests if stable.requests else 0.0
    limit = gates.max_error_rate_increase
    if candidate_rate - stable_rate > limit:
        failures.append(f"error rate {candidate_rate:.3f} vs stable {stable_rate:.3f} "
                        f"(allowed +{limit:g})")  # fmt: skip
    if len(candidate.latencies) >= 5 and len(stable.latencies) >= 5:
        ratio = _p95(candidate.latencies) / max(_p95(stable.latencies), 1e-9)
        if ratio > gates.max_p95_ratio:
            failures.append(f"p95 latency {ratio:.2f}x stable's "
                            f"({_p95(candidate.latencies) * 1000:.1f} ms vs "
                            f"{_p95(stable.latencies) * 1000:.1f} ms; allowed "
                            f"{gates.max_p95_ratio:g}x)")  # fmt: skip
    if len(candidate.predictions) >= 20 and len(stable.predictions) >= 20:
        from scipy.stats import ks_2samp

        distance = float(ks_2samp(list(candidate.predictions), list(stable.predictions)).statistic)
        if distance > gates.max_drift:
            failures.append(f"prediction drift KS {distance:.2f} (allowed {gates.max_drift:g})")
    floor = gates.min_agreement
    copies = candidate.agreement
    compared = copies.sent - copies.failed
    if floor > 0 and compared >= 20:
        agreement = copies.agreed / compared
        if agreement < floor:
            failures.append(f"agreement with stable {agreement:.2f} over {compared} "
                            f"compared answers (needed {floor:g})")  # fmt: skip
    return "; ".join(failures) or None


def ready_to_judge(rollout: records.Rollout, candidate: ArmWindow, now: datetime) -> bool:
    """Whether the step has baked for `bake_seconds` and the candidate has answered
    `min_requests` requests (errors count) in it: gates judge no thinner window."""
    if rollout.step_started_at is None:
        return False
    baked = (now - rollout.step_started_at).total_seconds()
    return baked >= rollout.bake_seconds and candidate.requests >= rollout.min_requests


class RolloutController:
    """Advances running rollouts; one per server, acting only while it holds the lease."""

    def __init__(
        self, registry: Registry, router: DeploymentRouter, tick_seconds: float = 0.5,
        lease_seconds: float = 10.0, drift: DriftMonitor | None = None,
    ) -> None:  # fmt: skip
        self.registry = registry
        self.drift = drift
        self.service = RolloutService(registry)
        self.router = router
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._idle_at: int | None = None
        """The registry's change sequence when no rollout was running: until it moves,
        none can have started, and a tick reads one row instead of the rollouts."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)  # a controller's cadence, not a sync point
            try:
                await self.tick()
            except Exception:
                log.exception("rollout controller tick failed")

    async def tick(self) -> None:
        running = await asyncio.to_thread(self._running)
        if not running:
            return  # nothing to drive: no lease write (a write per tick costs an fsync)
        holds = await asyncio.to_thread(
            self.registry.leases.hold, LEASE, self.holder, self.lease_seconds
        )
        if not holds:
            return
        # Revisions and audit events it makes name the controller, not whoever started it.
        with acting_as(Actor("rollout-controller", "system", self.holder)):
            for rollout in running:
                await self._advance(rollout)

    def _running(self) -> list[records.Rollout]:
        """Running rollouts; none, without reading them, while the registry is unchanged
        since a read found none (starting or resuming one is an audited change)."""
        sequence = self.registry.changes.current(self.tick_seconds / 2)
        if sequence == self._idle_at:
            return []
        running = self.registry.rollouts.running()
        self._idle_at = None if running else sequence
        return running

    async def _advance(self, rollout: records.Rollout) -> None:
        name = rollout.deployment
        live = await asyncio.to_thread(self.registry.deployments.find, name)
        if live is None:
            await self._set(rollout, "rollout.abort", "the deployment is gone",
                            state=RolloutState.ABORTED)  # fmt: skip
            return
        revision = live.revision
        if self._split(live.manifest) != (rollout.stable_version, rollout.candidate_version,
                                          rollout.weight):  # fmt: skip
            reason = f"rollout {rollout.id} step {rollout.step_index + 1}: {rollout.weight}%"
            revision = await asyncio.to_thread(self.service.route, rollout, rollout.weight, reason)
        if self.router.serving_revision(name) != revision:
            await self.router.route(name)  # let the router notice; the step starts once it serves
            return
        if rollout.step_started_at is None:
            self.router.reset_windows(name)
            await self._set(rollout, "rollout.step", step_started_at=datetime.now(UTC))
            return
        now = datetime.now(UTC)
        baked = (now - rollout.step_started_at).total_seconds()
        since = rollout.step_started_at
        candidate = await self._window(name, str(rollout.candidate_version), since)
        if not ready_to_judge(rollout, candidate, now):
            return
        stable = await self._window(name, str(rollout.stable_version), since)
        failure = evaluate(rollout.gates, candidate, stable)
        if failure is None:
            failure = await asyncio.to_thread(self._input_drift, rollout, baked)
        if failure is not None:
            await asyncio.to_thread(self.service.conclude, rollout, False,
                                    f"rollout {rollout.id} rolled back")  # fmt: skip
            done = await self._set(rollout, "rollout.rollback", failure,
                                   state=RolloutState.ROLLED_BACK)  # fmt: skip
            log.warning("rollout %d of %s rolled back: %s", rollout.id, name, failure)
            await self._notify(done)
            return
        following = rollout.step_index + 1
        if following >= len(rollout.steps) or rollout.steps[following] == 100:
            await asyncio.to_thread(self.service.conclude, rollout, True,
                                    f"rollout {rollout.id} promoted")  # fmt: skip
            done = await self._set(rollout, "rollout.promote", "every gate passed",
                                   state=RolloutState.PROMOTED,
                                   step_index=len(rollout.steps) - 1)  # fmt: skip
            await self._notify(done)
            return
        await self._set(rollout, "rollout.step", step_index=following, step_started_at=None)

    async def _window(self, deployment: str, version: str, since: datetime) -> ArmWindow:
        """The arm's traffic since the step began over the whole fleet: this replica's
        own window and every other replica's reports (routing/fleet_gates.py)."""
        others = await asyncio.to_thread(
            self.registry.fleet.reports, deployment, version, since, self.holder
        )
        return fleet_window(self.router.window(deployment, version), others)

    def _input_drift(self, rollout: records.Rollout, baked: float) -> str | None:
        """The input-drift gate: the candidate's logged inputs over this step against
        its reference sample. No verdict (too few logged rows) passes, like the
        latency gate with too few samples."""
        limit = rollout.gates.max_input_drift_share
        if limit >= 1.0 or self.drift is None:
            return None
        try:
            (report,) = self.drift.check(
                rollout.deployment, baked, rollout.candidate_version, trigger="rollout"
            )
        except (NotFound, InvalidInput) as exc:
            log.info("input drift gate of rollout %d: no verdict: %s", rollout.id, exc.message)
            return None
        if report.result.get("enough_rows") and report.share > limit:
            return (f"input drift: {report.share:.0%} of features drifted from the reference "
                    f"sample (allowed {limit:.0%}; drift report {report.id})")  # fmt: skip
        return None

    @staticmethod
    def _split(manifest: DeploymentManifest) -> tuple[int | None, int | None, int]:
        weights = {r.version: r.weight for r in manifest.routes}
        total = sum(weights.values()) or 1.0
        versions = list(weights)
        if len(versions) == 1:
            return None, versions[0], 100
        stable, candidate = versions[0], versions[1]
        return stable, candidate, round(100 * weights[candidate] / total)

    async def _set(self, rollout: records.Rollout, action: str, reason: str = "",
                   **changes: Any) -> records.Rollout:  # fmt: skip
        return await asyncio.to_thread(
            self.registry.rollouts.update, rollout.id, action, reason, **changes
        )

    @staticmethod
    async def _notify(rollout: records.Rollout) -> None:
        if not rollout.webhook:
            return
        import httpx

        try:
            async with httpx.AsyncClient(timeout=5) as client:
                await client.post(rollout.webhook, json=rollout.model_dump(mode="json"))
        except httpx.HTTPError as exc:
            log.warning("rollout webhook %s failed: %s", rollout.webhook, exc)
