"""The control-plane application: registry routes, OpenAPI, one error mapping."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI

from shipyard import __version__
from shipyard.api.bundles import router as bundles_router
from shipyard.api.cluster import router as cluster_router
from shipyard.api.deployments import router as deployments_router
from shipyard.api.environments import router as environments_router
from shipyard.api.errors import install_error_handlers
from shipyard.api.export import router as export_router
from shipyard.api.models import router as models_router
from shipyard.api.monitoring import router as monitoring_router
from shipyard.api.promotion import router as promotion_router
from shipyard.api.scaling import router as scaling_router
from shipyard.api.security import router as security_router
from shipyard.api.state import ControlPlane


def create_app(
    control: ControlPlane,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
) -> FastAPI:
    """The control-plane routes over `control`; the server adds the data plane's."""
    app = FastAPI(
        title="Shipyard",
        version=__version__,
        description="Control plane (model registry) and data plane (Open Inference Protocol "
        "V2 and MLflow scoring).",
        lifespan=lifespan,
    )
    app.state.control_plane = control
    install_error_handlers(app)
    app.include_router(models_router)
    app.include_router(environments_router)
    app.include_router(deployments_router)
    app.include_router(security_router)
    app.include_router(monitoring_router)
    app.include_router(scaling_router)
    app.include_router(cluster_router)
    app.include_router(promotion_router)
    app.include_router(bundles_router)
    app.include_router(export_router)
    return app
