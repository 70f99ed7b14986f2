"""Control-plane REST routes for deployments: apply, read, history, rollback."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shipyard.api.scaling import VersionServing, serving_documents
from shipyard.api.state import control_plane
from shipyard.registry import records
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.service import Registry
from shipyard.routing.rollouts import RolloutService
from shipyard.security.gate import require_scope

router = APIRouter(prefix="/api", tags=["deployments"])


class RollbackTarget(BaseModel):
    revision: int


class DeploymentStatus(records.DeploymentRevision):
    """The live revision, and how this server serves the deployment's model."""

    serving: list[VersionServing] = Field(
        default_factory=list,
        description="Each version of the model this server has loaded (or scaled to zero).",
    )


def _registry(request: Request) -> Registry:
    return control_plane(request).registry


def _within_scope(*models: str) -> None:
    """A key limited to some models changes only deployments of those models."""
    require_scope(*models, action="deploy")


def _deployed_model(registry: Registry, name: str) -> str:
    return registry.deployments.get(name).manifest.model


@router.get("/deployments")
def list_deployments(request: Request) -> list[records.DeploymentRevision]:
    return _registry(request).deployments.list()


_MANIFEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
    }
}


@router.post("/deployments", openapi_extra=_MANIFEST_BODY)
async def apply_manifest(request: Request, dry_run: bool = False) -> records.ApplyResult:
    """Make the manifest (YAML or JSON body) the deployment's live revision.

    A new revision is made only if the manifest differs from the live one; with
    `dry_run=true` nothing changes and the answer holds the diff.
    """
    text = (await request.body()).decode("utf-8", "replace")
    manifest = parse_manifest(text, "request body")
    registry = _registry(request)
    live = await run_in_threadpool(registry.deployments.find, manifest.name)
    _within_scope(manifest.model, *([live.manifest.model] if live is not None else []))
    apply = registry.deployments.apply
    return await run_in_threadpool(apply, manifest, dry_run)


@router.get("/deployments/{name}")
async def get_deployment(request: Request, name: str) -> DeploymentStatus:
    live = await run_in_threadpool(_registry(request).deployments.get, name)
    serving = serving_documents(request, live.manifest.model)
    return DeploymentStatus(**dict(live), serving=serving)


@router.get("/deployments/{name}/history")
def deployment_history(request: Request, name: str) -> list[records.DeploymentRevision]:
    return _registry(request).deployments.history(name)


@router.post("/deployments/{name}/rollback")
def rollback_deployment(
    request: Request, name: str, target: RollbackTarget
) -> records.DeploymentRevision:
    """Make an earlier revision's manifest live again, as a new revision."""
    registry = _registry(request)
    earlier = registry.deployments.revision(name, target.revision).manifest.model
    _within_scope(_deployed_model(registry, name), earlier)
    return registry.deployments.rollback(name, target.revision)


class RolloutRequest(BaseModel):
    to: int = Field(description="The candidate version.")
    steps: list[int] | None = Field(default=None, description="Candidate % per step.")
    bake_seconds: float | None = Field(default=None, ge=0)
    min_requests: int | None = Field(default=None, ge=1)
    gates: dict[str, float] | None = None
    webhook: str | None = None


@router.post("/deployments/{name}/rollout", status_code=201)
def start_rollout(request: Request, name: str, body: RolloutRequest) -> records.Rollout:
    """Start moving the deployment to `to`; the server's controller takes it from here."""
    _within_scope(_deployed_model(_registry(request), name))
    return RolloutService(_registry(request)).start(
        name, body.to, body.steps, body.bake_seconds, body.min_requests, body.gates, body.webhook
    )


@router.get("/deployments/{name}/rollout")
def rollout_status(request: Request, name: str) -> records.Rollout:
    """The deployment's latest rollout, finished or not."""
    return _registry(request).rollouts.latest(name)


@router.post("/deployments/{name}/rollout/{action}")
def steer_rollout(request: Request, name: str, action: str) -> records.Rollout:
    """`promote`, `pause`, `resume` or `abort` the rollout in progress."""
    _within_scope(_deployed_model(_registry(request), name))
    return RolloutService(_registry(request)).act(name, action)
