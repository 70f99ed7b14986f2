"""Casts within a type family: applied when every value fits the signature's datatype,
refused with a 400 naming the input, the value and the type when one does not."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.serving.types import Tensor
from shipyard.serving.validation import conform
from shipyard.signature import Datatype, Signature, TensorSpec
from tests.server import running_server

# (sent datatype, numpy dtype, data, signature datatype, what the model gets), by hand.
ACCEPTED = [
    ("INT64", "int64", [3, -128, 127], "INT8", [3, -128, 127]),
    ("INT64", "int64", [0, 255], "UINT8", [0, 255]),
    ("UINT64", "uint64", [2**63 - 1], "INT64", [9223372036854775807]),
    ("INT8", "int8", [-5], "INT64", [-5]),
    ("INT32", "int32", [7], "FP64", [7.0]),
    ("BOOL", "bool", [True, False], "INT8", [1, 0]),
    # Rounding is how float32 models are fed: 0.1 becomes float32's nearest value.
    ("FP64", "float64", [0.1], "FP32", [0.100000001490116119384765625]),
    ("FP64", "float64", [3.4028234663852886e38], "FP32", [3.4028234663852886e38]),  # FP32 max
    ("FP64", "float64", [1e-50], "FP32", [0.0]),  # below FP32's smallest: rounds to zero
    ("FP64", "float64", [65504.0], "FP16", [65504.0]),  # FP16 max
    ("FP64", "float64", [float("inf"), float("-inf")], "FP32", [float("inf"), float("-inf")]),
]

# By hand: (sent datatype, numpy dtype, data, signature datatype, error after "input 'x': ").
REFUSED = [
    ("INT64", "int64", [3, 300], "INT8", "value 300 does not fit INT8 (sent as INT64)"),
    ("INT64", "int64", [-129, 0], "INT8", "value -129 does not fit INT8"),
    ("INT64", "int64", [-1], "UINT8", "value -1 does not fit UINT8"),
    ("INT32", "int32", [70000], "INT16", "value 70000 does not fit INT16"),
    ("UINT64", "uint64", [2**63], "INT64", "value 9223372036854775808 does not fit INT64"),
    ("FP64", "float64", [1.0, 1e40], "FP32", "value 1e+40 does not fit FP32 (sent as FP64)"),
    ("FP64", "float64", [-1e39], "FP32", "value -1e+39 does not fit FP32"),
    ("FP64", "float64", [65520.0], "FP16", "value 65520.0 does not fit FP16"),
    # Across families nothing depends on the values: refused whatever they are.
    ("FP64", "float64", [1.0], "INT8", "expected INT8, got FP64"),
    ("INT64", "int64", [1], "FP32", "expected FP32, got INT64"),
    ("INT64", "int64", [1], "BOOL", "expected BOOL, got INT64"),
    ("INT64", "int64", [1], "BYTES", "expected BYTES, got INT64"),
    ("BYTES", "object", [b"1"], "INT64", "expected INT64, got BYTES"),
]  # fmt: skip
NUMPY_NAMES = {"INT8": "int8", "UINT8": "uint8", "INT64": "int64",
               "FP64": "float64", "FP32": "float32", "FP16": "float16"}  # fmt: skip


def _one(datatype: Datatype) -> Signature:
    return Signature(inputs=[TensorSpec(name="x", datatype=datatype, shape=[-1])])


@pytest.mark.parametrize(("sent", "dtype", "data", "wanted", "expected"), ACCEPTED)
def test_a_cast_that_keeps_every_value_is_applied(
    sent: str, dtype: str, data: list[object], wanted: Datatype, expected: list[float]
) -> None:
    (result,) = conform([Tensor("x", sent, np.array(data, dtype=dtype))], _one(wanted)).values()
    assert result.dtype.name == NUMPY_NAMES[wanted]
    assert result.tolist() == expected


@pytest.mark.parametrize(("sent", "dtype", "data", "wanted", "error"), REFUSED)
def test_a_cast_that_changes_a_value_is_refused(
    sent: str, dtype: str, data: list[object], wanted: Datatype, error: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"input 'x': {error}")):
        conform([Tensor("x", sent, np.array(data, dtype=dtype))], _one(wanted))


def test_nan_stays_nan() -> None:
    (result,) = conform([Tensor("x", "FP64", np.array([np.nan]))], _one("FP32")).values()
    assert result.dtype == np.float32 and np.isnan(result[0])


def _write_onnx(folder: Path) -> Path:
    """y = float(small) + x: an INT8 input and an FP32 input."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["small"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["as_float", "x"], ["y"]),
        ],
        "mixed",
        inputs=[
            helper.make_tensor_value_info("small", TensorProto.INT8, ["batch"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"]),
        ],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mixed.onnx"
    onnx.save(model, str(path))
    return path


def test_rest_refuses_values_that_do_not_fit_and_feeds_those_that_do(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(_write_onnx(tmp_path), RegistrationOptions(name="mixed"))
    finally:
        registry.close()

    def body(small: list[int], x: list[float]) -> dict[str, object]:
        return {"inputs": [
            {"name": "small", "shape": [len(small)], "datatype": "INT64", "data": small},
            {"name": "x", "shape": [len(x)], "datatype": "FP64", "data": x},
        ]}  # fmt: skip

    with (
        running_server({"SHIPYARD_HOME": str(home)}) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        infer = "/v2/models/mixed/infer"
        fits = http.post(infer, json=body([3, -128, 127], [0.5, 0.25, 0.1]))
        assert fits.status_code == 200, fits.text
        (output,) = fits.json()["outputs"]
        # 0.1 reaches the model as float32: 127.1 within float32's precision (~1e-5 here).
        assert output["data"] == pytest.approx([3.5, -127.75, 127.1], abs=1e-5)

        too_big = http.post(infer, json=body([3, 300, 1], [0.5, 0.5, 0.5]))
        assert too_big.status_code == 400
        assert too_big.json() == {
            "error": "input 'small': value 300 does not fit INT8 (sent as INT64); "
            "only casts that keep every value are applied"
        }
        overflow = http.post(infer, json=body([1], [1e40]))
        assert overflow.status_code == 400
        assert overflow.json() == {
            "error": "input 'x': value 1e+40 does not fit FP32 (sent as FP64); "
            "only casts that keep every value are applied"
        }


def test_mlflow_json_numbers_that_do_not_fit_are_refused_not_wrapped() -> None:
    """/invocations casts JSON numbers to the signature first: 300 for an INT8 input used
    to arrive as 44, and 1e40 for an FP32 one as infinity, answered without a word."""
    from shipyard.transports.mlflow_protocol import to_request

    signature = Signature(
        inputs=[TensorSpec(name="small", datatype="INT8", shape=[-1]),
                TensorSpec(name="x", datatype="FP32", shape=[-1])],
        outputs=[],
    )  # fmt: skip
    fits = to_request({"small": np.array([3, -4]), "x": np.array([0.5, 2.0])}, signature)
    conformed = conform(fits.inputs, signature)
    assert conformed["small"].dtype == np.int8 and conformed["small"].tolist() == [3, -4]
    assert conformed["x"].dtype == np.float32
    wrapped = to_request({"small": np.array([3, 300]), "x": np.array([0.5, 2.0])}, signature)
    with pytest.raises(InvalidInput, match=re.escape("value 300 does not fit INT8")):
        conform(wrapped.inputs, signature)
    overflowing = to_request({"small": np.array([1]), "x": np.array([1e40])}, signature)
    with pytest.raises(InvalidInput, match="does not fit FP32"):
        conform(overflowing.inputs, signature)
