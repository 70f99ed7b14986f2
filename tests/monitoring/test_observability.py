"""Observability of a real `shipyard server`: the /metrics exposition after known traffic,
request ids and JSON access logs over REST and gRPC, trace spans sent to a real OTLP
receiver, and the worker restart counter."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.monitoring.otlp import ReceivedSpan, attributes, receiving
from tests.polling import eventually
from tests.server import RunningServer, running_server, running_shipyard

T = TypeVar("T")

CRASHER_MODEL = '''
import os


class Crasher:
    """Echoes its input; a negative first value kills the worker process."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        if values[0] < 0:
            os._exit(3)
        return values
'''
DEPLOYMENT = "name: doubler-api\nmodel: doubler\nroutes: [{version: 1}]\n"
INFER = "/v2/models/doubler/infer"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
ROWS = 2
# The id prefix the observer generates: 12 hex digits, a dash, a hex counter.
GENERATED_ID = re.compile(r"[0-9a-f]{32}")  # 16 random bytes: not guessable


def _body(*values: float) -> dict[str, Any]:
    data = list(values) or [1.0, 2.0]
    return {"inputs": [{"name": "values", "shape": [len(data)], "datatype": "FP64", "data": data}]}


# A well-formed request the doubler cannot answer: a 400 once the model is known.
EMPTY_BODY = {"inputs": [{"name": "values", "shape": [0], "datatype": "FP64", "data": []}]}


@dataclass
class Scrape:
    """One parsed /metrics exposition."""

    text: str
    samples: list[Sample]

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels; 0.0 if absent (a series not yet born)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, f"{name}{labels} exposed {len(found)} times"
        return found[0] if found else 0.0

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and s.labels == labels for s in self.samples)


def scrape(server: RunningServer) -> Scrape:
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = text_string_to_metric_families(response.text)
    return Scrape(response.text, [s for family in families for s in family.samples])


def idle_scrape(server: RunningServer) -> Scrape:
    """A scrape taken once no inference is in flight, so every answered request is counted.

    A REST request is counted just after its answer is sent, so a client may hold the
    answer a moment before the counters move; the in-flight gauge drops in the same step.
    """

    def idle() -> Scrape | None:
        taken = scrape(server)
        return taken if taken.value("shipyard_inflight_requests") == 0 else None

    return eventually(idle, "no request in flight")


def access_lines(server: RunningServer, request_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in list(server.log):
        if request_id in line and '"shipyard.access"' in line:
            entry = orjson.loads(line)
            if entry.get("logger") == "shipyard.access" and entry["request_id"] == request_id:
                lines.append(entry)
    return lines


def access_line(server: RunningServer, request_id: str) -> dict[str, Any]:
    """The one access log line of `request_id`, waited for (it is written after the answer)."""
    found = eventually(lambda: access_lines(server, request_id) or None, f"{request_id} logged")
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module: model `doubler` (a deployment routes to it) and `crasher`."""
    folder = tmp_path_factory.mktemp("observed")
    home = folder / "home"
    (folder / "crasher").mkdir()
    crasher = folder / "crasher" / "crasher.py"
    crasher.write_text(CRASHER_MODEL)
    registry = Registry.open(Settings(home=home))
    try:
        doubler = fixtures.write_python_model(folder / "doubler")
        registry.register(doubler, RegistrationOptions(name="doubler"))
        registry.register(crasher, RegistrationOptions(name="crasher"))
    finally:
        registry.close()
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        yield running


def test_metrics_exposition_counts_known_traffic(server: RunningServer) -> None:
    n, k, n2 = 7, 3, 4
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post(INFER, json=_body()).status_code == 200  # loads the model
        yaml = {"content-type": "application/yaml"}
        applied = http.post("/api/deployments", content=DEPLOYMENT, headers=yaml)
        assert applied.status_code == 200, applied.text
        before = idle_scrape(server)
        for _ in range(n):
            answer = http.post(INFER, json=_body())
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]
        for _ in range(k):
            refused = http.post(INFER, json=EMPTY_BODY)
            assert refused.status_code == 400, refused.text
        unknown = http.post("/v2/models/no-such-model/infer", json=_body())
        assert unknown.status_code == 404
        for _ in range(n2):
            routed = http.post("/v2/models/doubler-api/infer", json=_body())
            assert routed.status_code == 200, routed.text
            assert routed.headers["x-shipyard-model-version"] == "doubler:1"
    after = idle_scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    direct = {"deployment": "", "model": "doubler", "version": "1"}
    routed_labels = {**direct, "deployment": "doubler-api"}
    nowhere = {"deployment": "", "model": "", "version": ""}
    assert delta("shipyard_requests_total", **direct, status="200") == n
    assert delta("shipyard_requests_total", **direct, status="400") == k
    assert delta("shipyard_requests_total", **routed_labels, status="200") == n2
    assert delta("shipyard_requests_total", **nowhere, status="404") == 1
    assert delta("shipyard_request_duration_seconds_count", **direct) == n + k
    assert delta("shipyard_request_duration_seconds_count", **routed_labels) == n2
    assert delta("shipyard_request_duration_seconds_count", **nowhere) == 1
    assert delta("shipyard_request_duration_seconds_sum", **direct) > 0
    assert after.value("shipyard_request_duration_seconds_bucket", **direct, le="+Inf") == (
        after.value("shipyard_request_duration_seconds_count", **direct)
    )

    # Only requests that reached a worker have stages; the 400s never did.
    version = {"model": "doubler", "version": "1"}
    for stage in ("queue", "batch_wait", "predict"):
        count = delta("shipyard_stage_duration_seconds_count", **version, stage=stage)
        assert count == n + n2, stage
    assert delta("shipyard_stage_duration_seconds_sum", **version, stage="predict") > 0

    # One request at a time, one worker: every request is its own batch of ROWS rows.
    assert delta("shipyard_batches_total", **version) == n + n2
    assert delta("shipyard_batch_rows_total", **version) == ROWS * (n + n2)
    batches = after.value("shipyard_batches_total", **version)
    assert after.value("shipyard_batch_size_count", **version) == batches
    assert after.value("shipyard_batch_size_bucket", **version, le="2") == batches
    assert after.value("shipyard_batch_size_bucket", **version, le="1") == 0
    assert after.value("shipyard_batch_size_sum", **version) == after.value(
        "shipyard_batch_rows_total", **version
    )
    assert after.value("shipyard_inflight_requests") == 0
    assert after.value("shipyard_model_load_seconds", **version) > 0
    assert after.value("shipyard_workers", **version, state="ready") == 1
    assert after.has("shipyard_worker_restarts_total", **version)
    assert after.value("shipyard_worker_restarts_total", **version) == 0
    assert after.has("shipyard_queue_depth", **version)
    assert after.value("shipyard_refused_total", **version) == 0
    assert after.value("shipyard_deployment_revision", deployment="doubler-api") == 1


def test_metric_names_follow_prometheus_conventions(server: RunningServer) -> None:
    assert httpx.post(f"{server.url}{INFER}", json=_body(), timeout=30).status_code == 200
    exposition = idle_scrape(server).text
    declared = dict(
        line.split(" ")[2:4] for line in exposition.splitlines() if line.startswith("# TYPE ")
    )
    assert "shipyard_requests_total" in declared
    for name, kind in declared.items():
        assert name.startswith("shipyard_"), name
        assert (kind == "counter") == name.endswith("_total"), f"{name} is a {kind}"
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("shipyard_"), line
    families = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    assert families["shipyard_request_duration_seconds"] == "histogram"
    assert families["shipyard_stage_duration_seconds"] == "histogram"
    assert families["shipyard_batch_size"] == "histogram"
    assert families["shipyard_inflight_requests"] == "gauge"


def test_unknown_model_names_do_not_create_label_values(server: RunningServer) -> None:
    nowhere = {"deployment": "", "model": "", "version": "", "status": "404"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v2/models/ghost-0/infer", json=_body()).status_code == 404
        before = idle_scrape(server)
        for i in range(1, 50):
            assert http.post(f"/v2/models/ghost-{i}/infer", json=_body()).status_code == 404
    after = idle_scrape(server)
    assert (
        after.value("shipyard_requests_total", **nowhere)
        - before.value("shipyard_requests_total", **nowhere)
        == 49
    )
    assert len(after.samples) == len(before.samples)  # no new series at all
    assert "ghost-" not in after.text


def test_request_id_is_echoed_and_logged_once(server: RunningServer) -> None:
    answer = httpx.post(
        f"{server.url}{INFER}", json=_body(), headers={"x-request-id": "abc-123"}, timeout=30
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "abc-123"
    line = access_line(server, "abc-123")
    assert line["level"] == "info"
    assert line["message"] == "request"
    assert (line["model"], line["version"], line["deployment"]) == ("doubler", "1", None)
    assert line["status"] == 200
    assert line["route"] == "/v2/models/{name}/infer"
    assert line["transport"] == "rest"
    assert line["rows"] == ROWS
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert "error" not in line
    iso_utc_ms = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")
    assert iso_utc_ms.fullmatch(line["ts"]), line["ts"]


def test_request_id_is_generated_when_missing_or_unusable(server: RunningServer) -> None:
    longest = b"r" * 128
    # None: no header; then too long, a control character, and a non-ASCII (latin-1) byte.
    sent = [None, None, b"r" * 129, b"tab\there", b"caf\xe9", longest]
    answered = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for value in sent:
            headers = [(b"x-request-id", value)] if value is not None else []
            answer = http.post(INFER, json=_body(), headers=headers)
            assert answer.status_code == 200, answer.text
            answered.append(answer.headers["x-request-id"])
    *generated, kept = answered
    assert kept == longest.decode()
    assert len(set(generated)) == len(generated)
    for request_id in generated:
        assert GENERATED_ID.fullmatch(request_id), request_id
    # A generated id is the one in the access log, like a caller's.
    line = access_line(server, generated[0])
    assert line["status"] == 200 and line["model"] == "doubler"


def test_error_answers_carry_a_request_id(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        missing = http.post("/v2/models/nope/infer", json=_body(), headers={"x-request-id": "e-1"})
        malformed = http.post(INFER, content=b"{not json", headers={"x-request-id": "e-2"})
        empty = http.post(INFER, json=EMPTY_BODY, headers={"x-request-id": "e-3"})
        anonymous = http.post("/v2/models/nope/infer", json=_body())
    assert (missing.status_code, missing.headers["x-request-id"]) == (404, "e-1")
    assert (malformed.status_code, malformed.headers["x-request-id"]) == (400, "e-2")
    assert (empty.status_code, empty.headers["x-request-id"]) == (400, "e-3")
    assert anonymous.status_code == 404
    assert GENERATED_ID.fullmatch(anonymous.headers["x-request-id"])
    logged = access_line(server, "e-1")
    assert (logged["status"], logged["model"]) == (404, None)
    assert "error" in logged
    logged = access_line(server, "e-3")
    assert (logged["status"], logged["model"], logged["version"]) == (400, "doubler", "1")
    assert "empty" in logged["error"]


def test_undecodable_body_is_counted_against_its_model(server: RunningServer) -> None:
    answer = httpx.post(
        f"{server.url}{INFER}", content=b"{not json", headers={"x-request-id": "e-4"}, timeout=30
    )
    assert answer.status_code == 400
    logged = access_line(server, "e-4")
    assert (logged["model"], logged["version"]) == ("doubler", "1")


def test_client_hanging_up_mid_body_is_not_a_success(server: RunningServer) -> None:
    address = urlsplit(server.url)
    assert address.hostname is not None and address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=30) as raw:
        raw.sendall(
            b"POST /v2/models/doubler/infer HTTP/1.1\r\nhost: shipyard\r\n"
            b"x-request-id: gone-1\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"inputs": ['
        )
    assert access_line(server, "gone-1")["status"] != 200


def test_grpc_infer_sends_the_request_id_in_initial_metadata(server: RunningServer) -> None:
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    assert server.grpc_target is not None
    request = pb.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="values", datatype="FP64", shape=[ROWS]).contents.fp64_contents.extend(
        [1.0, 2.0]
    )
    labels = {"deployment": "", "model": "doubler", "version": "1", "status": "200"}
    before = idle_scrape(server)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(
            request, metadata=(("x-request-id", "grpc-abc"),), timeout=30
        )
        assert list(response.outputs[0].contents.fp64_contents) == [2.0, 4.0]
        assert dict(call.initial_metadata())["x-request-id"] == "grpc-abc"
        _, anonymous = stub.ModelInfer.with_call(request, timeout=30)
        generated = dict(anonymous.initial_metadata())["x-request-id"]
        assert GENERATED_ID.fullmatch(generated), generated
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer.with_call(
                pb.ModelInferRequest(model_name="nope"),
                metadata=(("x-request-id", "grpc-404"),),
                timeout=30,
            )
        error: Any = missing.value
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert dict(error.initial_metadata())["x-request-id"] == "grpc-404"
    after = idle_scrape(server)
    assert (
        after.value("shipyard_requests_total", **labels)
        - before.value("shipyard_requests_total", **labels)
        == 2
    )
    line = access_line(server, "grpc-abc")
    assert line["transport"] == "grpc"
    assert line["route"] == "inference.GRPCInferenceService/ModelInfer"
    assert (line["model"], line["version"], line["status"]) == ("doubler", "1", 200)
    assert access_line(server, "grpc-404")["status"] == 404


def test_worker_restart_is_counted_and_logged(server: RunningServer) -> None:
    labels = {"model": "crasher", "version": "1"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v2/models/crasher/infer", json=_body(1.0)).status_code == 200
        assert idle_scrape(server).value("shipyard_worker_restarts_total", **labels) == 0
        crashed = http.post("/v2/models/crasher/infer", json=_body(-1.0))
        assert crashed.status_code == 503, crashed.text

        def replaced() -> Scrape | None:
            taken = scrape(server)
            done = (
                taken.value("shipyard_worker_restarts_total", **labels) == 1
                and taken.value("shipyard_workers", **labels, state="ready") == 1
                and taken.value("shipyard_inflight_requests") == 0
            )
            return taken if done else None

        after = eventually(replaced, "the crashed worker replaced")
        assert after.value("shipyard_requests_total", deployment="", **labels, status="503") == 1
        assert http.post("/v2/models/crasher/infer", json=_body(1.0)).status_code == 200
    final = idle_scrape(server)
    assert final.value("shipyard_worker_restarts_total", **labels) == 1
    assert final.value("shipyard_worker_restarts_total", model="doubler", version="1") == 0
    logged = access_line(server, crashed.headers["x-request-id"])
    assert (logged["status"], logged["model"]) == (503, "crasher")
    assert "crashed" in logged["error"]

    def deaths() -> list[dict[str, Any]] | None:
        entries = map(orjson.loads, list(server.log))
        found = [e for e in entries if e["logger"] == "shipyard.workers" and "died" in e["message"]]
        return found or None

    died = eventually(deaths, "the worker's death logged")
    assert len(died) == 1 and died[0]["level"] == "warning", died
    assert "crasher:1" in died[0]["message"]


def test_every_server_log_line_is_json(server: RunningServer) -> None:
    answer = httpx.post(f"{server.url}{INFER}", json=_body(), timeout=30)
    access_line(server, answer.headers["x-request-id"])
    lines = list(server.log)
    assert any("Uvicorn running on" in line for line in lines)
    for line in lines:
        entry = orjson.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry), line


def test_request_spans_reach_an_otlp_receiver(tmp_path: Path) -> None:
    model = fixtures.write_python_model(tmp_path / "model")
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"

    def stages_arrived(spans: list[ReceivedSpan]) -> bool:
        names = {r.span.name for r in spans if r.span.trace_id.hex() == TRACE_ID}
        return {"POST /v2/models/{name}/infer", "queue", "predict"} <= names

    with receiving() as receiver:
        env = {
            "SHIPYARD_HOME": str(tmp_path / "home"),
            "SHIPYARD_OTLP_ENDPOINT": receiver.endpoint,
            # The SDK's batch processor waits 5 s between exports by default.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with running_shipyard(env, "serve", str(model)) as server:
            answer = httpx.post(
                f"{server.url}{INFER}",
                json=_body(),
                headers={"traceparent": traceparent},
                timeout=30,
            )
            assert answer.status_code == 200
            received = receiver.wait_until(stages_arrived, "the request's spans", timeout=20)

    spans = {r.span.name: r for r in received if r.span.trace_id.hex() == TRACE_ID}
    root = spans["POST /v2/models/{name}/infer"].span
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert root.parent_span_id.hex() == PARENT_SPAN_ID
    assert spans[root.name].resource["service.name"] == "shipyard"
    root_attributes = attributes(root)
    assert root_attributes["shipyard.request_id"] == answer.headers["x-request-id"]
    assert root_attributes["shipyard.model"] == "doubler"
    assert root_attributes["http.response.status_code"] == 200
    for name in ("queue", "predict"):
        child = spans[name].span
        assert child.parent_span_id == root.span_id, name
        assert root.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    assert spans["queue"].span.end_time_unix_nano <= spans["predict"].span.start_time_unix_nano
