"""The only place protobuf messages meet Shipyard's internal types."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.serving.types import InferRequest, InferResponse, RequestedOutput, Tensor
from shipyard.signature import NUMPY_DTYPES
from shipyard.transports.codec import array_from_bytes, array_to_bytes, check_shape
from shipyard.transports.grpc_v2 import inference_pb2 as pb

# Which InferTensorContents field holds each datatype (FP16 travels raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_proto(parameters: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
            for key, value in parameters.items()}  # fmt: skip


def _set_parameter(target: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    else:
        target[key].string_param = str(value)


def request_from_proto(message: Any, max_elements: int) -> InferRequest:
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs = []
    seen: set[str] = set()
    for index, tensor in enumerate(message.inputs):
        where = f"input {tensor.name!r}"
        if tensor.name in seen:
            raise InvalidInput(f"{where} appears twice")
        seen.add(tensor.name)
        if tensor.datatype not in NUMPY_DTYPES:
            raise InvalidInput(f"{where}: unknown datatype {tensor.datatype[:20]!r}")
        shape = tuple(int(d) for d in tensor.shape)
        check_shape(shape, where, max_elements)
        if raw:
            array = array_from_bytes(memoryview(raw[index]), tensor.datatype, shape, where)
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            if field is None:
                raise InvalidInput(f"{where}: {tensor.datatype} must be sent in raw_input_contents")
            values = getattr(tensor.contents, field)
            if len(values) != math.prod(shape):
                needed = math.prod(shape)
                raise InvalidInput(
                    f"{where}: {len(values)} values but shape {list(shape)} needs {needed}"
                )
            dtype = NUMPY_DTYPES[tensor.datatype]
            try:
                array = np.array(list(values), dtype=dtype).reshape(shape)
            except OverflowError:
                raise InvalidInput(f"{where}: values do not fit {tensor.datatype}") from None
        inputs.append(
            Tensor(tensor.name, tensor.datatype, array, parameters_from_proto(tensor.parameters))
        )
    parameters = parameters_from_proto(message.parameters)
    outputs = [
        RequestedOutput(o.name, bool(parameters_from_proto(o.parameters).get("binary_data")))
        for o in message.outputs
    ]
    return InferRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=parameters,
        outputs=outputs or None,
        # Answer raw when asked raw: what Triton's and KServe's clients expect.
        binary_output=bool(raw) or bool(parameters.get("binary_data_output")),
    )


def response_to_proto(response: InferResponse, request: InferRequest) -> Any:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or "",
    )
    for key, value in response.parameters.items():
        _set_parameter(message.parameters, key, value)
    # The spec allows raw or typed contents, not a mix; FP16 has no typed field.
    raw = request.binary_output or any(t.datatype == "FP16" for t in response.outputs)
    for tensor in response.outputs:
        output = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            message.raw_output_contents.append(array_to_bytes(tensor.data, tensor.datatype))
            continue
        flat = tensor.data.reshape(-1)
        if tensor.datatype == "BYTES":
            values: Any = [x if isinstance(x, bytes) else str(x).encode() for x in flat]
        else:
            values = flat.tolist()
        getattr(output.contents, _CONTENTS_FIELD[tensor.datatype]).extend(values)
    return message
