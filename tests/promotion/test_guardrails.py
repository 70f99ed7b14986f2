"""Guardrails after promotion, under real traffic: a degraded version promoted to
`production` is rolled back by the server's guard, audited and sent to the webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.config import Settings
from shipyard.promotion.guardrails import Traffic, crossed
from shipyard.promotion.policy import Guardrails, PromotionPolicy
from shipyard.promotion.service import PromotionService
from shipyard.registry.audit import Actor, acting_as
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import PromotionState, RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from tests import fixtures
from tests.polling import eventually
from tests.server import running_server

DEGRADED = """
class Model:
    def load(self):
        pass

    def predict(self, inputs):
        raise ValueError("degraded: this version fails every request")
"""
BY_ALIAS = "name: fraud-api\nmodel: fraud\nroutes: [{alias: production}]\n"


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/promotions", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """v1 a good sklearn model holding `production`, v2 a degraded one, and a deployment
    routing by the alias."""
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        good = fixtures.write_sklearn_model(tmp_path / "v1")
        example = fixtures.write_example_csv(tmp_path / "v1")
        options = RegistrationOptions(name="fraud", aliases=["production"])
        assert registry.register(good, options, example).version == 1
        bad = tmp_path / "v2" / "model.py"
        bad.parent.mkdir()
        bad.write_text(DEGRADED)
        assert registry.register(bad, RegistrationOptions(name="fraud")).version == 2
        registry.deployments.apply(parse_manifest(BY_ALIAS))
    finally:
        registry.close()
    return home


def _body(rng: np.random.Generator) -> dict[str, Any]:
    row = rng.normal(size=len(fixtures.FEATURES))
    return {"inputs": [{"name": name, "datatype": "FP64", "shape": [1], "data": [row[j]]}
                       for j, name in enumerate(fixtures.FEATURES)]}  # fmt: skip


def test_request_guardrails_name_their_numbers() -> None:
    guard = Guardrails(max_error_rate=0.05, max_p95_ms=50, min_requests=20)
    calm = Traffic(requests=100, errors=5, latencies=[0.010] * 95)
    assert crossed(guard, calm) is None  # 0.05 is allowed, not crossed
    failing = Traffic(requests=80, errors=34, latencies=[0.010] * 46)
    assert crossed(guard, failing) == (
        "guardrail max_error_rate: 0.42 over 80 requests since promotion (allowed 0.05)"
    )
    slow = Traffic(requests=100, errors=0, latencies=[0.010] * 90 + [0.200] * 10)
    p95 = np.percentile([10.0] * 90 + [200.0] * 10, 95)  # numpy's, the reference
    assert crossed(guard, slow) == (
        f"guardrail max_p95_ms: {p95:.1f} ms over 100 answered requests since promotion "
        "(allowed 50 ms)"
    )


def test_a_degraded_promotion_is_rolled_back_under_traffic(
    home: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    policy = PromotionPolicy(
        name="guarded", model="fraud", alias="production", webhook=url,
        guardrails=Guardrails(baking="1h", max_error_rate=0.05, min_requests=20),
    )  # fmt: skip
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_ROLLOUT_TICK": "0.1"}
    rng = np.random.default_rng(0)
    registry = Registry.open(Settings(home=home))
    with running_server(env) as server, httpx.Client(timeout=30) as http:
        infer = f"{server.url}/v2/models/fraud-api/infer"
        answer = http.post(infer, json=_body(rng))
        assert (answer.status_code, answer.headers["x-shipyard-model-version"]) == (200, "fraud:1")

        with acting_as(Actor("ci", "admin")):  # what `shipyard promote` does once gates pass
            revision = registry.policies.apply(policy.name, policy.document())
            started = registry.promotions.start("fraud", 2, revision, "production")
            promoted = PromotionService(registry)._act(started, policy)
        assert (promoted.state, promoted.previous_version) == (PromotionState.BAKING, 1)
        assert _production(registry) == 2

        def rolled_back() -> str | None:
            http.post(infer, json=_body(rng))  # real traffic, failing while v2 serves
            state = registry.promotions.get(promoted.id)
            return state.reason if state.state is PromotionState.ROLLED_BACK else None

        reason = eventually(rolled_back, "the guard to roll the promotion back", timeout=90)
        assert reason.startswith("guardrail max_error_rate: ")
        assert "requests since promotion (allowed 0.05)" in reason
        assert _production(registry) == 1

        def served_by_v1() -> bool | None:
            reply = http.post(infer, json=_body(rng))
            ok = reply.status_code == 200 and reply.headers["x-shipyard-model-version"] == "fraud:1"
            return ok or None

        eventually(served_by_v1, "the deployment to follow the alias back to v1")

        audit = http.get(f"{server.url}/api/audit", params={"limit": 1000}).json()
        (rollback,) = [e for e in audit if e["action"] == "promotion.rollback"]
        assert rollback["actor"] == "promotion-guardrails"
        assert rollback["after"] == {"state": "rolled_back", "reason": reason}
        moves = sorted(
            (e["id"], e["actor"], e["after"]["version"])
            for e in audit
            if (e["action"], e["target"]) == ("alias.set", "fraud@production")
        )
        assert [(actor, version) for _, actor, version in moves[-2:]] == [
            ("ci", 2),
            ("promotion-guardrails", 1),
        ]  # promoted, then moved back by the guard

        hook = eventually(
            lambda: next((e for e in received if e["event"] == "promotion.rollback"), None),
            "the rollback to reach the webhook",
        )
        assert hook["promotion"]["state"] == "rolled_back"
        assert hook["promotion"]["reason"] == reason
        assert [e["event"] for e in received] == ["promotion.promote", "promotion.rollback"]
    registry.close()


def _production(registry: Registry) -> int:
    return registry.models.get_version(ModelRef("fraud", alias="production")).version


@pytest.mark.parametrize("ending", ["promote", "abort"])
def test_a_promotion_rolling_out_follows_its_rollouts(home: Path, ending: str) -> None:
    from shipyard.promotion.guardrails import PromotionGuard
    from shipyard.promotion.policy import OnPromote
    from shipyard.routing.rollouts import RolloutService

    policy = PromotionPolicy(
        name="stepwise", model="fraud", on_promote=OnPromote(action="rollout", steps=[50, 100]),
        guardrails=Guardrails(baking="always", max_error_rate=0.05),
    )  # fmt: skip
    registry = Registry.open(Settings(home=home))
    try:
        revision = registry.policies.apply(policy.name, policy.document())
        started = registry.promotions.start("fraud", 2, revision, "production")
        promotion = PromotionService(registry)._act(started, policy)
        assert promotion.state is PromotionState.ROLLING_OUT
        (rollout,) = promotion.rollouts
        assert rollout["deployment"] == "fraud-api"
        guard = PromotionGuard(registry)
        guard.check(promotion)  # still running: nothing happens
        assert registry.promotions.get(promotion.id).state is PromotionState.ROLLING_OUT

        RolloutService(registry).act("fraud-api", ending)
        guard.check(promotion)
        after = registry.promotions.get(promotion.id)
        if ending == "promote":
            assert (after.state, after.previous_version) == (PromotionState.BAKING, 1)
            assert after.baking_until is None and after.promoted_at is not None  # always
            assert _production(registry) == 2
        else:
            assert after.state is PromotionState.ROLLED_BACK
            assert after.reason == f"rollout {rollout['rollout']} on fraud-api aborted: " \
                                   "aborted by hand"  # fmt: skip
            assert _production(registry) == 1
        manifest = registry.deployments.get("fraud-api").manifest
        assert [r.alias for r in manifest.routes] == ["production"]
    finally:
        registry.close()
