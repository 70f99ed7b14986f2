"""Guardrails after promotion: watch the promoted version, move the alias back if it degrades.

A promotion that acted is BAKING (or ROLLING_OUT first, when its policy starts rollouts):
until `baking_until` (forever with `baking: always`) the guard watches the promoted
version on every deployment whose main route names the promoted alias, and judges it
against the policy's guardrails once it has answered `min_requests` requests since
promotion:

- error rate and p95 latency, from the arm reports every replica writes about once a
  second (registry/fleet.py): counts are exact, the whole fleet's, and stamped, so they
  can be cut at `promoted_at`. The router's own windows are not used: they hold only this
  replica's traffic, count from whenever they were last reset (a rollout step resets them)
  rather than from promotion, and a version's earlier life as a rollout candidate would
  count in them. Reports older than an hour are forgotten, so a longer baking period is
  judged on its last hour: recent behaviour is what a guardrail is for.
- live accuracy from ground-truth feedback joined to the prediction log (needs
  `monitoring.sample` > 0 and labels), and prediction drift: the two-sample
  Kolmogorov-Smirnov distance between the promoted version's logged predictions since
  promotion and the previous version's in the hour before it. These read the prediction
  log, so they run at most every `log_seconds` per promotion, not every tick.

A crossing moves the alias back to the previous version (deletes it when there was none),
and deployments routing by the alias follow it (routing/deployments.py); the promotion
becomes ROLLED_BACK with the numbers as its reason, in the audit trail and the policy's
webhook. A promotion rolling out becomes BAKING when all its rollouts are promoted (they
move the alias: routing/rollouts.py) and ROLLED_BACK when one rolls back or is aborted.
Among replicas sharing a database, one holds the guard's lease at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from shipyard.errors import NotFound
from shipyard.monitoring.quality import classification_quality
from shipyard.monitoring.store import MonitoringStore, prediction_output
from shipyard.promotion.policy import Guardrails, PromotionPolicy
from shipyard.promotion.service import PromotionService, promoted_fields
from shipyard.promotion.webhooks import notify
from shipyard.registry import records
from shipyard.registry.audit import Actor, acting_as
from shipyard.registry.manifest import DeploymentManifest
from shipyard.registry.records import PromotionState, RolloutState
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.routing.arms import main_index

log = logging.getLogger("shipyard.promotion")
LEASE = "promotion-guardrails"
"""The guard's own lease: it may run on another replica than the rollout controller."""
DRIFT_BASELINE = timedelta(hours=1)
"""How far before promotion the previous version's logged predictions are read."""
MIN_DRIFT_VALUES = 20
"""Fewer predictions on either side: no drift verdict (as the rollout drift gate)."""
MIN_LATENCIES = 5
ENDED = (RolloutState.ROLLED_BACK, RolloutState.ABORTED)
ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


@dataclass
class Traffic:
    """What the promoted version did since promotion, summed over its deployments."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    """A sample of the answered requests' latencies (seconds)."""


