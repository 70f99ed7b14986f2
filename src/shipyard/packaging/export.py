"""Converting a loaded model to ONNX: one function per framework, then one shape for all.

Runs in the throw-away child process of an export (packaging/service.py), never in the
server: the original is loaded there with `runtimes.load`, and the converter libraries
(skl2onnx, onnxmltools, torch.onnx, onnxruntime.quantization) are imported only there.

Every converter answers a graph whose outputs the original's output names are then
given (`predict`, `predict_proba`, ...), and whose inputs are the original signature's
inputs: one matrix, or one column each (concatenated inside the graph), so the exported
version takes the same requests and serves through the onnx runtime (runtimes/onnx.py).
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput, MissingExtra, UnsupportedModel
from shipyard.runtimes.base import Runtime, Tensors, VersionSpec

DEFAULT_OPSET = 17
"""Wide support (onnxruntime 1.14 and later) and every operator the converters need."""
BOOSTER_OPSET = 15
"""The newest onnxmltools (1.16) writes for XGBoost and LightGBM."""
MIN_OPSET = 13
"""Unsqueeze takes its axes as an input from 13 on, as the shaping below writes it."""
QUANTIZE_CHOICES = ("dynamic-int8", "fp16")
_FEATURES = "shipyard_features"
"""The converters' one matrix input, fed from the signature's inputs."""


@dataclass
class Converted:
    """A framework's graph before shaping, and what produced it."""

    model: Any
    """onnx.ModelProto."""
    converter: str
    libraries: list[str]
    """Modules whose versions are recorded with the export."""
    outputs: dict[str, list[str]] = field(default_factory=dict)
    """For each original output, the graph outputs that may answer it, best first."""
    shaped: bool = False
    """The graph already takes the original's inputs by name (torch.onnx)."""


@dataclass
class Exported:
    onnx: bytes
    converter: str
    versions: dict[str, str]
    opset: dict[str, int]


# --- one function per framework ----------------------------------------------------------


def sklearn_to_onnx(runtime: Any, features: int, opset: int | None, inputs: Tensors) -> Converted:
    """skl2onnx; class scores as a matrix (no ZipMap), float32 features."""
    skl2onnx = _need("skl2onnx", "skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier
    from sklearn.pipeline import Pipeline

    estimator = runtime.model
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        model = skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(_FEATURES, FloatTensorType([None, features]))],
            target_opset={"": opset or DEFAULT_OPSET, "ai.onnx.ml": 3},
            options=options,
        )
    except Exception as exc:  # skl2onnx names the estimator it has no converter for
        raise UnsupportedModel(f"skl2onnx cannot convert it: {_first_line(exc)}") from None
    return Converted(
        model,
        "skl2onnx",
        ["skl2onnx", "sklearn"],
        {"predict": ["label", "variable"], "predict_proba": ["probabilities"]},
    )


def xgboost_to_onnx(runtime: Any, features: int, opset: int | None, inputs: Tensors) -> Converted:
    """onnxmltools over the Booster; splits name features f0..fN, so names are dropped."""
    onnxmltools = _need("onnxmltools", "onnxmltools")
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = runtime.booster.copy()
    booster.feature_names = None  # the converter reads splits as f<index>
    try:
        model = onnxmltools.convert_xgboost(
            booster,
            initial_types=[(_FEATURES, FloatTensorType([None, features]))],
            target_opset=opset or BOOSTER_OPSET,
        )
    except Exception as exc:
        raise UnsupportedModel(f"onnxmltools cannot convert it: {_first_line(exc)}") from None
    return Converted(
        model, "onnxmltools", ["onnxmltools", "xgboost"], {"predict": ["probabilities", "variable"]}
    )


def lightgbm_to_onnx(runtime: Any, features: int, opset: int | None, inputs: Tensors) -> Converted:
    onnxmltools = _need("onnxmltools", "onnxmltools")
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        model = onnxmltools.convert_lightgbm(
            runtime.booster,
            initial_types=[(_FEATURES, FloatTensorType([None, features]))],
            target_opset=opset or BOOSTER_OPSET,
            zipmap=False,
        )
    except Exception as exc:
        raise UnsupportedModel(f"onnxmltools cannot convert it: {_first_line(exc)}") from None
    return Converted(
        model,
        "onnxmltools",
        ["onnxmltools", "lightgbm"],
        {"predict": ["probabilities", "variable"]},
    )


