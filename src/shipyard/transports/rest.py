"""REST transport of the data plane: Open Inference Protocol V2 and MLflow scoring.

Handlers translate only: bytes in -> InferRequest -> DataPlane -> bytes out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from shipyard import __version__
from shipyard.errors import InvalidInput, NotFound, PayloadTooLarge
from shipyard.registry.records import ModelVersion
from shipyard.routing.deployments import RequestHints
from shipyard.serving.dataplane import DataPlane
from shipyard.transports import codec, mlflow_protocol

router = APIRouter(tags=["inference"])

_V2_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string"},
                                    "parameters": {"type": "object"},
                                    "data": {},
                                },
                            },
                        },
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_MLFLOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@dataclass(frozen=True, slots=True)
class RestLimits:
    """What the REST data plane needs besides the data plane itself."""

    default_model: str | None
    max_body_bytes: int
    max_tensor_elements: int


@dataclass(slots=True)
class Answer:
    body: bytes
    media_type: str
    headers: dict[str, str]


BodyReader = Callable[[], Awaitable[bytes]]


def _dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


def check_declared_length(declared: str | None, limit: int) -> None:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


def _body_reader(request: Request) -> BodyReader:
    async def read() -> bytes:
        limit: int = request.app.state.rest.max_body_bytes
        check_declared_length(request.headers.get("content-length"), limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        return bytes(body)

    return read


async def v2_infer(
    dataplane: DataPlane,
    limits: RestLimits,
    name: str,
    version: str | None,
    headers: Mapping[str, str],
    read_body: BodyReader,
    hints: RequestHints | None = None,
) -> Answer:
    """POST /v2/models/{name}[/versions/{version}]/infer, transport-neutral.

    `name` may be a deployment, which then picks the version.
    """
    context = hints.context if hints is not None else None
    target = await dataplane.describe(name, version, context)  # unknown: 404 before reading
    body = await read_body()
    header = headers.get(codec.HEADER_LENGTH)
    if header is not None and not header.isdigit():
        raise InvalidInput("Inference-Header-Content-Length must be a whole number")
    infer_request = codec.decode_request(
        body, int(header) if header else None, limits.max_tensor_elements
    )
    if context is not None:
        context.decoded = time.perf_counter()
    response = await dataplane.infer(target, infer_request, hints)
    payload, json_length = codec.encode_response(response, infer_request)
    answer_headers = {
        "x-shipyard-model-version": f"{response.model_name}:{response.model_version}",
        "x-shipyard-cache": "hit" if response.cached else "miss",
    }
    if json_length is None:
        return Answer(payload, "application/json", answer_headers)
    answer_headers[codec.HEADER_LENGTH] = str(json_length)
    return Answer(payload, "application/octet-stream", answer_headers)


async def mlflow_invocations(
    dataplane: DataPlane,
    limits: RestLimits,
    headers: Mapping[str, str],
    read_body: BodyReader,
    deployment: str | None = None,
    hints: RequestHints | None = None,
) -> Answer:
    """POST /invocations (the default model) or /deployments/{name}/invocations."""
    name = deployment or limits.default_model
    if name is None:
        raise NotFound(
            "/invocations needs a default model: start with `shipyard serve MODEL`, "
            "or call /v2/models/{name}/infer"
        )
    context = hints.context if hints is not None else None
    target = await dataplane.describe(name, None, context)
    if deployment is not None and target.deployment is None:
        raise NotFound(f"no deployment {deployment!r}")
    record = target.record
    body = await read_body()
    content_type = headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type == "text/csv":
        tensors = mlflow_protocol.parse_csv(body, record.signature)
    elif content_type == "application/json":
        tensors = mlflow_protocol.parse_json(body, record.signature)
    else:
        raise InvalidInput(
            f"unsupported content type {content_type[:60]!r}: use application/json or text/csv"
        )
    infer_request = mlflow_protocol.to_request(tensors, record.signature)
    if context is not None:
        context.decoded = time.perf_counter()
    response = await dataplane.infer(target, infer_request, hints)
    return Answer(
        mlflow_protocol.encode_predictions(response.outputs),
        "application/json",
        {"x-shipyard-model-version": f"{response.model_name}:{response.model_version}"},
    )


def _response(answer: Answer) -> Response:
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)


def _metadata(record: ModelVersion) -> dict[str, Any]:
    signature = record.signature
    return {
        "name": record.model,
        "versions": [str(record.version)],
        "platform": record.flavor,
        "inputs": [s.model_dump() for s in signature.inputs] if signature else [],
        "outputs": [s.model_dump() for s in signature.outputs] if signature else [],
    }


# ---- server -----------------------------------------------------------------


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "shipyard",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    manager = _dataplane(request).manager
    loading = [m.key for m in manager.models.values() if m.state == "loading"]
    if loading:
        return JSONResponse({"ready": False, "loading": loading}, status_code=503)
    return JSONResponse({"ready": True})


# ---- models -----------------------------------------------------------------


async def _model_metadata(request: Request, name: str, version: str | None) -> dict[str, Any]:
    return _metadata((await _dataplane(request).describe(name, version)).record)


async def _model_ready(request: Request, name: str, version: str | None) -> Response:
    dataplane = _dataplane(request)
    target = await dataplane.describe(name, version)
    record, is_ready = target.record, dataplane.is_ready(target)
    return JSONResponse(
        {"name": record.model, "version": str(record.version), "ready": is_ready},
        status_code=200 if is_ready else 503,
    )


async def _infer(request: Request, name: str, version: str | None) -> Response:
    # Normally answered by the front door (front_door.py) before FastAPI routing;
    # these routes document the endpoints and serve apps mounted without it.
    answer = await v2_infer(
        _dataplane(request),
        request.app.state.rest,
        name,
        version,
        request.headers,
        _body_reader(request),
    )
    return _response(answer)


@router.get("/v2/models/{name}")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return await _model_metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}")
async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return await _model_metadata(request, name, version)


@router.get("/v2/models/{name}/ready")
async def model_ready(request: Request, name: str) -> Response:
    return await _model_ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready")
async def version_ready(request: Request, name: str, version: str) -> Response:
    return await _model_ready(request, name, version)


@router.post("/v2/models/{name}/infer", openapi_extra=_V2_BODY)
async def model_infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_V2_BODY)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


# ---- model repository extension -----------------------------------------------


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    manager = _dataplane(request).manager
    return [
        {
            "name": m.record.model,
            "version": str(m.record.version),
            "state": m.state.upper(),
            "reason": m.reason,
        }
        for m in manager.models.values()
    ]


@router.post("/v2/repository/models/{name}/load")
async def repository_load(request: Request, name: str) -> dict[str, str]:
    loaded = await _dataplane(request).manager.load(name)
    return {"name": loaded.record.model, "version": str(loaded.record.version), "state": "READY"}


@router.post("/v2/repository/models/{name}/unload")
async def repository_unload(request: Request, name: str) -> dict[str, str]:
    await _dataplane(request).manager.unload(name)
    return {"name": name, "state": "UNLOADED"}


# ---- MLflow scoring protocol --------------------------------------------------


@router.get("/ping")
@router.get("/health")
async def ping() -> Response:
    return Response("\n", media_type="application/json")


@router.get("/version")
async def version() -> Response:
    return Response(__version__, media_type="text/plain")


@router.post("/invocations", openapi_extra=_MLFLOW_BODY)
async def invocations(request: Request) -> Response:
    answer = await mlflow_invocations(
        _dataplane(request), request.app.state.rest, request.headers, _body_reader(request)
    )
    return _response(answer)


@router.post("/deployments/{deployment}/invocations", openapi_extra=_MLFLOW_BODY)
async def deployment_invocations(request: Request, deployment: str) -> Response:
    answer = await mlflow_invocations(
        _dataplane(request),
        request.app.state.rest,
        request.headers,
        _body_reader(request),
        deployment=deployment,
    )
    return _response(answer)
