"""The registry's schema as SQLAlchemy tables.

Alembic migrations are the only way this schema reaches a database; these
definitions are what queries are written against and what the migration test
compares the migrated database to.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the registry")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: sa.JSON}


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    # The number of the newest version; bumped under a row lock so concurrent
    # registrations get distinct, gap-free numbers.
    last_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)

    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="model", order_by="VersionRow.version"
    )
    aliases: Mapped[list[AliasRow]] = relationship(order_by="AliasRow.alias")
    tags: Mapped[list[ModelTagRow]] = relationship(order_by="ModelTagRow.key")


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version", name="uq_model_versions"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"), index=True)
    version: Mapped[int]
    flavor: Mapped[str] = mapped_column(sa.String(50))
    flavor_details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_digest: Mapped[str] = mapped_column(sa.String(64))
    artifact_size: Mapped[int] = mapped_column(sa.BigInteger)
    unsafe_format: Mapped[bool] = mapped_column(default=False)
    signature: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    reference_sample_digest: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    reference_sample_rows: Mapped[int | None] = mapped_column(default=None)
    source_uri: Mapped[str] = mapped_column(sa.Text, default="")
    code_commit: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    data_uri: Mapped[str | None] = mapped_column(sa.Text, default=None)
    data_hash: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    derived_from: Mapped[str | None] = mapped_column(sa.String(300), default=None)
    derivation: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    environment: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)

    model: Mapped[ModelRow] = relationship(back_populates="versions")
    tags: Mapped[list[VersionTagRow]] = relationship(order_by="VersionTagRow.key")


class AliasRow(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (sa.UniqueConstraint("model_id", "alias", name="uq_model_aliases"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"), index=True)
    alias: Mapped[str] = mapped_column(sa.String(100))
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[VersionRow] = relationship()


class ModelTagRow(Base):
    __tablename__ = "model_tags"

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, default="")


class VersionTagRow(Base):
    __tablename__ = "model_version_tags"

    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, default="")


class ApiKeyRow(Base):
    """An API key: only a salted scrypt hash of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    """Public key id, the part of the key before the secret; safe to log."""
    name: Mapped[str] = mapped_column(sa.String(200), default="")
    role: Mapped[str] = mapped_column(sa.String(20))
    models: Mapped[list[str] | None] = mapped_column(sa.JSON, default=None)
    """Models a predictor key may call; None means every model."""
    salt: Mapped[str] = mapped_column(sa.String(64))
    secret_hash: Mapped[str] = mapped_column(sa.String(128))
    rate_per_second: Mapped[float | None] = mapped_column(sa.Float, default=None)
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditRow(Base):
    """One change to the registry or its keys; append-only (triggers refuse edits)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(200))
    role: Mapped[str] = mapped_column(sa.String(20), default="")
    source: Mapped[str] = mapped_column(sa.String(200), default="")
    """Where the change came from: a client address, or `cli`."""
    action: Mapped[str] = mapped_column(sa.String(100))
    target: Mapped[str] = mapped_column(sa.String(400), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)


class DeploymentRow(Base):
    """A named endpoint; what it serves is its current revision's manifest."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    current_revision: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentRevisionRow(Base):
    """One immutable, numbered state of a deployment."""

    __tablename__ = "deployment_revisions"
    __table_args__ = (
        sa.UniqueConstraint("deployment_id", "revision", name="uq_deployment_revisions"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(sa.ForeignKey("deployments.id"), index=True)
    revision: Mapped[int]
    manifest: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    reason: Mapped[str] = mapped_column(sa.String(200), default="")
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutRow(Base):
    """A progressive rollout of one deployment to a candidate version; survives restarts."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment: Mapped[str] = mapped_column(sa.String(200), index=True)
    stable_version: Mapped[int]
    candidate_version: Mapped[int]
    steps: Mapped[list[int]] = mapped_column(sa.JSON)
    step_index: Mapped[int] = mapped_column(default=0)
    step_started_at: Mapped[datetime | None] = mapped_column(default=None)
    bake_seconds: Mapped[float] = mapped_column(sa.Float, default=300.0)
    min_requests: Mapped[int] = mapped_column(default=100)
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    webhook: Mapped[str | None] = mapped_column(sa.Text, default=None)
    alias: Mapped[str | None] = mapped_column(sa.String(100), default=None)
    """The alias the deployment's main route named when the rollout started: a promoted
    rollout moves it to the candidate and routes by it again."""
    state: Mapped[str] = mapped_column(sa.String(20), default="running")
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChangeRow(Base):
    """The registry's change counter: one row, bumped by every audited change in the
    change's own transaction, so a server learns whether anything changed with one read."""

    __tablename__ = "registry_changes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)


class LeaseRow(Base):
    """Who runs a singleton job (the rollout controller) among replicas, and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(200))
    expires_at: Mapped[datetime]


class ReplicaRow(Base):
    """One `shipyard server` of a fleet: where it answers and when it last said so."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(300))
    version: Mapped[str] = mapped_column(sa.String(50))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    load: Mapped[dict[str, Any]]


# Row ids of the monitoring tables can pass 2**31 on a busy endpoint; SQLite only
# autoincrements an INTEGER primary key, so BIGINT there would lose autoincrement.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class PredictionRow(Base):
    """One sampled request: what went in, what came out, who answered, how fast.

    Inputs and outputs are JSON text ({name: nested list}) encoded by the
    prediction log's writer thread with orjson: several times faster than the
    json module SQLAlchemy's JSON type would use, and off the request path.
    Times are unix seconds (float) so windows are plain range scans.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        sa.Index("ix_predictions_deployment_at", "deployment", "at"),
        sa.Index("ix_predictions_model_version_at", "model", "version", "at"),
        sa.Index("ix_predictions_at", "at"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(sa.Float)
    request_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    deployment: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    latency_ms: Mapped[float] = mapped_column(sa.Float)
    rows: Mapped[int]
    inputs: Mapped[str] = mapped_column(sa.Text)
    outputs: Mapped[str] = mapped_column(sa.Text)
    failed: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    """The version failed on these inputs (5xx, or it refused them): no outputs. Logged
    so that drift sees every input a version was sent, not only those it answered."""


class FeedbackRow(Base):
    """A ground-truth label for a request id; the newest label for an id wins."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    label: Mapped[str] = mapped_column(sa.Text)
    """JSON: a scalar for a one-row request, or a list with one label per row."""
    at: Mapped[float] = mapped_column(sa.Float)
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")


class DriftReportRow(Base):
    """One drift check of a deployment's version over a window of logged inputs."""

    __tablename__ = "drift_reports"
    __table_args__ = (sa.Index("ix_drift_reports_deployment_at", "deployment", "at"),)

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(sa.String(200))
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    at: Mapped[float] = mapped_column(sa.Float)
    window_seconds: Mapped[float] = mapped_column(sa.Float)
    current_rows: Mapped[int]
    drifted: Mapped[bool]
    share: Mapped[float] = mapped_column(sa.Float)
    trigger: Mapped[str] = mapped_column(sa.String(20))
    """"schedule" or "demand"."""
    result: Mapped[str] = mapped_column(sa.Text)
    """The full result as JSON (features, tests, histograms) for the HTML report."""


class BatchJobRow(Base):
    """One batch scoring job: what it reads and writes, with which version, and how far it got."""

    __tablename__ = "batch_jobs"
    __table_args__ = (sa.Index("ix_batch_jobs_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    input_uri: Mapped[str] = mapped_column(sa.Text)
    output_uri: Mapped[str] = mapped_column(sa.Text)
    input_format: Mapped[str] = mapped_column(sa.String(20))
    output_format: Mapped[str] = mapped_column(sa.String(20))
    options: Mapped[dict[str, Any]]
    """Everything needed to run it again the same way: chunk rows, id columns, outputs, workers…"""
    executor: Mapped[str] = mapped_column(sa.String(20))
    state: Mapped[str] = mapped_column(sa.String(20))
    """queued, running, succeeded, failed or interrupted."""
    rows_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    rows_done: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    rows_failed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    chunks_done: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    """How many times the job was started (1 + resumes)."""
    error: Mapped[str] = mapped_column(sa.Text, default="")
    runner: Mapped[str] = mapped_column(sa.String(200), default="")
    """host:pid of the process running it, so a resume can tell a live run from a dead one."""
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Written with every progress update: a running job whose stamp is old has died."""
    finished_at: Mapped[datetime | None]


class ArmReportRow(Base):
    """What one replica's traffic to one arm of a deployment did over about a second:
    the controller adds every replica's reports up for a rollout step's gates."""

    __tablename__ = "arm_reports"
    __table_args__ = (sa.Index("ix_arm_reports_arm_at", "deployment", "version", "at"),)

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    replica: Mapped[str] = mapped_column(sa.String(200))
    deployment: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[str] = mapped_column(sa.String(50))
    at: Mapped[datetime]
    requests: Mapped[int]
    errors: Mapped[int]
    samples: Mapped[dict[str, Any]]
    """latencies and predictions (a sample of each, with the counts they stand for), and
    the agreement counters of copies sent to the main arm."""


class EvaluationRow(Base):
    """One evaluation of a version against a champion on given data, or one replay of a
    deployment's logged traffic; the result and its HTML report are kept with it."""

    __tablename__ = "evaluations"
    __table_args__ = (sa.Index("ix_evaluations_model_version", "model", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    kind: Mapped[str] = mapped_column(sa.String(20))
    """"evaluation" or "replay"."""
    against: Mapped[int | None] = mapped_column(default=None)
    """The champion's version number (evaluations with one)."""
    deployment: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    """The deployment whose logged traffic a replay re-sent."""
    state: Mapped[str] = mapped_column(sa.String(20))
    """running, succeeded or failed."""
    request: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, default=None)
    report: Mapped[str | None] = mapped_column(sa.Text, default=None)
    """The self-contained HTML report."""
    error: Mapped[str] = mapped_column(sa.Text, default="")
    runner: Mapped[str] = mapped_column(sa.String(200), default="")
    """host:pid of the process running it: a server that starts marks its dead runs."""
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class PolicyRow(Base):
    """One revision of a named promotion policy (the YAML file, parsed and checked)."""

    __tablename__ = "promotion_policies"
    __table_args__ = (sa.UniqueConstraint("name", "revision", name="uq_promotion_policies"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), index=True)
    revision: Mapped[int]
    document: Mapped[dict[str, Any]]
    digest: Mapped[str] = mapped_column(sa.String(64))
    created_by: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PromotionRow(Base):
    """One request to promote a version under a policy: its gates, its approval, what
    it did, and what the guardrails did after."""

    __tablename__ = "promotions"
    __table_args__ = (sa.Index("ix_promotions_model_version", "model", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int]
    policy: Mapped[str] = mapped_column(sa.String(200))
    policy_revision: Mapped[int]
    alias: Mapped[str] = mapped_column(sa.String(100))
    previous_version: Mapped[int | None] = mapped_column(default=None)
    """What the alias pointed at before promotion: where a guardrail moves it back."""
    state: Mapped[str] = mapped_column(sa.String(30))
    gates: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    evaluation_id: Mapped[int | None] = mapped_column(default=None)
    replay_id: Mapped[int | None] = mapped_column(default=None)
    rollouts: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    """Rollouts promotion started: [{deployment, rollout}]."""
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    requested_by: Mapped[str] = mapped_column(sa.String(200), default="")
    decided_by: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    promoted_at: Mapped[datetime | None] = mapped_column(default=None)
    baking_until: Mapped[datetime | None] = mapped_column(default=None)
    """Guardrails watch until then; None while baking means always."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
