"""Every runtime served by a real `shipyard serve` on 127.0.0.1, called over V2 REST JSON,
V2 REST binary and MLflow /invocations; answers equal the in-process predict."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests import fixtures
from tests.server import RunningServer, running_shipyard

ROWS, _ = fixtures.training_data(rows=5, seed=11)
COLUMNS = {name: ROWS[:, i] for i, name in enumerate(fixtures.FEATURES)}


@dataclass
class Case:
    """A model file, the inputs to send, and what the library itself predicts."""

    path: Path
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    columnar: bool
    requested: list[str] | None = None
    """Outputs to ask for by name (None: the model's default answer)."""


def _sklearn(tmp: Path) -> Case:
    import joblib

    path = fixtures.write_sklearn_model(tmp)
    model = joblib.load(path)
    expected = {"predict": model.predict(ROWS), "predict_proba": model.predict_proba(ROWS)}
    return Case(path, {"input-0": ROWS}, expected, False, ["predict", "predict_proba"])


def _skops(tmp: Path) -> Case:
    import skops.io as sio

    path = fixtures.write_skops_model(tmp)
    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    expected = {"predict": model.predict(ROWS), "predict_proba": model.predict_proba(ROWS)}
    return Case(path, {"input-0": ROWS}, expected, False, ["predict", "predict_proba"])


def _xgboost(tmp: Path) -> Case:
    import xgboost

    path = fixtures.write_xgboost_model(tmp, ".ubj")
    booster = xgboost.Booster()
    booster.load_model(str(path))
    predicted = booster.predict(xgboost.DMatrix(ROWS, feature_names=fixtures.FEATURES))
    return Case(path, COLUMNS, {"predict": predicted}, columnar=True)


def _lightgbm(tmp: Path) -> Case:
    import lightgbm

    path = fixtures.write_lightgbm_model(tmp)
    predicted = lightgbm.Booster(model_file=str(path)).predict(ROWS)
    return Case(path, COLUMNS, {"predict": predicted}, columnar=True)


def _onnx(tmp: Path) -> Case:
    import onnxruntime

    path = fixtures.write_onnx_model(tmp)
    rows = ROWS.astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (predicted,) = session.run(None, {"x": rows})
    return Case(path, {"x": rows}, {"y": predicted}, columnar=False)


def _mlflow(tmp: Path) -> Case:
    import mlflow.pyfunc
    import pandas as pd

    path = fixtures.write_mlflow_model(tmp)
    frame = pd.DataFrame(ROWS, columns=fixtures.FEATURES)
    predicted = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(frame))
    return Case(path, COLUMNS, {"output-0": predicted}, columnar=True)


def _python(tmp: Path) -> Case:
    path = fixtures.write_python_model(tmp)
    values = ROWS[:, 0].copy()
    return Case(path, {"values": values}, {"predict": values * 2}, columnar=False)


def _torchscript(tmp: Path) -> Case:
    import torch

    path = fixtures.write_torchscript_model(tmp)
    predicted = torch.jit.load(str(path))(torch.from_numpy(ROWS)).detach().numpy()
    return Case(path, {"input": ROWS}, {"predict": predicted}, columnar=False)


CASES: dict[str, Callable[[Path], Case]] = {
    "sklearn": _sklearn,
    "skops": _skops,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "onnx": _onnx,
    "mlflow": _mlflow,
    "torchscript": _torchscript,
    "python": _python,
}


@pytest.fixture(params=list(CASES), scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Case, RunningServer]]:
    tmp = tmp_path_factory.mktemp(request.param)
    case = CASES[request.param](tmp)
    env = {"SHIPYARD_HOME": str(tmp / "home")}
    with running_shipyard(env, "serve", str(case.path)) as server:
        yield case, server


def _v2_name(case: Case) -> str:
    return case.path.stem


def _datatype(array: np.ndarray) -> str:
    return {"float64": "FP64", "float32": "FP32"}[array.dtype.name]


