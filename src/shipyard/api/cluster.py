"""`GET /api/cluster`: the replicas sharing this registry, as their heartbeats say."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from shipyard.api.state import control_plane
from shipyard.scaling.membership import MEMBERSHIP_WINDOW_SECONDS

router = APIRouter(prefix="/api", tags=["cluster"])


class ReplicaDocument(BaseModel):
    id: str
    address: str
    version: str
    started_at: datetime
    heartbeat_at: datetime
    live: bool
    """Heard from within the membership window (three heartbeats)."""
    load: dict[str, Any]
    """Requests in flight and queued, and model workers, at its last heartbeat."""


class ClusterDocument(BaseModel):
    window_seconds: float
    replicas: list[ReplicaDocument]


@router.get("/cluster")
async def cluster(request: Request) -> ClusterDocument:
    """Every replica heard from in the last hour, newest first, live or gone."""
    fleet = control_plane(request).registry.fleet
    members = await run_in_threadpool(fleet.members, MEMBERSHIP_WINDOW_SECONDS)
    return ClusterDocument(
        window_seconds=MEMBERSHIP_WINDOW_SECONDS,
        replicas=[
            ReplicaDocument(
                id=m.id, address=m.address, version=m.version, started_at=m.started_at,
                heartbeat_at=m.heartbeat_at, live=m.live, load=m.load,
            )
            for m in members
        ],
    )  # fmt: skip
