"""ONNX graphs: a safe format (no code runs on load), self-describing inputs and outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import MissingExtra
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors
from shipyard.signature import Datatype, Signature, TensorSpec

# onnx.TensorProto element types -> V2 datatypes.
_ELEMENT_TYPES: dict[int, Datatype] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


def _spec(value_info: Any) -> TensorSpec:
    tensor = value_info.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
    return TensorSpec(
        name=value_info.name,
        datatype=_ELEMENT_TYPES.get(tensor.elem_type, "BYTES"),
        shape=shape,
    )


class OnnxRuntime:
    """onnxruntime on the CPU (a GPU provider is used when the installed build offers one)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_types = {i.name: i.type for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        wanted = [n for n in self.output_names if outputs is None or n in outputs]
        feed = {
            name: array.astype(_ORT_TYPES.get(self.input_types.get(name, ""), array.dtype))
            for name, array in inputs.items()
        }
        return dict(zip(wanted, self.session.run(wanted, feed), strict=True))


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


class OnnxFlavor:
    name = "onnx"
    extra = "onnx"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_file() or path.suffix.lower() != ".onnx":
            raise NotThisFlavor("not a .onnx file")
        try:
            import onnx
        except ImportError:
            raise MissingExtra("onnx", self.extra) from None
        try:
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(model)
        except Exception as exc:  # protobuf decode and checker errors vary by version
            raise NotThisFlavor(f"not a valid ONNX model: {exc}") from None
        initializers = {init.name for init in model.graph.initializer}
        return Inspection(
            flavor=self.name,
            signature=Signature(
                inputs=[_spec(i) for i in model.graph.input if i.name not in initializers],
                outputs=[_spec(o) for o in model.graph.output],
            ),
            details={
                "ir_version": model.ir_version,
                "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
                "producer_name": model.producer_name,
            },
        )

    def load(self, spec: LoadSpec) -> OnnxRuntime:
        try:
            import onnxruntime
        except ImportError:
            raise MissingExtra("onnxruntime", self.extra) from None
        options = onnxruntime.SessionOptions()
        # One worker process per core is the unit of parallelism; don't oversubscribe.
        options.intra_op_num_threads = 1
        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in onnxruntime.get_available_providers()
        ]
        session = onnxruntime.InferenceSession(str(spec.path), options, providers=providers)
        return OnnxRuntime(session)
