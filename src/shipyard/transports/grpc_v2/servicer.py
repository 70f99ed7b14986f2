"""gRPC transport of the data plane: `inference.GRPCInferenceService` on grpc.aio."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shipyard.errors import ShipyardError
from shipyard.monitoring.requests import RequestObserver
from shipyard.registry.audit import Actor, acting_as
from shipyard.registry.records import ModelVersion
from shipyard.security.gate import Gatekeeper, caller_models, calling_as, current_caller
from shipyard.security.policy import GRPC_RULES, LOAD_ON_DEMAND, PIN_VERSION, allows
from shipyard.serving.dataplane import SERVER_METADATA, DataPlane
from shipyard.serving.types import PIN_METADATA, InferRequest, RequestContext, RequestHints
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from shipyard.transports.grpc_v2.converters import request_from_proto, response_to_proto

log = logging.getLogger("shipyard.grpc")

# The one table from Shipyard's HTTP statuses to gRPC codes.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {code: status for status, code in STATUS_CODES.items()}
GRPC_TO_HTTP[grpc.StatusCode.RESOURCE_EXHAUSTED] = 429
GRPC_TO_HTTP[grpc.StatusCode.INTERNAL] = 500

Reply = TypeVar("Reply")
_RULE_OF = {"_model_infer": "ModelInfer"}
"""Inner methods that carry an RPC's work, and the RPC whose access rule they follow."""


def _translate_errors(
    method: Callable[..., Awaitable[Reply]],
) -> Callable[..., Awaitable[Reply]]:
    rule = _RULE_OF.get(method.__name__, method.__name__)
    permission = GRPC_RULES[rule]  # a method without a rule fails at import

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any, *extra: Any) -> Reply:
        try:
            gate: Gatekeeper | None = self.gate
            if gate is None:
                return await method(self, request, context, *extra)
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            model = getattr(request, "model_name", None) or getattr(request, "name", None)
            source = context.peer() or ""
            needed = permission
            if rule in ("ModelInfer", "ModelMetadata", "ModelReady"):
                model = None  # scoped by the data plane on what the name resolves to
            if rule == "ModelInfer" and PIN_METADATA in metadata:
                needed = PIN_VERSION  # testing a version behind a deployment's back
            principal = await gate.check(needed, metadata.get("authorization"), model, source)
            with acting_as(Actor(principal.name, principal.role, source)), calling_as(principal):
                return await method(self, request, context, *extra)
        except ShipyardError as exc:
            code = STATUS_CODES.get(int(exc.status), grpc.StatusCode.INTERNAL)
            await context.abort(code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        dataplane: DataPlane,
        max_elements: int,
        gate: Gatekeeper | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.gate = gate
        self.observer = observer
        self.max_elements = max_elements

    @_translate_errors
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_translate_errors
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    @_translate_errors
    async def ModelReady(self, request: Any, context: Any) -> Any:
        _, ready = await self.dataplane.model_ready(
            request.name, request.version or None, models=caller_models()
        )
        return pb.ModelReadyResponse(ready=ready)

    @_translate_errors
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_METADATA.name,
            version=SERVER_METADATA.version,
            extensions=list(SERVER_METADATA.extensions),
        )

    @_translate_errors
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        record = await self.dataplane.model_metadata(
            request.name, request.version or None, models=caller_models()
        )
        signature = record.signature
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=record.model,
            versions=[str(record.version)],
            platform=record.flavor,
            inputs=[tensors(name=s.name, datatype=s.datatype, shape=s.shape)
                    for s in (signature.inputs if signature else [])],
            outputs=[tensors(name=s.name, datatype=s.datatype, shape=s.shape)
                     for s in (signature.outputs if signature else [])],
        )  # fmt: skip

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """Inference, observed like REST: a request id (echoed in the initial metadata),
        metrics, the access log and trace spans."""
        metadata = dict(context.invocation_metadata() or ())
        if self.observer is None:
            return await self._model_infer(request, context, metadata)
        observed = self.observer.start(
            "inference.GRPCInferenceService/ModelInfer",
            "grpc",
            metadata.get("x-request-id"),
            metadata.get("traceparent"),
        )
        await context.send_initial_metadata((("x-request-id", observed.request_id),))
        try:
            return await self._model_infer(request, context, metadata, observed)
        except grpc.aio.AbortError:
            code = context.code()
            observed.status = GRPC_TO_HTTP.get(code, 500) if code is not None else 500
            observed.error = context.details() or None
            raise
        finally:
            self.observer.finish(observed)

    @_translate_errors
    async def _model_infer(
        self,
        request: Any,
        context: Any,
        metadata: dict[str, str],
        observed: RequestContext | None = None,
    ) -> Any:
        decoded: list[InferRequest] = []

        async def decode(_: ModelVersion) -> InferRequest:
            infer_request = request_from_proto(request, self.max_elements)
            if observed is not None:
                observed.decoded = time.perf_counter()
            decoded.append(infer_request)
            return infer_request

        caller = current_caller()  # None: no gate, as in tests of the transport alone
        may_deploy = caller is None or allows(caller.role, LOAD_ON_DEMAND)
        hints = RequestHints(
            metadata.get(PIN_METADATA), metadata.get, observed, caller_models(), may_deploy
        )
        response = await self.dataplane.infer(
            request.model_name, request.model_version or None, decode, hints
        )
        return response_to_proto(response, decoded[0])

    @_translate_errors
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=entry.key.model, version=str(entry.key.version),
                      state=entry.state, reason=entry.reason)
                for entry in self.dataplane.repository_index()
                if not request.ready or entry.state == "READY"
            ]
        )  # fmt: skip

    @_translate_errors
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Loads what the name serves, or the version named by `x-shipyard-version`."""
        await self.dataplane.load(request.model_name, _version_metadata(context))
        return pb.RepositoryModelLoadResponse()

    @_translate_errors
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.dataplane.unload(request.model_name, _version_metadata(context))
        return pb.RepositoryModelUnloadResponse()


def _version_metadata(context: Any) -> str | None:
    """The version a repository call names in its metadata (the proto has no field)."""
    value = dict(context.invocation_metadata() or ()).get(PIN_METADATA)
    return str(value) if value else None


async def start_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    max_message_bytes: int,
    max_elements: int,
    gate: Gatekeeper | None = None,
    tls: tuple[bytes, bytes] | None = None,
    observer: RequestObserver | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on host:port (0 = any free port); returns the server and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would
            # silently take a share of the calls (issue 22). A busy port must fail instead.
            ("grpc.so_reuseport", 0),
        ]
    )
    from grpc_reflection.v1alpha import reflection

    service_name = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    reflection.enable_server_reflection([service_name, reflection.SERVICE_NAME], server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        InferenceServicer(dataplane, max_elements, gate, observer), server
    )
    if tls is not None:  # (certificate chain, private key), PEM
        credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:  # older grpcio answers 0 where newer ones raise
        raise RuntimeError(f"Failed to bind to address {host}:{port}")
    await server.start()
    return server, bound
