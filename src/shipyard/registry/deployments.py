"""Deployments and their numbered, immutable revisions.

Applying a manifest that differs from the live one adds a revision and makes
it current, in one transaction, with its audit event; rolling back to an old
revision adds a new revision holding the old manifest, so history only grows.
"""

from __future__ import annotations

import difflib
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from shipyard.errors import Conflict, NotFound
from shipyard.registry import records
from shipyard.registry.audit import current_actor, record_event
from shipyard.registry.db import write_session
from shipyard.registry.manifest import DeploymentManifest
from shipyard.registry.tables import DeploymentRevisionRow, DeploymentRow, utcnow

_LIVE = DeploymentRevisionRow.revision == DeploymentRow.current_revision


def _yaml(document: dict[str, Any] | None) -> list[str]:
    if document is None:
        return []
    return yaml.safe_dump(document, sort_keys=False).splitlines()


def _record(name: str, row: DeploymentRevisionRow) -> records.DeploymentRevision:
    try:
        manifest = DeploymentManifest.model_validate(row.manifest)  # the one parse of a row
    except ValidationError as exc:
        # Stored before a rule tightened (a shadow with no target was once accepted, and
        # could never go live): say which revision and how to move past it.
        raise Conflict(
            f"revision {row.revision} of deployment {name!r} is no longer a valid manifest "
            f"({exc.errors()[0]['msg']}); apply a corrected manifest or roll back"
        ) from None
    return records.DeploymentRevision(
        deployment=name,
        revision=row.revision,
        manifest=manifest,
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at,
    )


class DeploymentRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def apply(
        self, manifest: DeploymentManifest, dry_run: bool = False, reason: str = "apply"
    ) -> records.ApplyResult:
        document = manifest.document()
        live = self.find(manifest.name)
        live_document = live.manifest.document() if live else None
        diff = list(
            difflib.unified_diff(
                _yaml(live_document),
                _yaml(document),
                fromfile=f"{manifest.name}@{live.revision}" if live else "(new)",
                tofile=f"{manifest.name} (applied)",
                lineterm="",
            )
        )
        changed = live_document != document
        current = live.revision if live else 0
        if dry_run or not changed:
            return records.ApplyResult(
                deployment=manifest.name, changed=changed, revision=current, diff=diff,
                dry_run=dry_run,
            )  # fmt: skip
        revision = self._add_revision(manifest.name, document, reason, live_document)
        return records.ApplyResult(
            deployment=manifest.name, changed=True, revision=revision, diff=diff
        )

    def rollback(self, name: str, to: int) -> records.DeploymentRevision:
        target = self.revision(name, to)
        live = self.find(name)
        self._add_revision(
            name,
            target.manifest.document(),
            f"rollback to {to}",
            live.manifest.document() if live else None,
        )
        live = self.find(name)
        assert live is not None
        return live

    def _add_revision(
        self, name: str, document: dict[str, Any], reason: str, before: dict[str, Any] | None
    ) -> int:
        with write_session(self._sessions) as session:
            row = session.scalar(sa.select(DeploymentRow).where(DeploymentRow.name == name))
            if row is None:
                row = DeploymentRow(name=name, current_revision=0)
                session.add(row)
                session.flush()
            last = session.scalar(
                sa.select(sa.func.max(DeploymentRevisionRow.revision)).where(
                    DeploymentRevisionRow.deployment_id == row.id
                )
            )
            number = (last or 0) + 1
            session.add(
                DeploymentRevisionRow(
                    deployment_id=row.id,
                    revision=number,
                    manifest=document,
                    reason=reason,
                    created_by=current_actor().name,
                )
            )
            row.current_revision = number
            row.updated_at = utcnow()
            record_event(
                session,
                "deployment.rollback" if reason.startswith("rollback to") else "deployment.apply",
                f"{name}@{number}",
                before=before,
                after=document,
            )
        return number

    def _revisions(self, *conditions: Any) -> list[records.DeploymentRevision]:
        """Revisions matching `conditions`, by deployment name, then revision number."""
        with self._sessions() as session:
            rows = session.execute(
                sa.select(DeploymentRevisionRow, DeploymentRow.name)
                .join(DeploymentRow, DeploymentRow.id == DeploymentRevisionRow.deployment_id)
                .where(*conditions)
                .order_by(DeploymentRow.name, DeploymentRevisionRow.revision)
            ).all()
        return [_record(name, row) for row, name in rows]

    def find(self, name: str) -> records.DeploymentRevision | None:
        """The live revision of `name`, or None if there is no such deployment."""
        found = self._revisions(DeploymentRow.name == name, _LIVE)
        return found[0] if found else None

    def get(self, name: str) -> records.DeploymentRevision:
        live = self.find(name)
        if live is None:
            raise NotFound(f"no deployment {name!r}")
        return live

    def revision(self, name: str, number: int) -> records.DeploymentRevision:
        found = self._revisions(
            DeploymentRow.name == name, DeploymentRevisionRow.revision == number
        )
        if not found:
            raise NotFound(f"deployment {name!r} has no revision {number}")
        return found[0]

    def history(self, name: str) -> list[records.DeploymentRevision]:
        found = self._revisions(DeploymentRow.name == name)
        if not found:
            raise NotFound(f"no deployment {name!r}")
        return found

    def list(self) -> list[records.DeploymentRevision]:
        """Every deployment's live revision."""
        return self._revisions(_LIVE)
