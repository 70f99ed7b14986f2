"""The registry as one object: database, artifact store, and registration."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.artifacts import ArtifactStore
from shipyard.config import Settings
from shipyard.registry import records
from shipyard.registry.audit import AuditLog
from shipyard.registry.changes import ChangeCounter
from shipyard.registry.db import create_engine, migrate, session_factory
from shipyard.registry.deployments import DeploymentRepository
from shipyard.registry.fleet import FleetRepository
from shipyard.registry.importing import register_model
from shipyard.registry.leases import LeaseRepository
from shipyard.registry.promotions import (
    EvaluationRepository,
    PolicyRepository,
    PromotionRepository,
)
from shipyard.registry.repository import ModelRepository
from shipyard.registry.rollouts import RolloutRepository


def default_user(settings: Settings) -> str:
    if settings.user:
        return settings.user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class Registry:
    """Everything the control plane needs to read and change the registry."""

    engine: sa.Engine
    sessions: sessionmaker[Session]
    models: ModelRepository
    artifacts: ArtifactStore
    audit: AuditLog
    deployments: DeploymentRepository
    rollouts: RolloutRepository
    leases: LeaseRepository
    fleet: FleetRepository
    changes: ChangeCounter
    """Whether anything changed: what servers poll instead of re-reading each name."""
    evaluations: EvaluationRepository
    policies: PolicyRepository
    promotions: PromotionRepository

    @classmethod
    def open(cls, settings: Settings) -> Registry:
        """Connect, bring the schema up to date, and open the artifact store."""
        engine = create_engine(settings.resolved_database_url)
        migrate(engine)
        sessions = session_factory(engine)
        return cls(
            engine=engine,
            sessions=sessions,
            models=ModelRepository(sessions),
            artifacts=ArtifactStore(settings.resolved_artifact_root, settings.cache_dir),
            audit=AuditLog(sessions),
            deployments=DeploymentRepository(sessions),
            rollouts=RolloutRepository(sessions),
            leases=LeaseRepository(sessions),
            fleet=FleetRepository(sessions),
            changes=ChangeCounter(sessions),
            evaluations=EvaluationRepository(sessions),
            policies=PolicyRepository(sessions),
            promotions=PromotionRepository(sessions),
        )

    @staticmethod
    def exists(settings: Settings) -> bool:
        """Whether the configured registry is already there (a SQLite file, or a server)."""
        url = sa.make_url(settings.resolved_database_url)
        if url.get_backend_name() != "sqlite":
            return True
        return url.database is not None and Path(url.database).exists()

    def register(
        self,
        path: Path,
        options: records.RegistrationOptions,
        example_path: Path | None = None,
    ) -> records.ModelVersion:
        return register_model(self.models, self.artifacts, path, options, example_path)

    def close(self) -> None:
        self.engine.dispose()
