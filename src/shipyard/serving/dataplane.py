"""One data plane under every transport: resolve, validate, predict, shape the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shipyard.errors import InvalidInput, ModelNotReady, ShipyardError
from shipyard.registry.records import ModelVersion
from shipyard.runtimes.base import Tensors
from shipyard.serving.cache import ResultCache, cache_key
from shipyard.serving.manager import LoadedModel, ModelManager
from shipyard.serving.types import InferRequest, InferResponse, RequestContext, Tensor
from shipyard.serving.validation import conform
from shipyard.signature import datatype_from_numpy

if TYPE_CHECKING:  # routing sits above the data plane; only its types are named here
    from shipyard.routing.deployments import DeploymentRouter, LiveRevision, RequestHints

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 600.0


def request_timeout(parameters: dict[str, Any], default: float) -> float:
    """The per-request deadline: `parameters.timeout` in seconds, else the server default."""
    value = parameters.get("timeout")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput("parameters.timeout must be a positive number of seconds")
    return min(float(value), MAX_TIMEOUT_SECONDS)


class PredictionSink(Protocol):
    """Where answered requests go to be sampled into the prediction log (monitoring)."""

    def offer(self, context: RequestContext, inputs: Tensors, outputs: Tensors) -> None:
        """Take the request or not (sampling); never blocks, never raises."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a request addresses, resolved once per request (see DataPlane.describe)."""

    name: str
    version: str | None
    """The model version to answer with; None for a deployment, which picks per request."""
    record: ModelVersion
    """That version's record, or a deployment's main arm: whose signature inputs follow."""
    deployment: LiveRevision | None


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache: ResultCache | None = None,
        router: DeploymentRouter | None = None,
        predictions: PredictionSink | None = None,
    ) -> None:
        self.manager = manager
        self.timeout = timeout
        self.cache = cache
        self.router = router
        self.predictions = predictions

    async def describe(
        self, name: str, version: str | None, context: RequestContext | None = None
    ) -> Target:
        """What a name addresses: a deployment (described by its main arm) or a model
        version. NotFound if neither. Cheap: both lookups are served from memory.

        With a context, the request is labelled with what it addressed from here on,
        so a request refused later (a body that will not decode) still counts there."""
        if version is None and self.router is not None:
            live = await self.router.live(name)
            if live is not None:
                record = await self.manager.resolve(live.manifest.model, live.main_version)
                if context is not None:
                    context.deployment, context.model = name, record.model
                return Target(name, None, record, live)
        record = await self.manager.resolve(name, version)
        if context is not None:
            context.model, context.version = record.model, str(record.version)
        return Target(name, str(record.version), record, None)

    def is_ready(self, target: Target) -> bool:
        """Loaded and warm. A deployment's live revision exists only once all its arms are."""
        if target.deployment is not None:
            return True
        loaded = self.manager.models.get(f"{target.record.model}:{target.record.version}")
        return loaded is not None and loaded.state == "ready"

    async def infer(
        self, target: Target, request: InferRequest, hints: RequestHints | None = None
    ) -> InferResponse:
        """Answer a request to a model version, or to a deployment (which picks the version)."""
        live = target.deployment
        context = hints.context if hints is not None else None
        if live is None or self.router is None:
            loaded, inputs, result, cached, wanted = await self._predict(
                target.record.model, target.version, request, context
            )
            self._observed(context, loaded, inputs, result, cached)
            return self._response(loaded, result, cached, wanted, request)
        model = live.manifest.model
        pinned = hints.pinned_version if hints is not None else None
        chosen = pinned or live.choose(self.router.sticky_key(live, request, hints))
        if context is not None:
            context.version = chosen  # describe() labelled the deployment and model
        started = time.perf_counter()
        try:
            loaded, inputs, result, cached, wanted = await self._predict(
                model, chosen, request, context
            )
        except ShipyardError as exc:
            if exc.status >= 500:  # the version failed, not the caller: gates count it
                self.router.record(target.name, chosen, time.perf_counter() - started, None)
            raise
        self.router.record(target.name, chosen, time.perf_counter() - started, result)
        self._observed(context, loaded, inputs, result, cached)
        if live.shadow_version is not None or len(live.arms) > 1:

            async def answer_with(other_version: str) -> Tensors:
                return (await self._predict(model, other_version, request))[2]

            self.router.shadow(live, answer_with, result)
            self.router.compare(target.name, live, chosen, answer_with, result)
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
        context.version = str(loaded.record.version)  # an alias resolved to its number
        context.cached = cached
        first = next(iter(inputs.values()), None)
        context.rows = int(first.shape[0]) if first is not None and first.ndim else 1
        if self.predictions is not None:
            self.predictions.offer(context, inputs, result)

    async def _predict(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        context: RequestContext | None = None,
    ) -> tuple[LoadedModel, Tensors, Tensors, bool, list[str] | None]:
        timeout = request_timeout(request.parameters, self.timeout)
        loaded = await self.manager.get_ready(name, version, timeout)
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
            result = await pool.predict(inputs, wanted, timeout, context)
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
            Tensor(out_name, datatype_from_numpy(array.dtype), array)
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
