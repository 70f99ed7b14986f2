"""Control-plane REST routes for how a version is served here: its scaling bounds and
workers, as one "version serving document" that the deployment routes show too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shipyard.api.state import control_plane
from shipyard.config import ScalingOptions
from shipyard.errors import Conflict
from shipyard.serving.manager import ModelManager, key_of
from shipyard.serving.types import ModelKey, VersionSnapshot

router = APIRouter(prefix="/api", tags=["scaling"])


class WorkerCounts(BaseModel):
    desired: int
    """Workers the autoscaler aims at."""
    ready: int
    starting: int
    """Spawned or taken from the spares, not yet loaded and warm."""
    draining: int
    """Finishing what they hold before they stop."""


class VersionServing(BaseModel):
    """One version as this server serves it: state, scaling bounds, workers, decisions."""

    model: str
    version: int
    state: str
    """loading, ready, failed, unloaded, or idle (scaled to zero: the next request loads it)."""
    min_workers: int
    max_workers: int
    workers: WorkerCounts
    memory_bytes: int
    """Resident memory of its workers now."""
    cold_starts: int
    """Loads a request waited for, since the server started."""
    recent_decisions: list[dict[str, Any]]
    """The last scaling decisions, oldest first (ScalingDecision.document())."""


def serving_document(snapshot: VersionSnapshot) -> VersionServing:
    """The version serving document of one version the manager knows (or of one it does
    not, as an "unloaded" snapshot with its bounds)."""
    pool = snapshot.pool
    return VersionServing(
        model=snapshot.key.model,
        version=snapshot.key.version,
        state=snapshot.state,
        min_workers=snapshot.min_workers,
        max_workers=snapshot.max_workers,
        workers=WorkerCounts(
            desired=pool.desired if pool else 0,
            ready=pool.workers if pool else 0,
            starting=pool.starting if pool else 0,
            draining=pool.draining if pool else 0,
        ),
        memory_bytes=pool.memory_bytes if pool else 0,
        cold_starts=sum(snapshot.cold_starts),
        recent_decisions=[decision.document() for decision in snapshot.recent],
    )


def serving_documents(request: Request, model: str) -> list[VersionServing]:
    """Every version of `model` this server knows, by version ([] without a data plane).
    Call it on the event loop: worker pools are read there."""
    manager = control_plane(request).serving
    if manager is None:
        return []
    known = sorted(manager.snapshot(), key=lambda s: s.key.version)
    return [serving_document(s) for s in known if s.key.model == model]


def _manager(request: Request) -> ModelManager:
    manager = control_plane(request).serving
    if manager is None:
        raise Conflict("scaling needs a running server (`shipyard server`)")
    return manager


def _snapshot(manager: ModelManager, key: ModelKey) -> VersionSnapshot | None:
    return next((s for s in manager.snapshot() if s.key == key), None)


@router.post("/models/{name}/scaling")
@router.post("/models/{name}/versions/{version}/scaling")
async def scale_version(
    request: Request, name: str, options: ScalingOptions, version: str | None = None
) -> VersionServing:
    """Set a version's scaling bounds on this server (without a version: the one the name
    serves, its `production` alias else its latest); fields left out keep what was set
    before (or the model's and the server's settings). The pool moves into them at once.
    With `min_workers` of 1 or more the version is loaded first if it is not, and stays
    loaded. Bounds last until the server stops."""
    # The gate holds a key's model scope on /api/models/{name} routes.
    manager = _manager(request)
    record = await manager.resolve(name, version)
    serving = manager.set_scaling(record, options)
    key = key_of(record)
    audit = control_plane(request).trust.audit
    given = options.model_dump(exclude_none=True)
    await run_in_threadpool(audit.record, "version.scale", str(key), **given)
    if serving.scaling.min_workers >= 1 and not manager.is_loaded(record):
        await manager.load(record.model, str(record.version))
    unloaded = VersionSnapshot(
        key,
        "unloaded",
        min_workers=serving.scaling.min_workers,
        max_workers=serving.scaling.max_workers,
    )
    return serving_document(_snapshot(manager, key) or unloaded)
