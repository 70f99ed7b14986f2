"""Control-plane REST routes for deployments: apply, read, history, rollback."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shipyard.registry import records
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.service import Registry

router = APIRouter(prefix="/api", tags=["deployments"])


class RollbackTarget(BaseModel):
    revision: int


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


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
    apply = _registry(request).deployments.apply
    return await run_in_threadpool(apply, manifest, dry_run)


@router.get("/deployments/{name}")
def get_deployment(request: Request, name: str) -> records.DeploymentRevision:
    return _registry(request).deployments.get(name)


@router.get("/deployments/{name}/history")
def deployment_history(request: Request, name: str) -> list[records.DeploymentRevision]:
    return _registry(request).deployments.history(name)


@router.post("/deployments/{name}/rollback")
def rollback_deployment(
    request: Request, name: str, target: RollbackTarget
) -> records.DeploymentRevision:
    """Make an earlier revision's manifest live again, as a new revision."""
    return _registry(request).deployments.rollback(name, target.revision)
