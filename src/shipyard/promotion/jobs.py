"""Evaluations, replays and promotions as the server's background jobs.

A request that starts one is answered at once (202, with the stored record to poll);
the work runs on a small thread pool, as the caller who asked (the audit trail names
them), and every model it scores runs in a throw-away worker process, never in the
server. An uploaded data file lives in a scratch folder until its job ends.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shipyard.promotion.policy import policy_from_document
from shipyard.promotion.service import EvaluationOrder, PromotionService
from shipyard.registry import records
from shipyard.registry.refs import ModelRef

log = logging.getLogger("shipyard.promotion")


class PromotionJobs:
    def __init__(self, service: PromotionService, workers: int = 2) -> None:
        self.service = service
        # Two at once: each job's work is a child process; more would crowd the workers
        # that serve traffic on the same cores.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shipyard-job")

    def submit(self, work: Callable[[], Any], scratch: Path | None = None) -> None:
        context = contextvars.copy_context()  # the caller stays the actor in the thread

        def run() -> None:
            try:
                context.run(work)
            except Exception:
                log.exception("background promotion job failed")
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)

        self._pool.submit(run)

    def evaluate(
        self, ref: ModelRef, order: EvaluationOrder, against: str | int | None,
        scratch: Path | None = None,
    ) -> records.Evaluation:  # fmt: skip
        started = self.service.begin_evaluation(ref, order, against)
        self.submit(lambda: self.service.run_evaluation(started, order), scratch)
        return started

    def replay(
        self, deployment: str, ref: ModelRef, window: str | None, limit: int | None
    ) -> records.Evaluation:
        started = self.service.begin_replay(deployment, ref, window, limit)
        self.submit(lambda: self.service.run_replay(started))
        return started

    def promote(
        self, ref: ModelRef, policy_document: dict[str, Any], order: EvaluationOrder | None,
        scratch: Path | None = None,
    ) -> records.Promotion:  # fmt: skip
        policy = policy_from_document(policy_document)
        promotion = self.service.begin_promotion(ref, policy, order)
        self.submit(lambda: self.service.run_promotion(promotion, order), scratch)
        return promotion

    def set_alias(self, model: str, alias: str, version: int) -> records.Alias:
        """Point an alias at a version, then start what stored policies' `on_register`
        asks of that alias (the API and the console both move aliases through here)."""
        moved = self.service.registry.models.set_alias(model, alias, version)
        self.on_alias(moved.model, moved.alias, moved.version)
        return moved

    def on_alias(self, model: str, alias: str, version: int) -> list[records.Evaluation]:
        """A version got an alias a stored policy's `on_register` names: evaluate it with
        that policy's data against its champion, gates included in the result."""
        started = []
        for stored in self.service.registry.policies.latest_all():
            policy = policy_from_document(stored.document, f"policy {stored.name}")
            trigger = policy.on_register
            if trigger is None or trigger.alias != alias or policy.data is None:
                continue
            if policy.model is not None and policy.model != model:
                continue
            order = EvaluationOrder.of(policy.data)
            ref = ModelRef(model, version=version)
            begun = self.service.begin_evaluation(ref, order, policy.against or policy.alias)
            self.submit(functools.partial(self.service.run_evaluation, begun, order, policy))
            started.append(begun)
        return started

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