class PromotionGuard:
    """Follows promotions rolling out and judges baking ones; acts only under its lease."""

    def __init__(
        self, registry: Registry, store: MonitoringStore | None = None,
        tick_seconds: float = 0.5, lease_seconds: float = 10.0, log_seconds: float = 10.0,
    ) -> None:  # fmt: skip
        self.registry = registry
        self.store = store or MonitoringStore(registry.engine)
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.log_seconds = log_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._idle_at: int | None = None
        """The registry's change sequence when nothing was watched: until it moves, no
        promotion can have started baking, and a tick reads one row."""
        self._log_read_at: dict[int, float] = {}
        """Per promotion, when the prediction log was last read for it (monotonic)."""
        self._baselines: dict[tuple[int, str], np.ndarray] = {}
        """The previous version's predictions before promotion, per promotion and
        deployment: in the past, so read once."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)  # a guard's cadence, not a sync point
            try:
                await self.tick()
            except Exception:
                log.exception("promotion guardrails tick failed")

    async def tick(self) -> None:
        watched = await asyncio.to_thread(self._watched)
        if not watched:
            return  # nothing to watch: no lease write
        holds = await asyncio.to_thread(
            self.registry.leases.hold, LEASE, self.holder, self.lease_seconds
        )
        if not holds:
            return
        # What it changes (aliases, promotions, rollouts) names the guard in the audit trail.
        with acting_as(Actor("promotion-guardrails", "system", self.holder)):
            await asyncio.to_thread(self._settle)
            for promotion in watched:
                await asyncio.to_thread(self.check, promotion)

    def _watched(self) -> list[records.Promotion]:
        """Promotions baking or rolling out; none, without reading them, while the
        registry is unchanged since a read found none (acting on a promotion is audited)."""
        sequence = self.registry.changes.current(self.tick_seconds / 2)
        if sequence == self._idle_at:
            return []
        watched = self.registry.promotions.watched()
        self._idle_at = None if watched else sequence
        return watched

    def _settle(self) -> None:
        for settled in self.registry.promotions.settle(datetime.now(UTC)):
            self._forget(settled.id)
            notify(self._policy(settled).webhook, "promotion.settle", settled)

    def check(self, promotion: records.Promotion) -> None:
        """One look at one promotion (blocking); reads it again first, since settling or
        another replica may have moved it on."""
        promotion = self.registry.promotions.get(promotion.id)
        if promotion.state is PromotionState.ROLLING_OUT:
            self._follow(promotion)
        elif promotion.state is PromotionState.BAKING:
            self._judge(promotion)
        else:
            self._forget(promotion.id)

    # rolling out ------------------------------------------------------------------------

    def _follow(self, promotion: records.Promotion) -> None:
        rollouts = [self.registry.rollouts.get(int(r["rollout"])) for r in promotion.rollouts]
        policy = self._policy(promotion)
        ended = [r for r in rollouts if r.state in ENDED]
        if ended:
            self._abort_the_rest(rollouts)
            first = ended[0]
            reason = (f"rollout {first.id} on {first.deployment} {first.state.value}: "
                      f"{first.reason}")  # fmt: skip
            log.warning("promotion %d of %s:%d rolled back: %s", promotion.id, promotion.model,
                        promotion.version, reason)  # fmt: skip
            self._finish(promotion, policy, "promotion.rollback", reason,
                         state=PromotionState.ROLLED_BACK)  # fmt: skip
            return
        if not all(r.state is RolloutState.PROMOTED for r in rollouts):
            return
        # Promoted rollouts moved the alias (routing/rollouts.py); moving it here too keeps
        # the promise when a deployment stopped routing by it during its rollout.
        if self._alias_target(promotion) != promotion.version:
            self.registry.models.set_alias(promotion.model, promotion.alias, promotion.version)
        places = ", ".join(r.deployment for r in rollouts)
        reason = (f"rollouts promoted on {places}; {promotion.model}@{promotion.alias} → "
                  f"version {promotion.version}")  # fmt: skip
        self._finish(promotion, policy, "promotion.promote", reason,
                     **promoted_fields(policy, promotion.previous_version))  # fmt: skip

    def _abort_the_rest(self, rollouts: list[records.Rollout]) -> None:
        """One deployment's rollout failing fails the promotion: the others stop too."""
        from shipyard.routing.rollouts import RolloutService

        service = RolloutService(self.registry)
        for rollout in rollouts:
            if rollout.state in ACTIVE:
                service.act(rollout.deployment, "abort")

    # baking -----------------------------------------------------------------------------

    def _judge(self, promotion: records.Promotion) -> None:
        policy = self._policy(promotion)
        guard = policy.guardrails
        if guard is None or promotion.promoted_at is None:
            return
        deployments = self._deployments(promotion)
        traffic = self._traffic(deployments, promotion)
        if traffic.requests < guard.min_requests:
            return  # too little to judge on
        crossing = crossed(guard, traffic)
        if crossing is None and self._log_due(promotion.id):
            crossing = self._accuracy(guard, promotion, deployments)
            if crossing is None:
                crossing = self._drift(guard, promotion, deployments)
        if crossing is not None:
            self._roll_back(promotion, policy, crossing)

    def _deployments(self, promotion: records.Promotion) -> list[DeploymentManifest]:
        """Deployments whose main route names the promoted model's alias: where it serves."""
        found = []
        for live in self.registry.deployments.list():
            manifest = live.manifest
            main = manifest.routes[main_index(manifest.routes)]
            if manifest.model == promotion.model and main.alias == promotion.alias:
                found.append(manifest)
        return found

    def _traffic(
        self, deployments: list[DeploymentManifest], promotion: records.Promotion
    ) -> Traffic:
        assert promotion.promoted_at is not None
        traffic = Traffic()
        for manifest in deployments:
            # Every replica's reports, this one's included (`excluding` None): time-cut at
            # promotion, unlike the router's live windows (see the module's docstring).
            for report in self.registry.fleet.reports(
                manifest.name, str(promotion.version), promotion.promoted_at
            ):
                traffic.requests += report.requests
                traffic.errors += report.errors
                traffic.latencies.extend(report.latencies)
        return traffic

    def _log_due(self, promotion_id: int) -> bool:
        now = time.monotonic()
        last = self._log_read_at.get(promotion_id)
        if last is not None and now - last < self.log_seconds:
            return False
        self._log_read_at[promotion_id] = now
        return True

    def _accuracy(
        self, guard: Guardrails, promotion: records.Promotion,
        deployments: list[DeploymentManifest],
    ) -> str | None:  # fmt: skip
        if guard.min_accuracy is None:
            return None
        since = _unix(promotion.promoted_at)
        labels, predictions = [], []
        for manifest in deployments:
            for item in self.store.labelled(manifest.name, since, None,
                                            manifest.watch.prediction_output):  # fmt: skip
                if item.version == str(promotion.version):
                    labels.append(item.label)
                    predictions.append(item.prediction)
        if len(labels) < guard.min_requests:
            return None  # as for requests: too few labels, no verdict
        accuracy = classification_quality(labels, predictions)["accuracy"]
        if accuracy is None or accuracy >= guard.min_accuracy:
            return None
        return (f"guardrail min_accuracy: {accuracy:.2f} over {len(labels)} labelled rows "
                f"since promotion (needed {guard.min_accuracy:g})")  # fmt: skip

    def _drift(
        self, guard: Guardrails, promotion: records.Promotion,
        deployments: list[DeploymentManifest],
    ) -> str | None:  # fmt: skip
        previous = promotion.previous_version
        if guard.max_drift is None or previous is None:
            return None
        from scipy.stats import ks_2samp

        promoted_at = _unix(promotion.promoted_at)
        now_values, before_values = [], []
        for manifest in deployments:
            now_values.append(self._predictions(manifest, promotion.version, promoted_at, None))
            before_values.append(self._baseline(promotion, manifest, previous, promoted_at))
        now, before = np.concatenate(now_values), np.concatenate(before_values)
        if len(now) < MIN_DRIFT_VALUES or len(before) < MIN_DRIFT_VALUES:
            return None
        distance = float(ks_2samp(now, before).statistic)
        if distance <= guard.max_drift:
            return None
        return (f"guardrail max_drift: KS {distance:.2f} between version {promotion.version}'s "
                f"{len(now)} predictions since promotion and version {previous}'s {len(before)} "
                f"before it (allowed {guard.max_drift:g})")  # fmt: skip

    def _baseline(
        self, promotion: records.Promotion, manifest: DeploymentManifest, previous: int,
        promoted_at: float,
    ) -> np.ndarray:  # fmt: skip
        key = (promotion.id, manifest.name)
        if key not in self._baselines:
            since = promoted_at - DRIFT_BASELINE.total_seconds()
            self._baselines[key] = self._predictions(manifest, previous, since, promoted_at)
        return self._baselines[key]

    def _predictions(
        self, manifest: DeploymentManifest, version: int, since: float, until: float | None
    ) -> np.ndarray:
        """A version's logged predictions on a deployment (numbers only; none: empty)."""
        outputs = self.store.window(manifest.name, version, since, until).outputs
        name = prediction_output(outputs, manifest.watch.prediction_output)
        if name is None or outputs[name].dtype.kind not in "biuf":
            return np.empty(0)
        return outputs[name].reshape(-1).astype(float)

    def _roll_back(
        self, promotion: records.Promotion, policy: PromotionPolicy, reason: str
    ) -> None:
        """Point the alias where it was; deployments routing by it follow."""
        models, alias = self.registry.models, promotion.alias
        now = self._alias_target(promotion)
        if now != promotion.version:
            reason += (f"; {promotion.model}@{alias} had moved on to version {now}: "
                       "left as it is")  # fmt: skip
        elif promotion.previous_version is None:
            models.delete_alias(promotion.model, alias)
        else:
            models.set_alias(promotion.model, alias, promotion.previous_version)
        log.warning("promotion %d of %s:%d rolled back: %s", promotion.id, promotion.model,
                    promotion.version, reason)  # fmt: skip
        self._finish(promotion, policy, "promotion.rollback", reason,
                     state=PromotionState.ROLLED_BACK)  # fmt: skip

    # shared -----------------------------------------------------------------------------

    def _alias_target(self, promotion: records.Promotion) -> int | None:
        try:
            ref = ModelRef(promotion.model, alias=promotion.alias)
            return self.registry.models.get_version(ref).version
        except NotFound:
            return None

    def _policy(self, promotion: records.Promotion) -> PromotionPolicy:
        return PromotionService(self.registry, self.store).policy_of(promotion)

    def _finish(
        self, promotion: records.Promotion, policy: PromotionPolicy, action: str, reason: str,
        **changes: object,
    ) -> None:  # fmt: skip
        updated = self.registry.promotions.update(promotion.id, action, reason, **changes)
        if updated.state not in (PromotionState.BAKING, PromotionState.ROLLING_OUT):
            self._forget(promotion.id)
        notify(policy.webhook, action, updated)

    def _forget(self, promotion_id: int) -> None:
        self._log_read_at.pop(promotion_id, None)
        for key in [k for k in self._baselines if k[0] == promotion_id]:
            del self._baselines[key]


def crossed(guard: Guardrails, traffic: Traffic) -> str | None:
    """The first request guardrail the traffic crosses, said with its numbers; or None."""
    rate = traffic.errors / traffic.requests if traffic.requests else 0.0
    limit = guard.max_error_rate
    if limit is not None and rate > limit:
        return (f"guardrail max_error_rate: {rate:.2f} over {traffic.requests} requests "
                f"since promotion (allowed {limit:g})")  # fmt: skip
    budget = guard.max_p95_ms
    if budget is not None and len(traffic.latencies) >= MIN_LATENCIES:
        p95 = float(np.percentile(np.asarray(traffic.latencies) * 1000, 95))
        if p95 > budget:
            return (f"guardrail max_p95_ms: {p95:.1f} ms over {len(traffic.latencies)} "
                    f"answered requests since promotion (allowed {budget:g} ms)")  # fmt: skip
    return None


def _unix(moment: datetime | None) -> float:
    assert moment is not None
    if moment.tzinfo is None:  # SQLite gives naive datetimes back; they are UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