def torchscript_to_onnx(
    runtime: Any, features: int, opset: int | None, inputs: Tensors
) -> Converted:
    """torch.onnx's TorchScript exporter (the dynamo one cannot take a ScriptModule),
    traced on the gate's rows with a dynamic batch dimension."""
    torch = runtime.torch
    module = runtime.module.cpu()
    names = list(inputs)
    example = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names)
    with torch.inference_mode():
        answer = module(*example)
    if isinstance(answer, tuple | list):
        outputs = [f"output-{i}" for i in range(len(answer))]
    elif isinstance(answer, torch.Tensor):
        outputs = ["predict"]
    else:
        raise UnsupportedModel(
            "torch.onnx exports tensor or tuple outputs; this model answers a "
            f"{type(answer).__name__}"
        )
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                module, example, buffer, input_names=names, output_names=outputs,
                dynamic_axes={name: {0: "rows"} for name in names + outputs},
                opset_version=opset or DEFAULT_OPSET, dynamo=False,
            )  # fmt: skip
    except Exception as exc:  # an operator without an ONNX counterpart, mostly
        raise UnsupportedModel(f"torch.onnx cannot export it: {_first_line(exc)}") from None
    import onnx

    return Converted(
        onnx.load_from_string(buffer.getvalue()), "torch.onnx", ["torch"],
        {name: [name] for name in outputs}, shaped=True,
    )  # fmt: skip


CONVERTERS: dict[str, Callable[[Any, int, int | None, Tensors], Converted]] = {
    "sklearn": sklearn_to_onnx,
    "skops": sklearn_to_onnx,
    "xgboost": xgboost_to_onnx,
    "lightgbm": lightgbm_to_onnx,
    "torchscript": torchscript_to_onnx,
}


# --- in the child --------------------------------------------------------------------------


def export_here(spec: VersionSpec, inputs: Tensors, options: dict[str, Any]) -> dict[str, Any]:
    """In the child: load the original, answer and time it on `inputs`, convert, shape,
    quantise. JSON-shaped: arrays as .npy text, the graph as base64."""
    from shipyard.packaging.speed import rows_per_second
    from shipyard.runtimes import load
    from shipyard.runtimes.isolated import _encode_array

    runtime = load(spec)
    inputs = _as_module_dtype(runtime, inputs) if spec.flavor == "torchscript" else inputs
    wanted = _original_outputs(spec, runtime)
    original = {n: np.asarray(a) for n, a in runtime.predict(inputs, wanted).items()}
    speed = rows_per_second(runtime, inputs, wanted)
    exported = convert(spec, runtime, inputs, original, options)
    return {
        "onnx": base64.b64encode(exported.onnx).decode("ascii"),
        "original": {name: _encode_array(array) for name, array in original.items()},
        "speed": speed,
        "converter": exported.converter,
        "versions": exported.versions,
        "opset": exported.opset,
    }


