"""A fleet's shared state: which replicas are alive, and what their traffic did.

Replicas of one service share the registry database and agree through it. Each writes a
heartbeat (address, version, load) every few seconds; a replica whose heartbeat is older
than the membership window is shown as gone and, after an hour, forgotten. Each also
writes, about once a second, what its requests to each arm of each deployment did
(`ArmReport`): the rollout controller, wherever it runs, adds every replica's reports
since a step began to judge that step's gates on the whole fleet's traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.registry.db import write_session
from shipyard.registry.tables import ArmReportRow, ReplicaRow

FORGET_AFTER = timedelta(hours=1)
"""A replica silent this long leaves the membership table; reports this old go too."""


@dataclass(frozen=True)
class Replica:
    id: str
    address: str
    version: str
    started_at: datetime
    heartbeat_at: datetime
    load: dict[str, Any]
    live: bool
    """Its last heartbeat is within the membership window."""


@dataclass
class ArmReport:
    """One replica's traffic to one arm over one reporting interval."""

    deployment: str
    version: str
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    """A sample of the interval's latencies (seconds), standing for `latency_count`."""
    latency_count: int = 0
    predictions: list[float] = field(default_factory=list)
    prediction_count: int = 0
    copies_sent: int = 0
    copies_agreed: int = 0
    copies_failed: int = 0


class FleetRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def heartbeat(
        self, replica: str, address: str, version: str, started_at: datetime, load: dict[str, Any]
    ) -> None:
        now = datetime.now(UTC)
        with write_session(self._sessions) as session:
            session.merge(
                ReplicaRow(
                    id=replica, address=address, version=version, started_at=started_at,
                    heartbeat_at=now, load=load,
                )
            )  # fmt: skip
            forgotten = ReplicaRow.heartbeat_at < now - FORGET_AFTER
            session.execute(sa.delete(ReplicaRow).where(forgotten))

    def leave(self, replica: str) -> None:
        """A replica stopping on purpose leaves at once (a killed one ages out)."""
        with write_session(self._sessions) as session:
            session.execute(sa.delete(ReplicaRow).where(ReplicaRow.id == replica))

    def members(self, window_seconds: float) -> list[Replica]:
        """Every replica heard from in the last hour, newest first; `live` if within the
        window."""
        now = datetime.now(UTC)
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(ReplicaRow).order_by(ReplicaRow.started_at.desc(), ReplicaRow.id)
            ).all()
        cutoff = now - timedelta(seconds=window_seconds)
        return [
            Replica(
                r.id, r.address, r.version, r.started_at, r.heartbeat_at, dict(r.load),
                live=r.heartbeat_at >= cutoff,
            )
            for r in rows
        ]  # fmt: skip

    def report(self, replica: str, reports: list[ArmReport]) -> None:
        if not reports:
            return
        now = datetime.now(UTC)
        with write_session(self._sessions) as session:
            session.add_all(
                ArmReportRow(
                    replica=replica, deployment=r.deployment, version=r.version, at=now,
                    requests=r.requests, errors=r.errors, samples=_samples(r),
                )
                for r in reports
            )  # fmt: skip
            session.execute(sa.delete(ArmReportRow).where(ArmReportRow.at < now - FORGET_AFTER))

    def reports(
        self, deployment: str, version: str, since: datetime, excluding: str | None = None
    ) -> list[ArmReport]:
        """Reports on one arm written since `since`, from every replica but `excluding`."""
        query = sa.select(ArmReportRow).where(
            ArmReportRow.deployment == deployment,
            ArmReportRow.version == version,
            ArmReportRow.at >= since,
        )
        if excluding is not None:
            query = query.where(ArmReportRow.replica != excluding)
        with self._sessions() as session:
            rows = session.scalars(query).all()
        return [_report(row) for row in rows]

    def timeline(self, deployment: str, since: datetime) -> list[tuple[datetime, ArmReport]]:
        """Every replica's reports on every arm of a deployment since `since`, oldest first,
        with when each was written: what the console charts."""
        query = (
            sa.select(ArmReportRow)
            .where(ArmReportRow.deployment == deployment, ArmReportRow.at >= since)
            .order_by(ArmReportRow.at)
        )
        with self._sessions() as session:
            rows = session.scalars(query).all()
        return [(row.at, _report(row)) for row in rows]


def _samples(report: ArmReport) -> dict[str, Any]:
    return {
        "latencies": report.latencies,
        "latency_count": report.latency_count,
        "predictions": report.predictions,
        "prediction_count": report.prediction_count,
        "copies": [report.copies_sent, report.copies_agreed, report.copies_failed],
    }


def _report(row: ArmReportRow) -> ArmReport:
    samples = row.samples
    sent, agreed, failed = samples.get("copies", [0, 0, 0])
    return ArmReport(
        row.deployment, row.version, row.requests, row.errors,
        list(samples.get("latencies", [])), int(samples.get("latency_count", 0)),
        list(samples.get("predictions", [])), int(samples.get("prediction_count", 0)),
        sent, agreed, failed,
    )  # fmt: skip
