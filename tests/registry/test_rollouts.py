"""Rollouts as stored: a typed state and typed gates over the same rows as before."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shipyard.errors import Conflict, InvalidInput
from shipyard.registry.records import RolloutGates, RolloutState
from shipyard.registry.service import Registry
from shipyard.registry.tables import RolloutRow


def _stored(registry: Registry) -> tuple[str, dict[str, float]]:
    with registry.sessions() as session:
        row = session.scalars(sa.select(RolloutRow)).one()
        return row.state, row.gates


def test_state_and_gates_are_typed_and_stored_as_plain_values(registry: Registry) -> None:
    rollouts = registry.rollouts
    started = rollouts.start("api", 1, 2, [50], 0.0, 1, gates={"min_agreement": 0.9})
    assert started.state is RolloutState.RUNNING
    assert started.gates == RolloutGates(min_agreement=0.9)
    assert started.steps == [50, 100]
    assert _stored(registry) == ("running", {
        "max_error_rate_increase": 0.02, "max_p95_ratio": 2.0, "max_drift": 0.5,
        "min_agreement": 0.9, "max_input_drift_share": 1.0,
    })  # fmt: skip
    shown = started.model_dump(mode="json")
    assert shown["state"] == "running" and shown["gates"]["min_agreement"] == 0.9

    with pytest.raises(Conflict, match=r"api already has rollout \d+ \(running\)"):
        rollouts.start("api", 1, 3, [50], 0.0, 1)
    paused = rollouts.update(started.id, "rollout.pause", state=RolloutState.PAUSED)
    assert paused.state is RolloutState.PAUSED and _stored(registry)[0] == "paused"
    assert rollouts.running() == []
    assert rollouts.active("api") == paused
    rolled_back = rollouts.update(started.id, "rollout.rollback", "slow",
                                  state=RolloutState.ROLLED_BACK)  # fmt: skip
    assert _stored(registry)[0] == "rolled_back"
    assert rollouts.active("api") is None
    assert rollouts.latest("api") == rolled_back
    after = registry.audit.events()[-1].after  # oldest first
    assert after == {"state": "rolled_back", "step": 0, "reason": "slow"}


def test_unknown_gates_are_refused_by_name(registry: Registry) -> None:
    with pytest.raises(InvalidInput) as refused:
        registry.rollouts.start("api", 1, 2, [50], 0.0, 1, gates={"max_latency": 1.0})
    assert refused.value.message == (
        "unknown gate 'max_latency'; gates: max_error_rate_increase, max_p95_ratio, "
        "max_drift, min_agreement, max_input_drift_share"
    )
