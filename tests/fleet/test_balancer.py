"""Three replicas on one PostgreSQL behind a real HAProxy: a replica killed -9 under traffic
costs at most the requests in flight on it, and a restarted one rejoins; a whole zone taken
down moves traffic to the other zone with no failures once the health checks see it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.conftest import _fresh_postgres_database
from tests.fleet.balancer import (
    Balancer,
    Member,
    ReplicaSpec,
    address,
    kill_replica,
    running_haproxy,
    start_replicas,
)
from tests.polling import eventually
from tests.server import RunningServer

CLIENTS = 4  # each holds at most one request at a time
MODEL = "model"
PATH = f"/v2/models/{MODEL}/infer"
OUTPUTS = [{"name": "predict"}, {"name": "predict_proba"}]


@dataclass(frozen=True)
class Case:
    body: dict[str, Any]
    outputs: dict[str, list[Any]]


@dataclass
class Fleet:
    """What every replica shares: the registry database and the artifact folder."""

    env: dict[str, str]
    cases: list[Case]
    root: Path

    def spec(self, name: str, host: str = "127.0.0.1", port: int = 0) -> ReplicaSpec:
        # The server trusts only 127.0.0.1 as loopback (docs/security.md) and refuses to
        # run open on the zones' other loopback addresses (127.0.0.2, .3) unless told to.
        args = ("--insecure",) if host != "127.0.0.1" else ()
        home = str(self.root / name)
        return ReplicaSpec({**self.env, "SHIPYARD_HOME": home}, host, port, args)


@pytest.fixture
def fleet(tmp_path: Path, postgres_server: str) -> Fleet:
    """A registered model in a fresh PostgreSQL database, and the answers it must give,
    computed here by the model itself."""
    database_url = _fresh_postgres_database(postgres_server)
    artifacts = tmp_path / "artifacts"
    model_path = fixtures.write_sklearn_model(tmp_path / "model")
    registry = Registry.open(
        Settings(home=tmp_path / "registrar", database_url=database_url,
                 artifact_root=str(artifacts))
    )  # fmt: skip
    try:
        registry.register(
            model_path, RegistrationOptions(name=MODEL), fixtures.write_example_csv(tmp_path)
        )
    finally:
        registry.close()
    model = joblib.load(model_path)
    cases = []
    for seed in range(8):
        features, _ = fixtures.training_data(rows=3, seed=100 + seed)
        inputs = [
            {"name": name, "datatype": "FP64", "shape": [3], "data": features[:, j].tolist()}
            for j, name in enumerate(fixtures.FEATURES)
        ]
        expected = {
            "predict": model.predict(features).tolist(),
            "predict_proba": model.predict_proba(features).ravel().tolist(),
        }
        cases.append(Case({"inputs": inputs, "outputs": OUTPUTS}, expected))
    env = {"SHIPYARD_DATABASE_URL": database_url, "SHIPYARD_ARTIFACT_ROOT": str(artifacts)}
    return Fleet(env, cases, tmp_path)


@dataclass
class Tally:
    """Requests through the balancer: answered right, failed (no 200), or answered wrong."""

    right: int = 0
    failed: int = 0
    wrong: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return self.right + self.failed + self.wrong


def _outcome(http: httpx.Client, case: Case) -> tuple[str, str]:
    try:
        answer = http.post(PATH, json=case.body)
    except httpx.HTTPError as error:
        return "failed", repr(error)
    if answer.status_code != 200:
        return "failed", f"{answer.status_code} {answer.text[:200]}"
    got = {output["name"]: output["data"] for output in answer.json()["outputs"]}
    return ("right", "") if got == case.outputs else ("wrong", f"{got} != {case.outputs}")


def drive(url: str, cases: list[Case], per_client: int, tally: Tally | None = None) -> Tally:
    """CLIENTS threads, each sending `per_client` requests one after another."""
    tally = tally if tally is not None else Tally()

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(per_client):
                kind, problem = _outcome(http, cases[(offset + i) % len(cases)])
                with tally.lock:
                    setattr(tally, kind, getattr(tally, kind) + 1)
                    if problem:
                        tally.problems.append(problem)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def warm(servers: list[RunningServer], case: Case) -> None:
    """Load the model on every replica (at once) before it takes balanced traffic."""

    def load(server: RunningServer) -> httpx.Response:
        return httpx.post(server.url + PATH, json=case.body, timeout=60)

    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        for answer in pool.map(load, servers):
            assert answer.status_code == 200, answer.text


def served(balancer: Balancer, names: list[str]) -> int:
    stats = balancer.stats()
    return sum(stats[name].responses_2xx for name in names)


def test_a_replica_killed_under_traffic_costs_at_most_its_requests_in_flight(
    fleet: Fleet,
) -> None:
    with ExitStack() as stack:  # HAProxy and the replicas killed, also on failure
        names = ["r0", "r1", "r2"]
        replicas = start_replicas(stack, [fleet.spec(name) for name in names])
        warm(replicas, fleet.cases[0])
        members = [Member(n, *address(s)) for n, s in zip(names, replicas, strict=True)]
        balancer = stack.enter_context(running_haproxy(members))
        balancer.wait_for(names, "UP")

        steady = drive(balancer.url, fleet.cases, per_client=40)
        assert (steady.right, steady.failed, steady.wrong) == (4 * 40, 0, 0), steady.problems
        assert all(served(balancer, [n]) > 0 for n in names)  # round robin reached each

        # kill -9 one replica once traffic is flowing; the clients go on to the end.
        during = Tally()
        traffic = threading.Thread(target=drive, args=(balancer.url, fleet.cases, 80, during))
        traffic.start()
        try:
            eventually(lambda: True if during.done >= 4 * 20 else None, "traffic to flow")
            kill_replica(replicas[1])
        finally:
            traffic.join()
        assert during.wrong == 0, during.problems
        assert during.failed <= CLIENTS, during.problems
        print(f"at the kill: {during.failed} of {during.done} requests failed")
        balancer.wait_for(["r1"], "DOWN")

        after = drive(balancer.url, fleet.cases, per_client=40)
        assert (after.right, after.failed, after.wrong) == (4 * 40, 0, 0), after.problems

        # The same replica back on its port rejoins once two health checks pass.
        host, port = address(replicas[1])
        (restarted,) = start_replicas(stack, [fleet.spec("r1", host, port)])
        warm([restarted], fleet.cases[0])
        balancer.wait_for(["r1"], "UP")
        before = served(balancer, ["r1"])
        rejoined = drive(balancer.url, fleet.cases, per_client=30)
        assert (rejoined.right, rejoined.failed, rejoined.wrong) == (4 * 30, 0, 0), (
            rejoined.problems
        )
        assert served(balancer, ["r1"]) > before


def test_a_zone_down_moves_traffic_to_the_other_zone(fleet: Fleet) -> None:
    with ExitStack() as stack:  # HAProxy and the replicas killed, also on failure
        # Zone A (local) on 127.0.0.2, zone B (remote, backup servers) on 127.0.0.3.
        zone_a, zone_b = ["a0", "a1"], ["b0", "b1"]
        specs = [fleet.spec(n, "127.0.0.2") for n in zone_a] + [
            fleet.spec(n, "127.0.0.3") for n in zone_b
        ]
        replicas = start_replicas(stack, specs)
        warm(replicas, fleet.cases[0])
        members = [
            Member(name, *address(server), backup=name in zone_b)
            for name, server in zip(zone_a + zone_b, replicas, strict=True)
        ]
        balancer = stack.enter_context(running_haproxy(members))
        balancer.wait_for(zone_a + zone_b, "UP")

        local = drive(balancer.url, fleet.cases, per_client=30)
        assert (local.right, local.failed, local.wrong) == (4 * 30, 0, 0), local.problems
        assert served(balancer, zone_a) == 4 * 30 and served(balancer, zone_b) == 0

        for server in replicas[:2]:
            kill_replica(server)
        balancer.wait_for(zone_a, "DOWN")

        moved = drive(balancer.url, fleet.cases, per_client=30)
        assert (moved.right, moved.failed, moved.wrong) == (4 * 30, 0, 0), moved.problems
        assert served(balancer, zone_b) == 4 * 30
        assert all(served(balancer, [n]) > 0 for n in zone_b)  # every backup, not only the first
