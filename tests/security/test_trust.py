"""Audit events per mutation, the exposure guard, TLS, rate limits, model-limited keys."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest

from shipyard.config import Settings
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from tests import fixtures
from tests.certificates import make_certificates
from tests.security.conftest import make_keyed_home
from tests.server import running_server, running_shipyard, shipyard_command


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_every_mutation_leaves_one_audit_event_with_its_actor(tmp_path: Path) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    deployer, admin = _bearer(keyed.tokens["deployer"]), _bearer(keyed.tokens["admin"])
    model = fixtures.write_sklearn_model(tmp_path)
    env = {**keyed.env, "SHIPYARD_AUTH_FAILURE_AUDIT_SECONDS": "1"}  # refusals: counted per 1 s
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=60) as http:

        def audit() -> list[dict[str, object]]:
            answer = http.get("/api/audit", params={"limit": 1000}, headers=admin)
            assert answer.status_code == 200, answer.text
            return answer.json()  # type: ignore[no-any-return]

        def mutate(method: str, path: str, headers: dict[str, str], **kwargs: object) -> dict:
            before = len(audit())
            answer = http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            assert answer.status_code < 300, f"{method} {path}: {answer.text}"
            events = audit()
            assert len(events) == before + 1, f"{method} {path}: {events[before:]}"
            return events[-1]

        with model.open("rb") as artifact:
            event = mutate(
                "POST", "/api/models/fraud/versions", deployer,
                files={"artifact": ("model.joblib", artifact)},
                data={"options": json.dumps({"created_by": "someone-else"})},
            )  # fmt: skip
        assert (event["action"], event["actor"]) == (
            "version.register",
            "key:" + _id(keyed, "deployer") + " (deployer)",
        )
        assert event["after"]["unsafe_format"] is True  # type: ignore[index]
        shown = http.get("/api/models/fraud/versions/1", headers=deployer).json()
        assert shown["created_by"] == event["actor"]  # not what the options claimed
        steps = [
            ("PUT", "/api/models/fraud/tags/team", {"json": {"value": "risk"}}, "model.tag.set"),
            ("DELETE", "/api/models/fraud/tags/team", {}, "model.tag.delete"),
            ("PUT", "/api/models/fraud/versions/1/tags/stage", {"json": {"value": "qa"}},
             "version.tag.set"),
            ("DELETE", "/api/models/fraud/versions/1/tags/stage", {}, "version.tag.delete"),
            ("PUT", "/api/models/fraud/aliases/production", {"json": {"version": 1}}, "alias.set"),
            ("DELETE", "/api/models/fraud/aliases/production", {}, "alias.delete"),
            ("POST", "/api/models/fraud/versions/1/archive", {}, "version.archive"),
            ("POST", "/api/models/fraud/archive", {}, "model.archive"),
        ]  # fmt: skip
        for method, path, kwargs, action in steps:
            event = mutate(method, path, deployer, **kwargs)
            assert event["action"] == action
            assert event["actor"] == f"key:{_id(keyed, 'deployer')} (deployer)"
            assert event["source"].startswith("127.0.0.1:")  # type: ignore[union-attr]
        created = http.post("/api/keys", json={"role": "viewer", "expires": "1d"}, headers=admin)
        assert created.status_code == 201, created.text
        token, key_id = created.json()["key"], created.json()["record"]["id"]
        assert audit()[-1]["action"] == "key.create"
        assert http.get("/api/models", headers=_bearer(token)).status_code == 200
        event = mutate("POST", f"/api/keys/{key_id}/revoke", admin)
        assert (event["action"], event["target"]) == ("key.revoke", key_id)
        refused = http.get("/api/models", headers=_bearer(token))
        assert refused.status_code == 401
        # Refusals are written off the request path, counted, once their second is over.
        deadline = time.monotonic() + 30
        while not (failures := [e for e in audit() if e["action"] == "auth.failed"]):
            assert time.monotonic() < deadline, "no auth.failed event"
        shown = [(e["target"], e["actor"], e["after"]["count"]) for e in failures]  # type: ignore[index]
        assert shown == [(f"key:{key_id}", "anonymous", 1)]
        assert failures[0]["source"] == "127.0.0.1"
        assert token not in "".join(server.log)


def _id(keyed: object, role: str) -> str:
    return keyed.tokens[role].split("_")[1]  # type: ignore[attr-defined,no-any-return]


def test_audit_trail_is_append_only(registry: Registry) -> None:
    """On SQLite and PostgreSQL alike, the database itself refuses edits."""
    import sqlalchemy as sa

    KeyStore(registry.sessions).create("viewer", created_by="test")
    edits = ("UPDATE audit_events SET actor = 'someone else'", "DELETE FROM audit_events")
    for statement in edits:
        with (
            pytest.raises(sa.exc.DatabaseError, match="append-only"),
            registry.sessions() as session,
            session.begin(),
        ):
            session.execute(sa.text(statement))
    assert [e.action for e in registry.audit.events()] == ["key.create"]


def test_open_server_refuses_to_listen_beyond_loopback_without_insecure(tmp_path: Path) -> None:
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(
        [*shipyard_command(), "server", "--host", "0.0.0.0", "--port", "0", "--grpc-port", "-1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 without authentication" in refused.stderr
    with running_shipyard(env, "server", "--insecure", host="0.0.0.0") as server:
        assert "running open on 0.0.0.0 (--insecure)" in "".join(server.log)
    with running_server(env) as server:
        assert "running open: no API keys exist" in "".join(server.log)


def test_tls_server_answers_a_trusting_client_and_refuses_plain_http(tmp_path: Path) -> None:
    import ssl

    ca, cert, key = make_certificates(tmp_path)
    env = {"SHIPYARD_HOME": str(tmp_path / "home")}
    with running_server(env, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert server.url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(ca))
        answer = httpx.get(f"{server.url}/v2/health/live", verify=trusting, timeout=30)
        assert answer.json() == {"live": True}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live", timeout=30)  # system CAs: untrusted
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/v2/health/live", timeout=30)
        assert server.grpc_target is not None
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_burst_over_a_keys_rate_gets_429_and_other_models_403(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = fixtures.write_sklearn_model(tmp_path)
    registry = Registry.open(Settings(home=home))
    try:
        keys = KeyStore(registry.sessions)
        limited, _ = keys.create("predictor", created_by="test", rate_per_second=2)
        other, _ = keys.create("predictor", created_by="test", models=["somewhere-else"])
    finally:
        registry.close()
    rows, _ = fixtures.training_data(rows=1)
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": rows.tolist()}]}  # fmt: skip
    with running_shipyard({"SHIPYARD_HOME": str(home)}, "serve", str(model)) as server:
        url = f"{server.url}/v2/models/model/infer"
        with httpx.Client(timeout=30) as http:
            answers = [http.post(url, json=body, headers=_bearer(limited)) for _ in range(10)]
            forbidden = http.post(url, json=body, headers=_bearer(other))
    statuses = [a.status_code for a in answers]
    assert statuses[0] == 200 and 429 in statuses
    limited_answer = answers[statuses.index(429)]
    assert limited_answer.headers["retry-after"] == "1"
    assert "rate" in limited_answer.json()["error"]
    assert forbidden.status_code == 403
    assert "may not call model 'model'" in forbidden.json()["error"]
