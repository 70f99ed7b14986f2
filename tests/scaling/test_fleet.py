"""Replicas that agree through the registry: membership from heartbeats, per-arm traffic
reports the rollout controller adds up, so its gates judge the whole fleet's requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry.fleet import ArmReport
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.registry.tables import LeaseRow
from shipyard.routing.deployments import ArmWindow, ArmWindows
from shipyard.routing.fleet_gates import fleet_window
from tests import fixtures
from tests.polling import eventually
from tests.server import running_server, shipyard_command


def test_an_arm_reports_what_happened_since_its_last_report() -> None:
    windows = ArmWindows()
    for seconds, outputs in (
        (0.01, {"y": np.array([1.0])}),
        (0.03, None),
        (0.02, {"y": np.array([0.0])}),
    ):
        windows.record("api", "2", seconds, outputs)
    windows.record("api", "1", 0.05, {"y": np.array([1.0, 1.0])})
    windows.windows[("api", "2")].agreement.sent = 4
    windows.windows[("api", "2")].agreement.agreed = 3
    reports = {r.version: r for r in windows.drain()}
    candidate, stable = reports["2"], reports["1"]
    # Three requests to arm 2, one failed; latencies and first output values of the others.
    assert (candidate.requests, candidate.errors) == (3, 1)
    assert (candidate.latencies, candidate.latency_count) == ([0.01, 0.02], 2)
    assert (candidate.predictions, candidate.prediction_count) == ([1.0, 0.0], 2)
    assert (candidate.copies_sent, candidate.copies_agreed, candidate.copies_failed) == (4, 3, 0)
    assert (stable.requests, stable.predictions) == (1, [1.0, 1.0])
    assert windows.drain() == []  # nothing new since
    windows.windows[("api", "2")].agreement.sent = 6  # two more copies sent since
    (again,) = windows.drain()
    assert (again.requests, again.copies_sent) == (0, 2)
    # The gates' own window is untouched by reporting.
    assert windows.get("api", "2").requests == 3


def test_the_controller_adds_the_other_replicas_reports() -> None:
    local = ArmWindow()
    local.record(0.01, {"y": np.array([1.0])})
    other = ArmReport("api", "2", requests=9, errors=3, latencies=[0.2, 0.3],
                      latency_count=6, copies_sent=5, copies_agreed=4)  # fmt: skip
    merged = fleet_window(local, [other, ArmReport("api", "2", requests=10)])
    assert (merged.requests, merged.errors) == (1 + 9 + 10, 3)
    assert sorted(merged.latencies) == [0.01, 0.2, 0.3]
    assert (merged.agreement.sent, merged.agreement.agreed) == (5, 4)
    assert local.requests == 1  # the replica's own window is not changed


def test_reports_and_heartbeats_round_trip(registry: Registry) -> None:
    fleet = registry.fleet
    before = datetime.now(UTC) - timedelta(seconds=1)
    fleet.report("a", [ArmReport("api", "2", 5, 1, [0.1], 1, [1.0], 1, 2, 2, 0)])
    fleet.report("b", [ArmReport("api", "2", 7, 0), ArmReport("api", "1", 3, 0)])
    mine_excluded = fleet.reports("api", "2", before, excluding="a")
    assert [(r.requests, r.errors) for r in mine_excluded] == [(7, 0)]
    everyone = fleet.reports("api", "2", before)
    assert sorted(r.requests for r in everyone) == [5, 7]
    assert next(r for r in everyone if r.requests == 5).latencies == [0.1]
    assert fleet.reports("api", "2", datetime.now(UTC) + timedelta(seconds=5)) == []

    started = datetime.now(UTC)
    fleet.heartbeat("r1", "http://127.0.0.1:1", "0.1.0", started, {"workers": 2})
    fleet.heartbeat("r2", "http://127.0.0.1:2", "0.1.0", started, {"workers": 0})
    members = {m.id: m for m in fleet.members(window_seconds=60)}
    assert set(members) == {"r1", "r2"} and all(m.live for m in members.values())
    assert members["r1"].load == {"workers": 2}
    assert not any(m.live for m in fleet.members(window_seconds=-1))  # all older than "now+1"
    fleet.leave("r2")
    assert [m.id for m in fleet.members(window_seconds=60)] == ["r1"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        for seed in (0, 1):
            model = fixtures.write_sklearn_model(tmp_path / f"v{seed}", seed=seed)
            registry.register(model, RegistrationOptions(name="svc"))
        registry.deployments.apply(
            parse_manifest("name: svc-api\nmodel: svc\nroutes: [{version: 1}]")
        )
    finally:
        registry.close()
    return home


def _start_rollout(http: httpx.Client) -> None:
    """A rollout of svc-api to version 2, once its first step has started."""
    rollout = {"to": 2, "steps": [50, 100], "bake_seconds": 0.2, "min_requests": 20}
    assert http.post("/api/deployments/svc-api/rollout", json=rollout).status_code == 201
    eventually(
        lambda: http.get("/api/deployments/svc-api/rollout").json()["step_started_at"],
        "the first step to start",
    )


def test_a_rollout_rolls_back_on_errors_only_other_replicas_saw(home: Path) -> None:
    """The controller's replica gets no traffic at all; another replica's reports (written
    here through the fleet table, as any replica writes them) show the candidate failing."""
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_ROLLOUT_TICK": "0.1"}
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        _start_rollout(http)
        registry = Registry.open(Settings(home=home))
        try:
            registry.fleet.report("elsewhere", [
                ArmReport("svc-api", "2", requests=40, errors=10),
                ArmReport("svc-api", "1", requests=40, errors=0),
            ])  # fmt: skip
        finally:
            registry.close()

        def finished() -> dict | None:  # type: ignore[type-arg]
            status = http.get("/api/deployments/svc-api/rollout").json()
            return status if status["state"] not in ("running", "paused") else None

        done = eventually(finished, "the rollout to end")
        assert done["state"] == "rolled_back", done
        # 10 of 40 failed elsewhere against none of stable's 40: 0.250 vs 0.000.
        assert "error rate 0.250 vs stable 0.000" in done["reason"]


def test_replicas_list_each_other_and_one_that_stops_leaves(home: Path) -> None:
    env = {"SHIPYARD_HOME": str(home)}
    with running_server(env) as first, running_server(env) as second:

        def members(count: int) -> list[dict] | None:  # type: ignore[type-arg]
            replicas = httpx.get(f"{first.url}/api/cluster", timeout=30).json()["replicas"]
            live = [r for r in replicas if r["live"]]
            return live if len(live) == count else None

        both = eventually(lambda: members(2), "both replicas in the membership")
        assert {r["address"] for r in both} == {first.url, second.url}
        assert all(r["load"]["versions"] == 1 for r in both)  # svc-api loaded at start
        listed = subprocess.run(
            [*shipyard_command(), "cluster", "--json"],
            env={**os.environ, "SHIPYARD_URL": second.url},
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        shown = json.loads(listed.stdout)["replicas"]
        assert {r["address"] for r in shown if r["live"]} == {first.url, second.url}
        second.process.send_signal(signal.SIGINT)  # a graceful stop: it leaves at once
        second.process.wait(timeout=30)
        (left,) = eventually(lambda: members(1), "the stopped replica to leave")
        assert left["address"] == first.url


def test_the_controller_lease_fails_over_mid_rollout(home: Path) -> None:
    """kill -9 the replica driving a rollout: another takes the lease once it expires and
    carries the rollout on from its stored step."""
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_ROLLOUT_TICK": "0.1"}
    with (
        running_server(env) as first,
        running_server(env) as second,
        httpx.Client(base_url=first.url, timeout=30) as http,
    ):
        _start_rollout(http)
        registry = Registry.open(Settings(home=home))
        try:
            with registry.sessions() as session:
                holder = session.scalar(
                    sa.select(LeaseRow.holder).where(LeaseRow.name == "rollout-controller")
                )
            assert holder is not None
            driving, other = (
                (first, second) if f":{first.process.pid}:" in holder else (second, first)
            )
            assert f":{driving.process.pid}:" in holder
            driving.process.kill()  # kill -9: no lease released, no last report
            driving.process.wait(timeout=30)
            # Nobody sends traffic in this test: a replica elsewhere saw a healthy candidate.
            registry.fleet.report("elsewhere", [
                ArmReport("svc-api", "2", requests=30, errors=0),
                ArmReport("svc-api", "1", requests=30, errors=0),
            ])  # fmt: skip
        finally:
            registry.close()
        http.close()  # its server is one of the two, maybe the dead one
        with httpx.Client(base_url=other.url, timeout=30) as survivor:

            def finished() -> dict | None:  # type: ignore[type-arg]
                status = survivor.get("/api/deployments/svc-api/rollout").json()
                return status if status["state"] not in ("running", "paused") else None

            done = eventually(finished, "the surviving replica to finish the rollout", timeout=60)
            audit = survivor.get("/api/audit", params={"limit": 1000}).json()
        assert done["state"] == "promoted", done
        (promotion,) = [e for e in audit if e["action"] == "rollout.promote"]
        assert f":{other.process.pid}:" in promotion["source"]  # the lease holder it names


def test_a_revision_applied_through_one_replica_is_served_by_the_other(home: Path) -> None:
    env = {"SHIPYARD_HOME": str(home)}
    row = fixtures.training_data(rows=1, seed=3)[0]
    body = {
        "inputs": [{"name": "input-0", "shape": [1, row.shape[1]], "datatype": "FP64",
                    "data": row.tolist()}]
    }  # fmt: skip
    with (
        running_server(env) as first,
        running_server(env) as second,
        httpx.Client(timeout=30) as http,
    ):
        answered = http.post(f"{second.url}/v2/models/svc-api/infer", json=body)
        assert answered.json()["model_version"] == "1"
        manifest = "name: svc-api\nmodel: svc\nroutes: [{version: 2}]\n"
        applied = http.post(
            f"{first.url}/api/deployments", content=manifest,
            headers={"content-type": "application/yaml"},
        )  # fmt: skip
        assert applied.status_code in (200, 201), applied.text

        def serves_two() -> bool | None:
            answer = http.post(f"{second.url}/v2/models/svc-api/infer", json=body).json()
            return True if answer["model_version"] == "2" else None

        eventually(serves_two, "the other replica to serve revision 2 (version 2)")
