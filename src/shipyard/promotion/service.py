"""Evaluate, replay, promote, approve: the one service the CLI, the API and the server's
background jobs call.

Every step that runs a model does it in a throw-away worker process (promotion/
evaluation.py, promotion/replay.py); this module only reads data, stores results,
checks gates (promotion/gates.py) and moves aliases or starts rollouts. A promotion
is `begin_promotion` (validate, store the policy revision, record the request) then
`run_promotion` (evaluate, replay, gate, then wait for approval or act): the server
runs the second half as a background job, the local CLI in its own process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shipyard.errors import Conflict, Forbidden, InvalidInput, NotFound, ShipyardError
from shipyard.promotion.gates import check_gates, failures, passed
from shipyard.promotion.policy import DataSource, PromotionPolicy, policy_from_document
from shipyard.promotion.webhooks import notify
from shipyard.registry import records
from shipyard.registry.audit import current_actor
from shipyard.registry.records import PromotionState
from shipyard.registry.refs import ModelRef

if TYPE_CHECKING:
    from shipyard.config import IsolationLimits
    from shipyard.monitoring.store import MonitoringStore
    from shipyard.registry.service import Registry

log = logging.getLogger("shipyard.promotion")


@dataclass(frozen=True)
class EvaluationOrder:
    """What to evaluate on: the data as the evaluating process reads it."""

    path: str
    label: str
    slice_by: str | None = None
    max_rows: int | None = None
    shown_as: str | None = None
    """The name users know the data by (an uploaded file's own name), for reports."""

    @classmethod
    def of(cls, source: DataSource) -> EvaluationOrder:
        return cls(source.path, source.label, source.slice_by, source.max_rows)

    def request(self) -> dict[str, Any]:
        return {"data": self.shown_as or self.path, "label": self.label,
                "slice_by": self.slice_by, "max_rows": self.max_rows}  # fmt: skip


class PromotionService:
    def __init__(
        self, registry: Registry, store: MonitoringStore | None = None,
        limits: IsolationLimits | None = None,
    ) -> None:  # fmt: skip
        from shipyard.config import Settings
        from shipyard.monitoring.store import MonitoringStore

        self.registry = registry
        self.store = store or MonitoringStore(registry.engine)
        self.limits = limits or Settings().isolation_limits

    # evaluation ------------------------------------------------------------------------

    def champion(self, model: str, against: str | int | None) -> records.ModelVersion | None:
        """The version a candidate is compared with: an alias's target (None when the
        alias does not exist yet: a first promotion has no champion) or a version."""
        if against is None:
            return None
        text = str(against)
        ref = ModelRef(model, version=int(text)) if text.isdigit() else ModelRef(model, alias=text)
        try:
            return self.registry.models.get_version(ref)
        except NotFound:
            if ref.version is not None:
                raise
            return None

    def begin_evaluation(
        self, ref: ModelRef, order: EvaluationOrder, against: str | int | None
    ) -> records.Evaluation:
        candidate = self.registry.models.get_version(ref)
        champion = self.champion(candidate.model, against)
        if champion is not None and champion.version == candidate.version:
            champion = None  # compared with itself says nothing
        return self.registry.evaluations.start(
            candidate.model, candidate.version, "evaluation",
            {**order.request(), "against": against},
            against=champion.version if champion else None,
        )  # fmt: skip

    def run_evaluation(
        self, started: records.Evaluation, order: EvaluationOrder,
        policy: PromotionPolicy | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Score, store the result and its report; the result (or the failure, raised).
        With a policy, its gates (without replay) go into the result and the report."""
        from shipyard.promotion.evaluation import EvaluationRequest, evaluate

        models = self.registry.models

        def produce() -> tuple[dict[str, Any], str]:
            candidate = models.get_version(ModelRef(started.model, version=started.version))
            champion = None
            if started.against is not None:
                champion = models.get_version(ModelRef(started.model, version=started.against))
            request = EvaluationRequest(order.path, order.label, order.slice_by, order.max_rows)
            result = evaluate(self.registry, candidate, champion, request, self.limits)
            if order.shown_as:
                result["data"]["uri"] = order.shown_as
            if policy is not None:
                unreplayed = policy.model_copy(update={"replay": None})
                result["gates"] = check_gates(unreplayed, result, None)
                result["policy"] = policy.name
            return result, f"{candidate.model}:{candidate.version} evaluation"

        return self._stored(started, produce)

    def evaluate(
        self, ref: ModelRef, order: EvaluationOrder, against: str | int | None
    ) -> records.Evaluation:
        started = self.begin_evaluation(ref, order, against)
        self.run_evaluation(started, order)
        return self.registry.evaluations.get(started.id)

    # replay ----------------------------------------------------------------------------

    def begin_replay(
        self, deployment: str, ref: ModelRef, window: str | None, limit: int | None
    ) -> records.Evaluation:
        candidate = self.registry.models.get_version(ref)
        self.registry.deployments.get(deployment)  # exists?
        return self.registry.evaluations.start(
            candidate.model, candidate.version, "replay",
            {"deployment": deployment, "window": window, "limit": limit},
            deployment=deployment,
        )  # fmt: skip

    def run_replay(self, started: records.Evaluation) -> dict[str, Any]:
        from shipyard.durations import duration_seconds
        from shipyard.promotion.replay import replay

        def produce() -> tuple[dict[str, Any], str]:
            candidate = self.registry.models.get_version(
                ModelRef(started.model, version=started.version)
            )
            window = started.request.get("window")
            seconds = duration_seconds(window, "window") if window else None
            result = replay(self.registry, self.store, str(started.deployment), candidate,
                            seconds, started.request.get("limit"), self.limits)  # fmt: skip
            return result, f"{candidate.model}:{candidate.version} replay of {started.deployment}"

        return self._stored(started, produce)

    def _stored(
        self, started: records.Evaluation, produce: Callable[[], tuple[dict[str, Any], str]]
    ) -> dict[str, Any]:
        """Run an evaluation or replay and store its result and report, or its failure
        (raised again: a 4xx says what was wrong with the data or the model)."""
        from shipyard.promotion.report import render_html

        try:
            result, title = produce()
        except ShipyardError as exc:
            self.registry.evaluations.finish(started.id, None, None, error=exc.message)
            raise
        except Exception as exc:
            log.exception("%s %d failed", started.kind, started.id)
            self.registry.evaluations.finish(started.id, None, None, error=repr(exc))
            raise InvalidInput(f"{started.kind} {started.id} failed: {exc!r}") from exc
        self.registry.evaluations.finish(started.id, result, render_html(result, title))
        return result

    def replay(
        self, deployment: str, ref: ModelRef, window: str | None, limit: int | None
    ) -> records.Evaluation:
        started = self.begin_replay(deployment, ref, window, limit)
        self.run_replay(started)
        return self.registry.evaluations.get(started.id)

    # promotion -------------------------------------------------------------------------

    def begin_promotion(
        self, ref: ModelRef, policy: PromotionPolicy, order: EvaluationOrder | None
    ) -> records.Promotion:
        version = self.registry.models.get_version(ref)
        if policy.model is not None and policy.model != version.model:
            raise InvalidInput(f"policy {policy.name!r} is for model {policy.model!r}, "
                               f"not {version.model!r}")  # fmt: skip
        if order is None and policy.data is None:
            raise InvalidInput(f"policy {policy.name!r} names no data: give --data and --label "
                               "(or data: {path, label} in the policy)")  # fmt: skip
        holder = self.champion(version.model, policy.alias)
        if holder is not None and holder.version == version.version:
            raise Conflict(f"{version.model}@{policy.alias} is version {version.version} "
                           "already: nothing to promote")  # fmt: skip
        revision = self.registry.policies.apply(policy.name, policy.document())
        return self.registry.promotions.start(version.model, version.version, revision,
                                              policy.alias)  # fmt: skip

    def run_promotion(
        self, promotion: records.Promotion, order: EvaluationOrder | None
    ) -> records.Promotion:
        """Evaluate (and replay), gate, then wait for approval or act."""
        policy = self.policy_of(promotion)
        order = order or EvaluationOrder.of(policy.data)  # type: ignore[arg-type]
        ref = ModelRef(promotion.model, version=promotion.version)
        evaluation_id = replay_id = None
        try:
            started = self.begin_evaluation(ref, order, policy.against or policy.alias)
            evaluation_id = started.id
            evaluation = self.run_evaluation(started, order)
            replayed = None
            if policy.replay is not None:
                begun = self.begin_replay(policy.replay.deployment, ref, policy.replay.window,
                                          policy.replay.limit)  # fmt: skip
                replay_id = begun.id
                replayed = self.run_replay(begun)
        except ShipyardError as exc:
            return self._finish(promotion, policy, "promotion.fail", f"could not evaluate: "
                                f"{exc.message}", state=PromotionState.FAILED,
                                evaluation_id=evaluation_id, replay_id=replay_id)  # fmt: skip
        gates = check_gates(policy, evaluation, replayed)
        ids = {"evaluation_id": evaluation_id, "replay_id": replay_id, "gates": gates}
        if not passed(gates):
            return self._finish(promotion, policy, "promotion.fail", failures(gates),
                                state=PromotionState.FAILED, **ids)  # fmt: skip
        if policy.approval.required:
            roles = ", ".join(policy.approval.roles)
            return self._finish(promotion, policy, "promotion.await", "every gate passed; "
                                f"waiting for approval by {roles}",
                                state=PromotionState.AWAITING_APPROVAL, **ids)  # fmt: skip
        updated = self.registry.promotions.update(promotion.id, "promotion.pass",
                                                  "every gate passed", **ids)  # fmt: skip
        return self._act(updated, policy)

    def promote(
        self, ref: ModelRef, policy: PromotionPolicy, order: EvaluationOrder | None
    ) -> records.Promotion:
        return self.run_promotion(self.begin_promotion(ref, policy, order), order)

    def decide(self, promotion_id: int, approve: bool, reason: str = "") -> records.Promotion:
        """Approve (and act) or reject a promotion waiting for approval, as the current actor."""
        promotion = self.registry.promotions.get(promotion_id)
        if promotion.state is not PromotionState.AWAITING_APPROVAL:
            raise Conflict(f"promotion {promotion.id} of {promotion.model}:{promotion.version} "
                           f"is {promotion.state.value}, not awaiting approval")  # fmt: skip
        policy = self.policy_of(promotion)
        actor = current_actor()
        if actor.role not in policy.approval.roles:
            raise Forbidden(f"policy {policy.name!r} lets only "
                            f"{', '.join(policy.approval.roles)} approve or reject; "
                            f"{actor.name} is {actor.role or 'no role'}")  # fmt: skip
        if policy.approval.four_eyes:
            registrant = self.registry.models.get_version(
                ModelRef(promotion.model, version=promotion.version)
            ).created_by
            if actor.name in (promotion.requested_by, registrant):
                raise Forbidden(f"four eyes: {actor.name} registered or asked to promote "
                                f"{promotion.model}:{promotion.version}, so someone else "
                                "must decide")  # fmt: skip
        decided = {"decided_by": actor.name, "decided_at": datetime.now(UTC)}
        if not approve:
            return self._finish(promotion, policy, "promotion.reject", reason or "rejected",
                                state=PromotionState.REJECTED, **decided)  # fmt: skip
        approved = self.registry.promotions.update(promotion.id, "promotion.approve",
                                                   reason or "approved", **decided)  # fmt: skip
        return self._act(approved, policy)

    def policy_of(self, promotion: records.Promotion) -> PromotionPolicy:
        stored = self.registry.policies.get(promotion.policy, promotion.policy_revision)
        return policy_from_document(stored.document, f"policy {stored.name}#{stored.revision}")

    def _act(self, promotion: records.Promotion, policy: PromotionPolicy) -> records.Promotion:
        """What promotion does: move the alias, or start a rollout on every deployment
        that serves the alias (the alias moves when they complete)."""
        champion = self.champion(promotion.model, policy.alias)
        previous = champion.version if champion else None
        if policy.on_promote.action == "rollout":
            started = self._start_rollouts(promotion, policy, previous)
            if started:
                names = ", ".join(r["deployment"] for r in started)
                return self._finish(promotion, policy, "promotion.rollout",
                                    f"rollouts started on {names}",
                                    state=PromotionState.ROLLING_OUT, previous_version=previous,
                                    rollouts=started)  # fmt: skip
        self.registry.models.set_alias(promotion.model, policy.alias, promotion.version)
        return self._finish(promotion, policy, "promotion.promote",
                            f"{promotion.model}@{policy.alias} → version {promotion.version}",
                            **promoted_fields(policy, previous))  # fmt: skip

    def _start_rollouts(
        self, promotion: records.Promotion, policy: PromotionPolicy, previous: int | None
    ) -> list[dict[str, Any]]:
        from shipyard.routing.arms import main_index
        from shipyard.routing.rollouts import RolloutService

        if previous is None:
            return []  # nothing serves the alias yet: moving it is the whole change
        rollouts = RolloutService(self.registry)
        started = []
        for live in self.registry.deployments.list():
            manifest = live.manifest
            main = manifest.routes[main_index(manifest.routes)]
            if manifest.model != promotion.model or main.alias != policy.alias:
                continue
            option = policy.on_promote
            rollout = rollouts.start(live.deployment, promotion.version, steps=option.steps,
                                     bake_seconds=option.bake_seconds,
                                     min_requests=option.min_requests,
                                     webhook=policy.webhook)  # fmt: skip
            started.append({"deployment": live.deployment, "rollout": rollout.id})
        return started

    def _finish(
        self, promotion: records.Promotion, policy: PromotionPolicy, action: str, reason: str,
        **changes: Any,
    ) -> records.Promotion:  # fmt: skip
        updated = self.registry.promotions.update(promotion.id, action, reason, **changes)
        notify(policy.webhook, action, updated)
        return updated


def promoted_fields(policy: PromotionPolicy, previous: int | None) -> dict[str, Any]:
    """A promotion's row once its version holds the alias: baking while guardrails watch."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {"promoted_at": now, "previous_version": previous}
    guard = policy.guardrails
    if guard is None:
        return {**fields, "state": PromotionState.PROMOTED}
    seconds = guard.baking_seconds
    until = None if seconds is None else now + timedelta(seconds=seconds)
    return {**fields, "state": PromotionState.BAKING, "baking_until": until}
