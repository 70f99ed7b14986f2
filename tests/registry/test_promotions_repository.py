"""Stored evaluations, policy revisions and promotions, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from shipyard.registry.records import PromotionState
from shipyard.registry.service import Registry
from shipyard.registry.tables import EvaluationRow


def _dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_starting_server_fails_only_evaluations_whose_process_is_gone(registry: Registry) -> None:
    ours = registry.evaluations.start("churn", 1, "evaluation", {"data": "a.csv"})
    dead = registry.evaluations.start("churn", 2, "evaluation", {"data": "b.csv"})
    elsewhere = registry.evaluations.start("churn", 3, "evaluation", {"data": "c.csv"})
    with registry.sessions() as session, session.begin():
        where = EvaluationRow.id == dead.id
        runner = f"{socket.gethostname()}:{_dead_pid()}"
        session.execute(sa.update(EvaluationRow).where(where).values(runner=runner))
        where = EvaluationRow.id == elsewhere.id
        session.execute(sa.update(EvaluationRow).where(where).values(runner="far-away-host:1"))

    assert registry.evaluations.interrupted(stale_after=timedelta(hours=1)) == 1

    assert registry.evaluations.get(dead.id).state == "failed"
    assert "interrupted" in registry.evaluations.get(dead.id).error
    assert registry.evaluations.get(ours.id).state == "running"  # this very process runs it
    assert registry.evaluations.get(elsewhere.id).state == "running"  # maybe still running
    assert registry.evaluations.interrupted(stale_after=timedelta(0)) == 2  # too old now


def test_a_policy_gets_a_new_revision_only_when_it_changes(registry: Registry) -> None:
    first = registry.policies.apply("gates", {"name": "gates", "alias": "production"})
    same = registry.policies.apply("gates", {"alias": "production", "name": "gates"})
    changed = registry.policies.apply("gates", {"name": "gates", "alias": "champion"})

    assert (first.revision, same.revision, changed.revision) == (1, 1, 2)
    assert registry.policies.get("gates").document["alias"] == "champion"
    assert registry.policies.get("gates", 1).document["alias"] == "production"
    assert [p.revision for p in registry.policies.latest_all()] == [2]
    applied = [e for e in registry.audit.events(limit=50) if e.action == "policy.apply"]
    assert len(applied) == 2


def test_baking_promotions_settle_once_their_period_passed(registry: Registry) -> None:
    policy = registry.policies.apply("gates", {"name": "gates"})
    soon = registry.promotions.start("churn", 2, policy, "production")
    later = registry.promotions.start("churn", 3, policy, "production")
    always = registry.promotions.start("churn", 4, policy, "production")
    now = datetime.now(UTC)
    for promotion, until in (
        (soon, now - timedelta(seconds=1)),
        (later, now + timedelta(hours=1)),
        (always, None),
    ):
        registry.promotions.update(
            promotion.id, "promotion.promote", state=PromotionState.BAKING, baking_until=until
        )

    settled = registry.promotions.settle(now)

    assert [p.id for p in settled] == [soon.id]
    assert registry.promotions.get(soon.id).state is PromotionState.PROMOTED
    assert registry.promotions.get(later.id).state is PromotionState.BAKING
    assert registry.promotions.get(always.id).state is PromotionState.BAKING
    assert {p.id for p in registry.promotions.watched()} == {later.id, always.id}
