"""Evaluations, promotion policies and promotions as stored.

Every change that moves a model's fate (a policy revision, a promotion's state) is a
row change plus its audit event in one transaction. An evaluation's result is not a
change to anything: it is written without an event, like a drift report.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.errors import NotFound
from shipyard.registry import records
from shipyard.registry.audit import current_actor, record_event
from shipyard.registry.db import write_session
from shipyard.registry.records import PromotionState
from shipyard.registry.tables import EvaluationRow, PolicyRow, PromotionRow, utcnow

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"

WATCHED = (PromotionState.BAKING, PromotionState.ROLLING_OUT)
"""States the guardrails and the rollout follower look at."""


def _evaluation(row: EvaluationRow) -> records.Evaluation:
    return records.Evaluation(
        id=row.id, model=row.model, version=row.version, kind=row.kind, against=row.against,
        deployment=row.deployment, state=row.state, request=row.request, result=row.result,
        error=row.error, created_by=row.created_by, created_at=row.created_at,
        finished_at=row.finished_at,
    )  # fmt: skip


def _promotion(row: PromotionRow) -> records.Promotion:
    return records.Promotion(
        id=row.id, model=row.model, version=row.version, policy=row.policy,
        policy_revision=row.policy_revision, alias=row.alias,
        previous_version=row.previous_version, state=PromotionState(row.state),
        gates=list(row.gates), evaluation_id=row.evaluation_id, replay_id=row.replay_id,
        rollouts=list(row.rollouts), reason=row.reason, requested_by=row.requested_by,
        decided_by=row.decided_by, decided_at=row.decided_at, promoted_at=row.promoted_at,
        baking_until=row.baking_until, created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


def _policy(row: PolicyRow) -> records.PolicyRevision:
    return records.PolicyRevision(
        name=row.name, revision=row.revision, document=row.document, digest=row.digest,
        created_by=row.created_by, created_at=row.created_at,
    )  # fmt: skip


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(runner: str, since: datetime) -> bool:
    """Whether `runner` (host:pid) may still be running what it started at `since`; a
    process on another host is given the benefit of the doubt."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    import psutil

    try:
        process = psutil.Process(int(pid))
        # A process younger than the run reuses a dead runner's pid.
        return process.create_time() <= since.timestamp() and process.is_running()
    except psutil.Error:
        return False


