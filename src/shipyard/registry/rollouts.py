"""Rollouts as stored: every state change is a row update plus an audit event."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.errors import Conflict, InvalidInput, NotFound
from shipyard.registry import records
from shipyard.registry.audit import current_actor, record_event
from shipyard.registry.db import write_session
from shipyard.registry.records import RolloutGates, RolloutState
from shipyard.registry.tables import DeploymentRow, RolloutRow, utcnow

ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED)


def _record(row: RolloutRow) -> records.Rollout:
    return records.Rollout(
        id=row.id, deployment=row.deployment, stable_version=row.stable_version,
        candidate_version=row.candidate_version, steps=list(row.steps), step_index=row.step_index,
        step_started_at=row.step_started_at, bake_seconds=row.bake_seconds,
        min_requests=row.min_requests, gates=RolloutGates.model_validate(row.gates),
        webhook=row.webhook, alias=row.alias, state=RolloutState(row.state), reason=row.reason,
        created_by=row.created_by, created_at=row.created_at, updated_at=row.updated_at,
    )  # fmt: skip


class RolloutRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def start(
        self,
        deployment: str,
        stable: int,
        candidate: int,
        steps: list[int],
        bake_seconds: float,
        min_requests: int,
        gates: dict[str, float] | None = None,
        webhook: str | None = None,
        alias: str | None = None,
    ) -> records.Rollout:
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise InvalidInput("steps must rise strictly, each between 1 and 100")
        if steps[-1] != 100:
            steps = [*steps, 100]
        if stable == candidate:
            raise InvalidInput(f"version {candidate} is already what {deployment} serves")
        known = RolloutGates.model_fields
        unknown = set(gates or {}) - set(known)
        if unknown:
            raise InvalidInput(f"unknown gate {sorted(unknown)[0]!r}; gates: {', '.join(known)}")
        with write_session(self._sessions) as session:
            busy = session.scalar(
                sa.select(RolloutRow).where(
                    (RolloutRow.deployment == deployment) & RolloutRow.state.in_(ACTIVE)
                )
            )
            if busy is not None:
                raise Conflict(f"{deployment} already has rollout {busy.id} ({busy.state})")
            row = RolloutRow(
                deployment=deployment, stable_version=stable, candidate_version=candidate,
                steps=steps, bake_seconds=bake_seconds, min_requests=min_requests,
                gates=RolloutGates.model_validate(gates or {}).model_dump(), webhook=webhook,
                alias=alias, created_by=current_actor().name,
            )  # fmt: skip
            session.add(row)
            session.flush()
            after = {"stable": stable, "candidate": candidate, "steps": steps}
            record_event(session, "rollout.start", f"{deployment}#{row.id}", after=after)
            return _record(row)

    def get(self, rollout_id: int) -> records.Rollout:
        with self._sessions() as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            return _record(row)

    def active(self, deployment: str) -> records.Rollout | None:
        with self._sessions() as session:
            row = session.scalar(
                sa.select(RolloutRow).where(
                    (RolloutRow.deployment == deployment) & RolloutRow.state.in_(ACTIVE)
                )
            )
            return _record(row) if row else None

    def latest(self, deployment: str) -> records.Rollout:
        with self._sessions() as session:
            row = session.scalar(
                sa.select(RolloutRow)
                .where(RolloutRow.deployment == deployment)
                .order_by(RolloutRow.id.desc())
                .limit(1)
            )
            if row is None:
                known = session.scalar(
                    sa.select(DeploymentRow.id).where(DeploymentRow.name == deployment)
                )
                if known is None:  # a typo, most likely: say that, not "no rollout"
                    raise NotFound(f"deployment {deployment!r} does not exist")
                raise NotFound(f"{deployment} has had no rollout")
            return _record(row)

    def running(self) -> list[records.Rollout]:
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(RolloutRow).where(RolloutRow.state == RolloutState.RUNNING)
            )
            return [_record(r) for r in rows]

    def update(
        self, rollout_id: int, action: str, reason: str = "", **changes: Any
    ) -> records.Rollout:
        """Change a rollout's row and record why, in one transaction."""
        with write_session(self._sessions) as session:
            row = session.get(RolloutRow, rollout_id)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            before = {"state": row.state, "step": row.step_index}
            for key, value in changes.items():
                setattr(row, key, value)
            if reason:
                row.reason = reason
            row.updated_at = utcnow()
            after = {
                "state": row.state,
                "step": row.step_index,
                **({"reason": reason} if reason else {}),
            }
            record_event(session, action, f"{row.deployment}#{row.id}", before=before, after=after)
            return _record(row)
