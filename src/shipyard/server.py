"""Wires the server together: registry, control-plane app, uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from shipyard.api.app import create_app
from shipyard.config import Settings
from shipyard.registry.service import Registry

log = logging.getLogger("shipyard.server")


def build_app(settings: Settings) -> FastAPI:
    """The full application for these settings (opens and migrates the registry)."""
    return create_app(Registry.open(settings))


def serve(settings: Settings, *, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = build_app(settings)
    log.info(
        "registry %s, artifacts %s",
        settings.redacted_database_url,
        settings.resolved_artifact_root,
    )
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
