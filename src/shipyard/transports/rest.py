"""REST transport of the data plane: Open Inference Protocol V2 and MLflow scoring.

Handlers translate only: bytes in -> InferRequest -> DataPlane -> bytes out. The
inference POSTs are answered by the front door (front_door.py) without the web
framework; the read-only endpoints are FastAPI routes built over the same data
plane, and the OpenAPI document lists both.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry

from shipyard.errors import InvalidInput, NotFound
from shipyard.monitoring.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shipyard.monitoring.metrics import exposition
from shipyard.registry.records import ModelVersion
from shipyard.security.gate import caller_models
from shipyard.serving.dataplane import SERVER_METADATA, DataPlane
from shipyard.serving.types import PIN_METADATA, InferRequest, RequestHints
from shipyard.transports import codec, mlflow_protocol
from shipyard.transports.http import Answer

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
    body_timeout: float | None = None
    """Longest pause between two chunks of a request body, in seconds (408 after)."""


BodyReader = Callable[[], Awaitable[bytes]]
VERSION_HEADER = "x-shipyard-model-version"
"""Which version answered (or failed): on every inference answer that reached one."""


def _stamp_decoded(hints: RequestHints) -> None:
    if hints.context is not None:
        hints.context.decoded = time.perf_counter()


async def v2_infer(
    dataplane: DataPlane,
    limits: RestLimits,
    name: str,
    version: str | None,
    headers: Mapping[str, str],
    read_body: BodyReader,
    hints: RequestHints,
) -> Answer:
    """POST /v2/models/{name}[/versions/{version}]/infer. `name` may be a deployment,
    which then picks the version."""
    decoded: list[InferRequest] = []

    async def decode(_: ModelVersion) -> InferRequest:
        body = await read_body()
        header_length = codec.header_length(headers.get(codec.HEADER_LENGTH))
        request = codec.decode_request(body, header_length, limits.max_tensor_elements)
        _stamp_decoded(hints)
        decoded.append(request)
        return request

    response = await dataplane.infer(name, version, decode, hints)
    payload, json_length = codec.encode_response(response, decoded[0])
    answer_headers = {
        VERSION_HEADER: f"{response.model_name}:{response.model_version}",
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
    deployment: str | None,
    hints: RequestHints,
) -> Answer:
    """POST /invocations (the default model) or /deployments/{name}/invocations."""
    name = deployment or limits.default_model
    if name is None:
        raise NotFound(
            "/invocations needs a default model: start with `shipyard serve MODEL`, "
            "or call /v2/models/{name}/infer"
        )

    async def decode(record: ModelVersion) -> InferRequest:
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
        request = mlflow_protocol.to_request(tensors, record.signature)
        _stamp_decoded(hints)
        return request

    response = await dataplane.infer(
        name, None, decode, hints, only_deployment=deployment is not None
    )
    return Answer(
        mlflow_protocol.encode_predictions(response.outputs),
        "application/json",
        {VERSION_HEADER: f"{response.model_name}:{response.model_version}"},
    )


INFERENCE: dict[str, dict[str, Any]] = {
    "/v2/models/{name}/infer": _V2_BODY,
    "/v2/models/{name}/versions/{version}/infer": _V2_BODY,
    "/invocations": _MLFLOW_BODY,
    "/deployments/{deployment}/invocations": _MLFLOW_BODY,
}
"""The POST endpoints the front door answers, with their OpenAPI request bodies."""


def document_inference(app: FastAPI) -> None:
    """Add the front door's endpoints to the app's OpenAPI document (FastAPI never sees
    them, so it cannot describe them itself)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # FastAPI keeps it as app.openapi_schema: added to once
        for template, body in INFERENCE.items():
            params = [part[1:-1] for part in template.split("/") if part.startswith("{")]
            operation = "infer" + "".join(c if c.isalnum() else "_" for c in template)
            schema["paths"].setdefault(template, {})["post"] = {
                "tags": ["inference"],
                "summary": f"Infer: {template}",
                "operationId": operation,
                "parameters": [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ],
                **body,
                "responses": {"200": {"description": "The model's outputs"}},
            }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _metadata(record: ModelVersion) -> dict[str, Any]:
    signature = record.signature
    return {
        "name": record.model,
        "versions": [str(record.version)],
        "platform": record.flavor,
        "inputs": [s.model_dump() for s in signature.inputs] if signature else [],
        "outputs": [s.model_dump() for s in signature.outputs] if signature else [],
    }


VersionHeader = Annotated[
    str | None,
    Header(
        alias=PIN_METADATA,
        description="The version (number or alias) to load or unload; default: what the "
        "name serves now.",
    ),
]


def inference_routes(dataplane: DataPlane, metrics: CollectorRegistry) -> APIRouter:
    """The data plane's read-only REST endpoints, over one data plane."""
    router = APIRouter(tags=["inference"])

    @router.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": SERVER_METADATA.name,
            "version": SERVER_METADATA.version,
            "extensions": list(SERVER_METADATA.extensions),
        }

    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        # Public: says whether this replica takes traffic, never which models it holds.
        is_ready = dataplane.server_ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def model_ready(name: str, version: str | None) -> Response:
        record, is_ready = await dataplane.model_ready(name, version, models=caller_models())
        return JSONResponse(
            {"name": record.model, "version": str(record.version), "ready": is_ready},
            status_code=200 if is_ready else 503,
        )

    @router.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(await dataplane.model_metadata(name, None, models=caller_models()))

    @router.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return _metadata(await dataplane.model_metadata(name, version, models=caller_models()))

    @router.get("/v2/models/{name}/ready")
    async def name_ready(name: str) -> Response:
        return await model_ready(name, None)

    @router.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> Response:
        return await model_ready(name, version)

    # ---- model repository extension -------------------------------------------

    @router.post("/v2/repository/index")
    async def repository_index() -> list[dict[str, str]]:
        return [
            {
                "name": entry.key.model,
                "version": str(entry.key.version),
                "state": entry.state,
                "reason": entry.reason,
            }
            for entry in dataplane.repository_index()
        ]

    @router.post("/v2/repository/models/{name}/load")
    async def repository_load(name: str, version: VersionHeader = None) -> dict[str, str]:
        key = await dataplane.load(name, version)
        return {"name": key.model, "version": str(key.version), "state": "READY"}

    @router.post("/v2/repository/models/{name}/unload")
    async def repository_unload(name: str, version: VersionHeader = None) -> dict[str, str]:
        key = await dataplane.unload(name, version)
        return {"name": key.model, "version": str(key.version), "state": "UNLOADED"}

    # ---- metrics ----------------------------------------------------------------

    @router.get("/metrics", tags=["monitoring"])
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: requests, latency by stage, queues, batches, cache,
        drift, cost."""
        return Response(exposition(metrics), media_type=METRICS_CONTENT_TYPE)

    # ---- MLflow scoring protocol ------------------------------------------------

    @router.get("/ping")
    @router.get("/health")
    async def ping() -> Response:
        return Response("\n", media_type="application/json")

    @router.get("/version")
    async def version() -> Response:
        return Response(SERVER_METADATA.version, media_type="text/plain")

    return router
