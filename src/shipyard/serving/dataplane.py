"""One data plane under every transport: resolve, validate, predict, shape the answer.

The transports call `infer` once per request with a decoder for their wire format:
the name is resolved once (a deployment's live revision, else a model version),
the body is decoded against that version's signature, a deployment picks the arm,
and the chosen version's record goes straight to its workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard import __version__
from shipyard.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ModelRefusedInput,
    NotFound,
    ShipyardError,
)
from shipyard.registry.audit import AuditLog
from shipyard.registry.records import ModelVersion
from shipyard.runtimes.base import Tensors
from shipyard.security.gate import check_scope
from shipyard.serving.cache import ResultCache, cache_key
from shipyard.serving.manager import LoadedModel, ModelManager
from shipyard.serving.types import (
    InferRequest,
    InferResponse,
    ModelKey,
    PredictionSink,
    RequestContext,
    RequestHints,
    Routed,
    Router,
    Tensor,
)
from shipyard.serving.validation import conform
from shipyard.signature import datatype_from_numpy

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The protocol's server metadata, the same over REST and gRPC."""

    name: str = "shipyard"
    version: str = __version__
    extensions: tuple[str, ...] = ("binary_tensor_data", "model_repository")


SERVER_METADATA = ServerMetadata()

Decoder = Callable[[ModelVersion], Awaitable[InferRequest]]
"""Reads and decodes a request's body against the version it addresses (its signature)."""