def convert(
    spec: VersionSpec, runtime: Runtime, inputs: Tensors, original: Tensors, options: dict[str, Any]
) -> Exported:
    """The original as an ONNX graph taking its inputs and giving its outputs by name."""
    import onnx

    opset = int(options["opset"]) if options.get("opset") else None
    converter = CONVERTERS.get(spec.flavor)
    if converter is None:
        raise UnsupportedModel(
            f"{spec.key} is a {spec.flavor} model; export to ONNX takes "
            f"{', '.join(sorted(CONVERTERS))}"
        )
    features = sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in inputs.values())
    converted = converter(runtime, features, opset, inputs)
    model = converted.model
    if not converted.shaped:
        model = _shape(model, inputs, _output_plan(model, converted.outputs, original))
    onnx.checker.check_model(model)
    quantize = options.get("quantize")
    if quantize:
        model = _quantize(model, str(quantize))
    libraries = [*converted.libraries, "onnx", "onnxruntime"]
    if quantize == "fp16":
        libraries.append("onnxconverter_common")
    versions = {name: _version(name) for name in libraries}
    return Exported(
        onnx=model.SerializeToString(),
        converter=converted.converter,
        versions=versions,
        opset={o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
    )


def _original_outputs(spec: VersionSpec, runtime: Any) -> list[str] | None:
    """The outputs the gate compares: every one the signature lists (a classifier's
    scores too, which it only computes when asked)."""
    if spec.signature is None or not spec.signature.outputs:
        return None
    return [o.name for o in spec.signature.outputs]


def _as_module_dtype(runtime: Any, inputs: Tensors) -> Tensors:
    """Float inputs as the module's parameters are (tables read as float64; most
    modules are float32)."""
    parameters = list(runtime.module.parameters())
    if not parameters:
        return inputs
    dtype = str(parameters[0].dtype).removeprefix("torch.")
    return {n: a.astype(dtype) if a.dtype.kind == "f" else a for n, a in inputs.items()}


# --- shaping the graph ---------------------------------------------------------------------


@dataclass(frozen=True)
class _OutputStep:
    target: str
    source: str
    how: str
    """as_is, flatten ([N, 1] to [N]) or column_1 (a binary classifier's positive score)."""
    shape: list[int | str]


def _output_plan(
    model: Any, candidates: dict[str, list[str]], original: Tensors
) -> list[_OutputStep]:
    """How each original output is read off the graph, judged by running it once."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString())
    count = len(next(iter(original.values())))
    probe = {_FEATURES: np.zeros((min(count, 2), _width(session)), dtype=np.float32)}
    answers = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, probe), strict=True)
    )
    steps = []
    for target, expected in original.items():
        sources = [s for s in candidates.get(target, []) if s in answers]
        if not sources:
            raise UnsupportedModel(
                f"the converted graph gives nothing for the output {target!r} "
                f"(it gives {', '.join(answers)})"
            )
        source = answers[sources[0]]
        if source.shape[1:] == expected.shape[1:]:
            how = "as_is"
        elif expected.ndim == 1 and source.shape[1:] == (1,):
            how = "flatten"
        elif expected.ndim == 1 and source.shape[1:] == (2,):
            how = "column_1"
        else:
            raise UnsupportedModel(
                f"the converted graph's {sources[0]!r} has shape {list(source.shape[1:])} per "
                f"row where {target!r} has {list(expected.shape[1:])}"
            )
        steps.append(_OutputStep(target, sources[0], how, ["rows", *expected.shape[1:]]))
    return steps


def _width(session: Any) -> int:
    width = session.get_inputs()[0].shape[1]
    if not isinstance(width, int):
        raise UnsupportedModel("the converted graph does not say how many features it takes")
    return width


def _shape(model: Any, inputs: Tensors, steps: list[_OutputStep]) -> Any:
    """Feed the converter's matrix from the signature's inputs; name the outputs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    front, back, constants = [], [], []
    del graph.input[:]
    names = list(inputs)
    if len(names) == 1 and inputs[names[0]].ndim == 2:
        width = inputs[names[0]].shape[1]
        graph.input.append(
            helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["rows", width])
        )
        front.append(helper.make_node("Identity", [names[0]], [_FEATURES]))
    else:
        constants.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "shipyard_axis_1"))
        for name in names:
            graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows"]))
            front.append(
                helper.make_node("Unsqueeze", [name, "shipyard_axis_1"], [f"{name}:column"])
            )
        front.append(
            helper.make_node("Concat", [f"{n}:column" for n in names], [_FEATURES], axis=1)
        )
    constants.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "shipyard_flat"))
    constants.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "shipyard_column_1"))
    outputs = []
    for step in steps:
        if step.how == "flatten":
            back.append(helper.make_node("Reshape", [step.source, "shipyard_flat"], [step.target]))
        elif step.how == "column_1":
            back.append(
                helper.make_node(
                    "Gather", [step.source, "shipyard_column_1"], [step.target], axis=1
                )
            )
        else:
            back.append(helper.make_node("Identity", [step.source], [step.target]))
        outputs.append(helper.make_tensor_value_info(step.target, types[step.source], step.shape))
    _at_least_opset(model, MIN_OPSET)
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    del graph.output[:]
    graph.output.extend(outputs)
    return model


def _at_least_opset(model: Any, version: int) -> None:
    """One import per domain, the plain one at `version` or later: the shaping nodes are
    written for operator set 13; boosters' graphs may import an older one or only
    ai.onnx.ml (their few plain operators read the same at 13), and skl2onnx may list
    the plain domain twice, which the quantiser refuses."""
    from onnx import helper

    versions: dict[str, int] = {"": version}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), int(entry.version))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())


def _quantize(model: Any, how: str) -> Any:
    """Dynamic int8 (weights int8, activations quantised at run time) or float16 inside
    with float32 inputs and outputs kept, so requests stay the same."""
    import onnx

    if how == "dynamic-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        target = Path("quantized.onnx")  # the child's own empty working folder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(model, target, weight_type=QuantType.QInt8)
        return onnx.load(str(target))
    if how == "fp16":
        float16 = _need("onnxconverter_common.float16", "onnxconverter-common")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            halved = float16.convert_float_to_float16(model, keep_io_types=True)
        _check_loads(halved, how)
        return halved
    raise InvalidInput(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {how!r}")


def _check_loads(model: Any, how: str) -> None:
    """onnxconverter-common's float16 pass can leave graphs around ai.onnx.ml operators
    (tree ensembles) with mismatched types: say so here, not when a worker loads it."""
    import onnxruntime

    try:
        onnxruntime.InferenceSession(model.SerializeToString())
    except Exception as exc:  # onnxruntime reports graph errors as its own Fail/InvalidGraph
        raise UnsupportedModel(
            f"the {how} graph does not load in onnxruntime ({_first_line(exc)}); tree "
            "ensembles keep float32 thresholds, so export them without --quantize fp16"
        ) from None


def _need(module: str, package: str) -> Any:
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError:
        raise MissingExtra(package, "export") from None


def _version(module: str) -> str:
    """The module's own version: distributions differ in name (xgboost-cpu)."""
    from importlib import import_module

    try:
        return str(import_module(module).__version__)
    except (ImportError, AttributeError):
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