def document_digest(document: dict[str, Any]) -> str:
    """sha256 of the document's canonical JSON: the same policy, the same digest."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class EvaluationRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def start(
        self, model: str, version: int, kind: str, request: dict[str, Any],
        against: int | None = None, deployment: str | None = None,
    ) -> records.Evaluation:  # fmt: skip
        with self._sessions() as session, session.begin():
            row = EvaluationRow(
                model=model, version=version, kind=kind, against=against, deployment=deployment,
                state=RUNNING, request=request, created_by=current_actor().name, error="",
                runner=this_process(),
            )  # fmt: skip
            session.add(row)
            session.flush()
            return _evaluation(row)

    def finish(
        self, evaluation_id: int, result: dict[str, Any] | None, report: str | None,
        error: str = "",
    ) -> records.Evaluation:  # fmt: skip
        with self._sessions() as session, session.begin():
            row = self._row(session, evaluation_id)
            row.result, row.report, row.error = result, report, error
            row.state = FAILED if error else SUCCEEDED
            row.finished_at = utcnow()
            return _evaluation(row)

    def interrupted(self, stale_after: timedelta) -> int:
        """Mark failed the evaluations whose process died (same host, pid gone or reused)
        or that ran longer than `stale_after` (another host's, that never finished); how
        many. A server calls it when it starts."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            rows = session.scalars(sa.select(EvaluationRow).where(EvaluationRow.state == RUNNING))
            dead = [
                row
                for row in rows
                if not _alive(row.runner, row.created_at) or now - row.created_at > stale_after
            ]
            for row in dead:
                row.state, row.finished_at = FAILED, now
                row.error = f"interrupted: the process running it ({row.runner}) stopped"
            return len(dead)

    def get(self, evaluation_id: int) -> records.Evaluation:
        with self._sessions() as session:
            return _evaluation(self._row(session, evaluation_id))

    def report(self, evaluation_id: int) -> str:
        with self._sessions() as session:
            row = self._row(session, evaluation_id)
            if row.report is None:
                raise NotFound(f"evaluation {evaluation_id} has no report ({row.state})")
            return row.report

    def recent(
        self, model: str | None = None, version: int | None = None, kind: str | None = None,
        limit: int = 50,
    ) -> list[records.Evaluation]:  # fmt: skip
        query = sa.select(EvaluationRow).order_by(EvaluationRow.id.desc()).limit(limit)
        if model is not None:
            query = query.where(EvaluationRow.model == model)
        if version is not None:
            query = query.where(EvaluationRow.version == version)
        if kind is not None:
            query = query.where(EvaluationRow.kind == kind)
        with self._sessions() as session:
            return [_evaluation(row) for row in session.scalars(query)]

    @staticmethod
    def _row(session: Session, evaluation_id: int) -> EvaluationRow:
        row = session.get(EvaluationRow, evaluation_id)
        if row is None:
            raise NotFound(f"no evaluation {evaluation_id}")
        return row


class PolicyRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def apply(self, name: str, document: dict[str, Any]) -> records.PolicyRevision:
        """Store the document as the policy's newest revision, unless it is that already."""
        digest = document_digest(document)
        with write_session(self._sessions) as session:
            latest = self._latest(session, name)
            if latest is not None and latest.digest == digest:
                return _policy(latest)
            row = PolicyRow(
                name=name, revision=(latest.revision + 1) if latest else 1, document=document,
                digest=digest, created_by=current_actor().name,
            )  # fmt: skip
            session.add(row)
            session.flush()
            record_event(session, "policy.apply", f"{name}#{row.revision}",
                         after={"digest": digest})  # fmt: skip
            return _policy(row)

    def get(self, name: str, revision: int | None = None) -> records.PolicyRevision:
        with self._sessions() as session:
            if revision is None:
                row = self._latest(session, name)
            else:
                row = session.scalar(
                    sa.select(PolicyRow).where(
                        (PolicyRow.name == name) & (PolicyRow.revision == revision)
                    )
                )
            if row is None:
                raise NotFound(f"no promotion policy {name!r}" +
                               (f" revision {revision}" if revision else ""))  # fmt: skip
            return _policy(row)

    def latest_all(self) -> list[records.PolicyRevision]:
        """The newest revision of every policy."""
        newest = (
            sa.select(PolicyRow.name, sa.func.max(PolicyRow.revision).label("revision"))
            .group_by(PolicyRow.name)
            .subquery()
        )
        query = sa.select(PolicyRow).join(
            newest, (PolicyRow.name == newest.c.name) & (PolicyRow.revision == newest.c.revision)
        )
        with self._sessions() as session:
            return [_policy(row) for row in session.scalars(query.order_by(PolicyRow.name))]

    @staticmethod
    def _latest(session: Session, name: str) -> PolicyRow | None:
        return session.scalar(
            sa.select(PolicyRow)
            .where(PolicyRow.name == name)
            .order_by(PolicyRow.revision.desc())
            .limit(1)
        )


class PromotionRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def start(
        self, model: str, version: int, policy: records.PolicyRevision, alias: str
    ) -> records.Promotion:
        with write_session(self._sessions) as session:
            row = PromotionRow(
                model=model, version=version, policy=policy.name,
                policy_revision=policy.revision, alias=alias,
                state=PromotionState.EVALUATING, gates=[], rollouts=[], reason="",
                requested_by=current_actor().name,
            )  # fmt: skip
            session.add(row)
            session.flush()
            record_event(session, "promotion.request", f"{model}:{version}#{row.id}",
                         after={"policy": f"{policy.name}#{policy.revision}",
                                "alias": alias})  # fmt: skip
            return _promotion(row)

    def update(
        self, promotion_id: int, action: str, reason: str = "", **changes: Any
    ) -> records.Promotion:
        """Change a promotion's row and record why, in one transaction."""
        with write_session(self._sessions) as session:
            row = self._row(session, promotion_id)
            before = {"state": row.state}
            for key, value in changes.items():
                setattr(row, key, value)
            if reason:
                row.reason = reason
            row.updated_at = utcnow()
            after = {"state": row.state, **({"reason": reason} if reason else {})}
            record_event(session, action, f"{row.model}:{row.version}#{row.id}",
                         before=before, after=after)  # fmt: skip
            return _promotion(row)

    def get(self, promotion_id: int) -> records.Promotion:
        with self._sessions() as session:
            return _promotion(self._row(session, promotion_id))

    def recent(
        self, model: str | None = None, state: PromotionState | None = None, limit: int = 50
    ) -> list[records.Promotion]:
        query = sa.select(PromotionRow).order_by(PromotionRow.id.desc()).limit(limit)
        if model is not None:
            query = query.where(PromotionRow.model == model)
        if state is not None:
            query = query.where(PromotionRow.state == state)
        with self._sessions() as session:
            return [_promotion(row) for row in session.scalars(query)]

    def watched(self) -> list[records.Promotion]:
        """Promotions baking or rolling out: what the guardrails look at."""
        with self._sessions() as session:
            rows = session.scalars(sa.select(PromotionRow).where(PromotionRow.state.in_(WATCHED)))
            return [_promotion(row) for row in rows]

    def settle(self, now: datetime) -> list[records.Promotion]:
        """Baking promotions whose baking period ended: promoted for good."""
        settled = []
        for promotion in self.watched():
            until = promotion.baking_until
            if promotion.state is PromotionState.BAKING and until is not None and until <= now:
                settled.append(self.update(promotion.id, "promotion.settle",
                                           "the baking period passed without a guardrail "
                                           "crossing", state=PromotionState.PROMOTED))  # fmt: skip
        return settled

    @staticmethod
    def _row(session: Session, promotion_id: int) -> PromotionRow:
        row = session.get(PromotionRow, promotion_id)
        if row is None:
            raise NotFound(f"no promotion {promotion_id}")
        return row