def request_timeout(parameters: dict[str, Any], default: float) -> float:
    """The per-request deadline: `parameters.timeout` in seconds, else the server default."""
    value = parameters.get("timeout")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput("parameters.timeout must be a positive number of seconds")
    return min(float(value), MAX_TIMEOUT_SECONDS)


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One version the server has loaded, is loading, or failed to load."""

    key: ModelKey
    state: str
    """LOADING, READY, FAILED or UNLOADED (the repository extension's words)."""
    reason: str


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache: ResultCache | None = None,
        router: Router | None = None,
        predictions: PredictionSink | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.manager = manager
        self.timeout = timeout
        self.cache = cache
        self.router = router
        self.predictions = predictions
        self.audit = audit or manager.registry.audit
        """Where loads and unloads are recorded (the actor is the request's)."""

    # ---- the protocol's read-only calls, shared by every transport ---------------

    def server_ready(self) -> bool:
        """Whether the server takes traffic: true once its start-up loads are done.

        The transports answer only after them (server.py awaits the default model before
        it listens), and a load caused later (a request, a deployment, a deployer) never
        makes it false: a load balancer must not pull a serving replica because one more
        version is loading. It names no model, since anyone may ask."""
        return True

    async def model_metadata(
        self, name: str, version: str | None, *, models: frozenset[str] | None
    ) -> ModelVersion:
        """The version a name addresses: a deployment's main arm, or a model version."""
        return (await self._address(name, version, models))[0]

    async def model_ready(
        self, name: str, version: str | None, *, models: frozenset[str] | None
    ) -> tuple[ModelVersion, bool]:
        """What a name addresses and whether it answers now. A deployment's live revision
        exists only once all its arms are loaded, so a deployment found is ready."""
        record, routed = await self._address(name, version, models)
        return record, routed is not None or self.manager.is_ready(record)

    async def _address(
        self,
        name: str,
        version: str | None,
        models: frozenset[str] | None,
        only_deployment: bool = False,
    ) -> tuple[ModelVersion, Routed | None]:
        """What a name addresses, resolved once: a deployment's live revision (described
        by its main arm) or a model version. NotFound if neither; Forbidden if its model is
        outside `models` (the caller's key's scope). Cheap: both lookups are in memory."""
        routed = None
        if version is None and self.router is not None:
            routed = await self.router.route(name)
        if routed is not None:
            record = routed.main
        elif only_deployment:
            raise NotFound(f"no deployment {name!r}")
        else:
            record = await self.manager.resolve(name, version)
        check_scope(models, record.model, action="call")
        return record, routed

    def repository_index(self) -> list[RepositoryEntry]:
        return [
            RepositoryEntry(m.key, m.state.upper(), m.reason)
            for m in list(self.manager.models.values())
        ]

    async def load(self, name: str, version: str | None = None) -> ModelKey:
        """Load a version (default: what the name serves now) on purpose, as a deployer
        does through the repository extension: requests may call it from then on."""
        record = await self.manager.resolve(name, version)
        if record.archived:
            raise Conflict(f"version {record.version} of {record.model} is archived: not loaded")
        key = (await self.manager.load(name, str(record.version))).key
        await asyncio.to_thread(self.audit.record, "model.load", str(key))
        return key

    async def unload(self, name: str, version: str | None = None) -> ModelKey:
        """Unload a version (default: what the name serves now); requests may not bring
        it back unless something still deploys it."""
        key = await self.manager.unload(name, version)
        await asyncio.to_thread(self.audit.record, "model.unload", str(key))
        return key

    # ---- inference ------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Decoder,
        hints: RequestHints,
        *,
        only_deployment: bool = False,
    ) -> InferResponse:
        """Answer a request to a model version, or to a deployment (which picks the version).

        An unknown name is refused before `decode` reads the body; so is a model name
        where only a deployment may be named."""
        context = hints.context
        record, routed = await self._address(name, version, hints.models, only_deployment)
        if routed is None:
            if context is not None:
                context.model, context.version = record.model, str(record.version)
            self.manager.refuse_if_full(record)  # before the body is read and decoded
            request = await decode(record)
            try:
                loaded, inputs, result, cached, wanted = await self._predict(
                    record, request, context, deployed=hints.may_deploy
                )
            except ShipyardError as exc:
                self._observed_failure(exc, context, record, request)
                raise
            self._observed(context, loaded, inputs, result, cached)
            return self._response(loaded, result, cached, wanted, request)

        if context is not None:
            context.deployment, context.model = routed.name, record.model
        request = await decode(record)
        if hints.pinned_version is not None:
            chosen = await self.manager.resolve(record.model, hints.pinned_version)
        else:
            chosen = routed.choose(request, hints)
        if context is not None:
            context.version = str(chosen.version)

        async def copy(other: ModelVersion) -> Tensors:  # a shadow or the main arm
            return (await self._predict(other, request, deployed=True))[2]

        started = time.perf_counter()
        try:
            # An arm is deployed; a pinned version loads only for a caller who may deploy.
            deployed = hints.pinned_version is None or hints.may_deploy
            loaded, inputs, result, cached, wanted = await self._predict(
                chosen, request, context, deployed=deployed
            )
        except ShipyardError as exc:
            # The version failed, not the caller, or it refused what the caller sent:
            # gates count both (input every arm refuses raises every arm's rate alike).
            if exc.status >= 500 or isinstance(exc, ModelRefusedInput):
                routed.observe(chosen, time.perf_counter() - started, None, copy)
            self._observed_failure(exc, context, chosen, request)
            raise
        routed.observe(chosen, time.perf_counter() - started, result, copy)
        self._observed(context, loaded, inputs, result, cached)
        return self._response(loaded, result, cached, wanted, request)

    def _observed(
        self,
        context: RequestContext | None,
        loaded: LoadedModel,
        inputs: Tensors,
        result: Tensors,
        cached: bool,
    ) -> None:
        """Note what answered, and offer the exchange to the prediction log."""
        if context is None:
            return
        context.cached = cached
        first = next(iter(inputs.values()), None)
        context.rows = int(first.shape[0]) if first is not None and first.ndim else 1
        if self.predictions is not None:
            self.predictions.offer(context, inputs, result)

    def _observed_failure(
        self,
        exc: ShipyardError,
        context: RequestContext | None,
        record: ModelVersion,
        request: InferRequest,
    ) -> None:
        """Offer a request the version failed on (5xx, or it refused the input) to the
        prediction log, inputs only: drift then sees all a version was sent, not a sample
        biased to what it could answer. A caller's own mistakes (4xx before the model)
        and load shedding are not the version's."""
        if context is None or self.predictions is None:
            return
        shed = exc.status == 503  # overload: never ran; logging it would add load
        if shed or not (exc.status >= 500 or isinstance(exc, ModelRefusedInput)):
            return
        try:
            inputs = conform(request.inputs, record.signature)
        except ShipyardError:
            return
        first = next(iter(inputs.values()), None)
        context.rows = int(first.shape[0]) if first is not None and first.ndim else 1
        self.predictions.offer(context, inputs, {}, failed=True)

    async def _predict(
        self,
        record: ModelVersion,
        request: InferRequest,
        context: RequestContext | None = None,
        *,
        deployed: bool,
    ) -> tuple[LoadedModel, Tensors, Tensors, bool, list[str] | None]:
        stated = request_timeout(request.parameters, self.timeout)
        started = time.perf_counter()
        loaded = await self.manager.get_ready(record, stated, deployed=deployed, context=context)
        # One deadline for the whole request: a cold start's wait comes out of it.
        timeout = stated - (time.perf_counter() - started)
        if timeout <= 0:
            raise DeadlineExceeded(f"{loaded.key} did not answer within {stated:g} s")
        inputs = conform(request.inputs, loaded.record.signature)
        wanted = self._wanted_outputs(loaded, request)
        cache = self.cache if loaded.serving.cache else None
        key = cache_key(loaded.key, inputs, wanted) if cache is not None else None
        result = cache.get(key, loaded.key) if cache is not None and key is not None else None
        cached = result is not None
        if result is None:
            pool = loaded.pool
            if pool is None:  # unloaded between the readiness check and now
                raise ModelNotReady(f"{loaded.key} was just unloaded; retry shortly")
            result = await pool.predict(inputs, wanted, timeout, context, stated)
            if cache is not None and key is not None:
                cache.put(key, result)
        return loaded, inputs, result, cached, wanted

    @staticmethod
    def _response(
        loaded: LoadedModel,
        result: Tensors,
        cached: bool,
        wanted: list[str] | None,
        request: InferRequest,
    ) -> InferResponse:
        outputs = [
            Tensor(out_name, _datatype(array.dtype), array)
            for out_name, array in result.items()
            if wanted is None or out_name in wanted
        ]
        return InferResponse(
            model_name=loaded.record.model,
            model_version=str(loaded.record.version),
            outputs=outputs,
            id=request.id,
            cached=cached,
        )

    @staticmethod
    def _wanted_outputs(loaded: LoadedModel, request: InferRequest) -> list[str] | None:
        if not request.outputs:
            return None
        names = [o.name for o in request.outputs]
        signature = loaded.record.signature
        if signature is not None and signature.outputs:
            known = {spec.name for spec in signature.outputs}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise InvalidInput(
                    f"unknown output {unknown[0]!r}; the model gives {', '.join(sorted(known))}"
                )
        return names


_DATATYPES: dict[np.dtype[Any], str] = {}


def _datatype(dtype: np.dtype[Any]) -> str:
    """datatype_from_numpy, remembered per dtype: ~2 µs a call otherwise, per output."""
    try:
        return _DATATYPES[dtype]
    except KeyError:
        datatype = _DATATYPES[dtype] = datatype_from_numpy(dtype)
        return datatype
