"""Control-plane REST routes for a version's Python environment on this replica: what
was recorded at registration, whether this server's packages satisfy it, and building
it ahead of the version's first load (`shipyard env build` against a server)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from shipyard.api.models import version_ref
from shipyard.api.state import control_plane
from shipyard.config import Settings
from shipyard.registry.records import ModelVersion
from shipyard.runtimes.environments import EnvironmentBuilder, EnvironmentState

router = APIRouter(prefix="/api", tags=["environments"])


def environment_document(record: ModelVersion, state: EnvironmentState) -> dict[str, Any]:
    """A version's environment: as recorded, and as this host has it (`shipyard env show`)."""
    recorded = record.environment
    return {
        "model": record.model,
        "version": record.version,
        "recorded": recorded.model_dump(mode="json") if recorded is not None else None,
        "here": state.document(),
    }


def _builder(request: Request) -> EnvironmentBuilder:
    """The data plane's builder (so a build here is the one its workers use)."""
    manager = control_plane(request).serving
    if manager is not None and manager.environments is not None:
        return manager.environments
    return EnvironmentBuilder.from_settings(Settings())


def _requirements(record: ModelVersion) -> list[str]:
    return list(record.environment.requirements) if record.environment is not None else []


@router.get("/models/{name}/versions/{version}/environment")
def show_environment(request: Request, name: str, version: str) -> dict[str, Any]:
    record = control_plane(request).registry.models.get_version(version_ref(name, version))
    return environment_document(record, _builder(request).state(_requirements(record)))


@router.post("/models/{name}/versions/{version}/environment")
async def build_environment(request: Request, name: str, version: str) -> dict[str, Any]:
    """Build the version's environment on this replica now, if it needs one and has none
    (a failed build is retried); 424 with the build log's last lines if it fails."""
    registry = control_plane(request).registry
    record = await run_in_threadpool(registry.models.get_version, version_ref(name, version))
    state = await run_in_threadpool(_builder(request).build, _requirements(record))
    return environment_document(record, state)