def _assert_outputs(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Every output given equals the library's own answer (a default answer may be a subset)."""
    assert outputs and set(outputs) <= set(expected)
    for name, got in outputs.items():
        want = expected[name]
        assert got.shape == want.shape, name
        if want.dtype == np.float32 or got.dtype == np.float32:
            np.testing.assert_allclose(got, want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, want)


def test_v2_json(served: tuple[Case, RunningServer]) -> None:
    case, server = served
    body = {
        "id": "req-7",
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": _datatype(a), "data": a.tolist()}
            for n, a in case.inputs.items()
        ],
    }
    if case.requested:
        body["outputs"] = [{"name": name} for name in case.requested]
    response = httpx.post(f"{server.url}/v2/models/{_v2_name(case)}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["id"] == "req-7"
    assert document["model_version"] == "1"
    outputs = {
        o["name"]: np.array(
            o["data"], dtype=np.float32 if o["datatype"] == "FP32" else None
        ).reshape(o["shape"])
        for o in document["outputs"]
    }
    _assert_outputs(outputs, case.expected)


def test_v2_binary(served: tuple[Case, RunningServer]) -> None:
    case, server = served
    head = orjson.dumps(
        {
            "inputs": [
                {"name": n, "shape": list(a.shape), "datatype": _datatype(a),
                 "parameters": {"binary_data_size": a.nbytes}}
                for n, a in case.inputs.items()
            ],
            "parameters": {"binary_data_output": True},
            **({"outputs": [{"name": n} for n in case.requested]} if case.requested else {}),
        }
    )  # fmt: skip
    payload = head + b"".join(np.ascontiguousarray(a).tobytes() for a in case.inputs.values())
    response = httpx.post(
        f"{server.url}/v2/models/{_v2_name(case)}/versions/1/infer",
        content=payload,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    document = orjson.loads(response.content[:length])
    offset = length
    outputs = {}
    dtypes = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}
    for output in document["outputs"]:
        size = output["parameters"]["binary_data_size"]
        chunk = response.content[offset : offset + size]
        outputs[output["name"]] = np.frombuffer(chunk, dtypes[output["datatype"]]).reshape(
            output["shape"]
        )
        offset += size
    _assert_outputs(outputs, case.expected)


def test_mlflow_invocations(served: tuple[Case, RunningServer]) -> None:
    case, server = served
    body: dict[str, Any]
    if case.columnar:
        body = {"dataframe_split": {"columns": list(case.inputs), "data": ROWS.tolist()}}
    else:
        (array,) = case.inputs.values()
        body = {"instances": array.tolist()}
    response = httpx.post(f"{server.url}/invocations", json=body, timeout=30)
    assert response.status_code == 200, response.text
    expected = case.expected.get("predict")
    if expected is None:
        (expected,) = case.expected.values()
    np.testing.assert_allclose(np.array(response.json()["predictions"]), expected, rtol=1e-6)


def test_metadata_and_readiness(served: tuple[Case, RunningServer]) -> None:
    case, server = served
    name = _v2_name(case)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/{name}/ready").status_code == 200
    metadata = httpx.get(f"{server.url}/v2/models/{name}").json()
    assert metadata["name"] == name
    assert metadata["versions"] == ["1"]
    assert httpx.get(f"{server.url}/v2/models/ghost").status_code == 404


TRITON_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton

target, model, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = triton.InferenceServerClient(url=target)
assert client.is_server_live() and client.is_model_ready(model)
tensors = []
for name, (datatype, values) in inputs.items():
    array = np.array(values, dtype={"FP64": np.float64, "FP32": np.float32}[datatype])
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    tensors.append(tensor)
result = client.infer(model, tensors, model_version="1", request_id="g-1")
response = result.get_response()
print(json.dumps({
    "id": response.id,
    "versions": list(client.get_model_metadata(model).versions),
    "outputs": {o.name: [o.datatype, result.as_numpy(o.name).tolist()] for o in response.outputs},
}))
"""


def test_grpc_with_a_third_party_client(served: tuple[Case, RunningServer]) -> None:
    """tritonclient speaks the Open Inference Protocol over gRPC; it must work unchanged.

    It runs in its own process: its generated protobuf module registers the same
    `inference.*` message names as ours, and one process cannot hold both.
    """
    case, server = served
    assert server.grpc_target is not None
    inputs = {n: [_datatype(a), a.tolist()] for n, a in case.inputs.items()}
    result = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, server.grpc_target, _v2_name(case),
         json.dumps(inputs)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["id"] == "g-1"
    assert answer["versions"] == ["1"]
    outputs = {
        name: np.array(values, dtype=np.float32 if datatype == "FP32" else None)
        for name, (datatype, values) in answer["outputs"].items()
    }
    _assert_outputs(outputs, case.expected)


def test_grpc_typed_contents(served: tuple[Case, RunningServer]) -> None:
    """Our own stubs, sending typed contents (not raw bytes), get typed contents back."""
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    case, server = served
    assert server.grpc_target is not None
    request = pb.ModelInferRequest(model_name=_v2_name(case))
    for output_name in case.requested or []:
        request.outputs.add(name=output_name)
    for name, array in case.inputs.items():
        tensor = request.inputs.add(name=name, datatype=_datatype(array), shape=array.shape)
        field = "fp32_contents" if array.dtype == np.float32 else "fp64_contents"
        getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        outputs = {}
        for output in response.outputs:
            field = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents"}
            values = getattr(output.contents, field[output.datatype])
            dtype = np.float32 if output.datatype == "FP32" else None
            outputs[output.name] = np.array(values, dtype=dtype).reshape(tuple(output.shape))
        _assert_outputs(outputs, case.expected)
        with pytest.raises(grpc.RpcError) as missing:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name="ghost"), timeout=10
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
