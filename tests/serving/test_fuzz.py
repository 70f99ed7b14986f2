"""Property-based fuzzing of the infer endpoints of a real server: whatever arrives,
the answer is never a 5xx and never a hang, and the server stays healthy."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fixtures
from tests.server import RunningServer, running_shipyard


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # stdlib: it writes integers of any size


DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES", "FP9"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
shapes = st.lists(st.integers(min_value=-2, max_value=1 << 40), max_size=4)
tensors = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("input-0"), st.text(max_size=10)),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.one_of(shapes, st.just([2, 4]), st.just([0, 4]), json_values),
        "data": st.one_of(
            json_values,
            st.lists(st.floats(allow_nan=False, width=64), min_size=8, max_size=8),
            st.lists(st.lists(st.integers(-(1 << 70), 1 << 70), min_size=4, max_size=4)),
        ),
    },
    optional={"parameters": json_values},
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(tensors, max_size=3)},
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    ).map(dumps),
    json_values.map(dumps),
    st.binary(max_size=200),
    st.sampled_from([b'{"inputs": [{"data": NaN}]}', b"\xff\xfe", b"", b"{" * 10_000]),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    model = fixtures.write_sklearn_model(tmp)
    with running_shipyard({"SHIPYARD_HOME": str(tmp / "home")}, "serve", str(model)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, binary_header=st.one_of(st.none(), st.integers(-5, 300).map(str)))
def test_infer_never_5xx(client: httpx.Client, body: bytes, binary_header: str | None) -> None:
    headers = {"Inference-Header-Content-Length": binary_header} if binary_header else {}
    for path in ("/v2/models/model/infer", "/v2/models/model/versions/1/infer"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_invocations_never_5xx(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/invocations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (response.status_code, response.text)


def test_server_is_healthy_after_fuzzing(client: httpx.Client, tmp_path: Path) -> None:
    rows, _ = fixtures.training_data(rows=2)
    tensor = {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": rows.tolist()}
    body = {"inputs": [tensor], "outputs": [{"name": "predict_proba"}]}
    response = client.post("/v2/models/model/infer", json=body)
    assert response.status_code == 200
    assert all(math.isfinite(x) for x in response.json()["outputs"][0]["data"])
