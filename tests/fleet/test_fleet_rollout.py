"""A rollout through a real HAProxy in front of three replicas on one PostgreSQL: the
candidate fails on negative inputs, and the controller, on whichever replica holds the
lease, rolls it back on the error rate of the whole fleet's traffic, not only its own."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.registry.tables import ArmReportRow, LeaseRow
from tests.conftest import _fresh_postgres_database
from tests.fleet.balancer import (
    Member,
    ReplicaSpec,
    address,
    running_haproxy,
    start_replicas,
)
from tests.polling import eventually

MODEL = """
import numpy as np

FAIL_ON_NEGATIVE = {fail}


class Model:
    def load(self):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        if FAIL_ON_NEGATIVE and (x < 0).any():
            raise ValueError("negative input")
        return {{"y": (x.sum(axis=1) > 0).astype(np.int64)}}
"""
MANIFEST = "name: svc-api\nmodel: svc\nroutes: [{version: 1}]\n"
# Round robin over three replicas hands the controller's replica a third of the traffic,
# so a third of the candidate's requests: the step's threshold counts all three.
MIN_REQUESTS = 90
# A bake longer than two report intervals (each replica writes about once a second): the
# step cannot end on the controller's own traffic before any other replica has reported,
# whatever the load on the machine does to the request rate.
ROLLOUT = {"to": 2, "steps": [50, 100], "bake_seconds": 2.5, "min_requests": MIN_REQUESTS}
CLIENTS = 4
NAMES = ["r0", "r1", "r2"]
ROWS = ([[1.0, 2.0, 3.0]], [[-1.0, -2.0, -3.0]])  # every other request negative


def _body(row: list[list[float]]) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": row}]}


def _utc(moment: str | datetime) -> datetime:
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def test_a_rollout_rolls_back_on_the_error_rate_of_every_replicas_traffic(
    tmp_path: Path, postgres_server: str
) -> None:
    database_url = _fresh_postgres_database(postgres_server)
    artifacts = str(tmp_path / "artifacts")
    registry = Registry.open(
        Settings(home=tmp_path / "registrar", database_url=database_url, artifact_root=artifacts)
    )
    try:
        for version, fail in ((1, False), (2, True)):  # 2 raises ValueError on negatives
            path = tmp_path / f"v{version}" / "model.py"
            path.parent.mkdir()
            path.write_text(MODEL.format(fail=fail))
            assert registry.register(path, RegistrationOptions(name="svc")).version == version
        registry.deployments.apply(parse_manifest(MANIFEST))
    finally:
        registry.close()
    env = {
        "SHIPYARD_DATABASE_URL": database_url,
        "SHIPYARD_ARTIFACT_ROOT": artifacts,
        "SHIPYARD_ROLLOUT_TICK": "0.1",
    }
    specs = [ReplicaSpec({**env, "SHIPYARD_HOME": str(tmp_path / n)}) for n in NAMES]

    with ExitStack() as stack, httpx.Client(timeout=30) as http:
        replicas = start_replicas(stack, specs)
        members = [Member(n, *address(s)) for n, s in zip(NAMES, replicas, strict=True)]
        balancer = stack.enter_context(running_haproxy(members))
        balancer.wait_for(NAMES, "UP")
        rollout_url = f"{balancer.url}/api/deployments/svc-api/rollout"
        assert http.post(rollout_url, json=ROLLOUT).status_code == 201

        # Clients through the balancer until the rollout ends: (negative?, status) each.
        answers: Counter[tuple[bool, int]] = Counter()
        problems: list[str] = []
        lock, stop = threading.Lock(), threading.Event()

        def client() -> None:
            with httpx.Client(base_url=balancer.url, timeout=30) as own:
                for negative in itertools.cycle((False, True)):
                    if stop.is_set():
                        return
                    try:
                        status = own.post("/v2/models/svc-api/infer", json=_body(ROWS[negative]))
                        code = status.status_code
                    except httpx.HTTPError as error:
                        code = 0
                        with lock:
                            problems.append(repr(error))
                    with lock:
                        answers[negative, code] += 1

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:

            def ended() -> dict | None:
                record: dict = http.get(rollout_url).json()
                return record if record["state"] not in ("running", "paused") else None

            done = eventually(ended, "the rollout to end", timeout=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

        assert done["state"] == "rolled_back", done
        assert "error rate" in done["reason"], done
        routes = http.get(f"{balancer.url}/api/deployments/svc-api").json()["manifest"]["routes"]
        assert routes == [{"version": 1, "weight": 100.0}]
        # Version 1 never fails and version 2 only on negatives: a request without a
        # negative row was answered, whichever replica and arm took it.
        assert problems == [], problems
        assert {code for (negative, code) in answers if not negative} == {200}, answers
        assert sum(n for (negative, code), n in answers.items() if negative and code != 200)

        pids = {server.process.pid: name for name, server in zip(NAMES, replicas, strict=True)}

        def replica(row: sa.Row) -> str | None:  # written as "host:PID:uuid", its holder id
            return pids.get(int(row.replica.rsplit(":", 2)[1]))

        engine = sa.create_engine(database_url)
        stack.callback(engine.dispose)

        def reported() -> tuple[str | None, list[sa.Row]] | None:
            """The lease holder and the deployment's arm reports, once every replica's
            report on the candidate is in (each writes about once a second)."""
            with engine.connect() as connection:
                holder = connection.scalar(
                    sa.select(LeaseRow.holder).where(LeaseRow.name == "rollout-controller")
                )
                rows = connection.execute(
                    sa.select(ArmReportRow.replica, ArmReportRow.version, ArmReportRow.requests,
                              ArmReportRow.errors, ArmReportRow.at)
                    .where(ArmReportRow.deployment == "svc-api")
                ).all()  # fmt: skip
            candidates = {replica(r) for r in rows if r.version == "2" and r.requests}
            return (holder, list(rows)) if candidates >= set(NAMES) else None

        holder, rows = eventually(reported, "the candidate's reports from all three replicas")
        by_replica = {row.replica: replica(row) for row in rows}
        assert holder in by_replica, (holder, by_replica)
        assert None not in by_replica.values(), by_replica
        tally: Counter[tuple[str, str, str]] = Counter()
        for row in rows:
            name = by_replica[row.replica]
            tally[name, row.version, "requests"] += row.requests
            tally[name, row.version, "errors"] += row.errors
        stats = balancer.stats()
        print(f"controller: {by_replica[holder]} ({holder}); {done['reason']}")
        print("answers (negative, status):", dict(answers))
        for name in NAMES:
            print(
                f"{name}: haproxy 2xx {stats[name].responses_2xx}; "
                f"v1 {tally[name, '1', 'requests']} requests; "
                f"v2 {tally[name, '2', 'requests']} requests, {tally[name, '2', 'errors']} errors"
            )
        # The candidate's traffic (and its failures) came from all three replicas, and
        # every replica answered through the balancer: the controller's own third was
        # only part of what the step counted.
        assert all(tally[name, "2", "errors"] > 0 for name in NAMES), tally
        assert all(stats[name].responses_2xx > 0 for name in NAMES), stats
        # What the controller's query read at its decision: other replicas' reports on
        # the candidate, written after the step began and before the rollback.
        since, decided = _utc(done["step_started_at"]), _utc(done["updated_at"])
        read = [
            r for r in rows
            if r.version == "2" and r.replica != holder and since <= _utc(r.at) <= decided
        ]  # fmt: skip
        counted = sum(r.requests for r in read)
        print(
            f"others' candidate requests at the decision: {counted} from", {r.replica for r in read}
        )
        assert counted > 0, (since, decided, rows)
