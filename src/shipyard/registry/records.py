"""The registry's public records: what the API returns and the client reads back.

Pydantic here is fine: these cross the control plane, never the infer path.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_serializer

from shipyard.registry.manifest import DeploymentManifest
from shipyard.signature import Signature


class Lineage(BaseModel):
    """Where a version came from."""

    source_uri: str = ""
    code_commit: str | None = None
    data_uri: str | None = None
    data_hash: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    derived_from: str | None = Field(
        default=None, description="NAME:VERSION this version was converted from (an export)."
    )
    derivation: dict[str, Any] = Field(
        default_factory=dict,
        description="How it was derived: converter and library versions, options, the "
        "equivalence gate's result.",
    )


class Environment(BaseModel):
    """The Python packages a version needs, recorded at registration."""

    requirements: list[str] = Field(description="Pinned requirements, one per entry.")
    source: str = Field(
        description="Where they came from: requirements.txt, conda.yaml, --requirements "
        "or detected (the flavor libraries found when the model was inspected)."
    )
    digest: str = Field(description="sha256 of the Python version and the sorted pins.")
    python: str = Field(description="Python major.minor the version was registered under.")


class ArtifactInfo(BaseModel):
    digest: str = Field(description="sha256 of the artifact manifest (content address).")
    size: int = Field(description="Total bytes of the model's files.")


class ReferenceSample(BaseModel):
    digest: str
    rows: int


class ModelVersion(BaseModel):
    """One immutable version of a model."""

    model: str
    version: int
    flavor: str
    flavor_details: dict[str, Any] = Field(default_factory=dict)
    artifact: ArtifactInfo
    unsafe_format: bool = Field(
        default=False, description="The format runs code when loaded (pickle, plain Python)."
    )
    signature: Signature | None = None
    reference_sample: ReferenceSample | None = None
    lineage: Lineage = Field(default_factory=Lineage)
    environment: Environment | None = None
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    created_by: str = ""
    created_at: datetime
    archived: bool = False


class Model(BaseModel):
    """A named model and a summary of its versions."""

    name: str
    description: str = ""
    latest_version: int | None = Field(
        default=None, description="Newest version that is not archived."
    )
    version_count: int = 0
    aliases: dict[str, int] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    archived: bool = False


class ModelPage(BaseModel):
    models: list[Model]
    next_page_token: str | None = None


class VersionPage(BaseModel):
    versions: list[ModelVersion]
    next_page_token: str | None = None


class Alias(BaseModel):
    model: str
    alias: str
    version: int


class RegistrationOptions(BaseModel):
    """How to register a model file or folder as a new version."""

    name: str
    aliases: list[str] = Field(default_factory=list, description="Aliases to point at it.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on the new version.")
    description: str = ""
    lineage: Lineage = Field(default_factory=Lineage)
    requirements: list[str] | None = Field(
        default=None,
        description="Pinned requirements of the version (None: read from an MLflow folder or "
        "detected from the model).",
    )
    created_by: str = ""
    skip_unchanged: bool = Field(
        default=False,
        description="If the newest live version with identical artifact bytes exists, "
        "return it instead of creating a new version.",
    )


class AuditEvent(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    source: str
    action: str
    target: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class ApiKey(BaseModel):
    """What may be shown about a key: never its secret or hash."""

    id: str
    name: str
    role: str
    models: list[str] | None = None
    rate_per_second: float | None = None
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class DeploymentRevision(BaseModel):
    deployment: str
    revision: int
    manifest: DeploymentManifest
    reason: str = ""
    created_by: str
    created_at: datetime

    @field_serializer("manifest")
    def _stored_form(self, manifest: DeploymentManifest) -> dict[str, Any]:
        """Shown as stored: fields left unset are left out, not sent as nulls."""
        return manifest.document()


class ApplyResult(BaseModel):
    deployment: str
    changed: bool
    revision: int = Field(description="The revision now live (unchanged when nothing changed).")
    diff: list[str] = Field(description="Unified diff of the live manifest against the new one.")
    dry_run: bool = False


class RolloutState(StrEnum):
    """Where a rollout stands; the values are what the database and the API hold."""

    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class RolloutGates(BaseModel):
    """What the candidate must keep to at every step, against stable over the same window.

    Unknown names are refused where gates are set (`RolloutRepository.start`) and
    ignored where a stored rollout is read back."""

    max_error_rate_increase: float = 0.02
    """Most the candidate's error rate may exceed stable's (0.02: two points)."""
    max_p95_ratio: float = 2.0
    """Most the candidate's p95 latency may be, as a multiple of stable's."""
    max_drift: float = 0.5
    """Largest Kolmogorov-Smirnov distance between the two arms' predictions."""
    min_agreement: float = 0.0
    """Least share of compared answers the candidate must agree with stable on; 0 is off."""
    max_input_drift_share: float = 1.0
    """Largest share of input features drifted from the candidate's reference sample over
    the step (monitoring/drift_monitor.py); 1.0 is off. Needs monitoring.sample > 0."""


class Rollout(BaseModel):
    id: int
    deployment: str
    stable_version: int
    candidate_version: int
    steps: list[int]
    step_index: int
    step_started_at: datetime | None = None
    bake_seconds: float
    min_requests: int
    gates: RolloutGates
    webhook: str | None = None
    alias: str | None = None
    """The alias the deployment routed by when the rollout started; promotion moves it."""
    state: RolloutState
    reason: str = ""
    created_by: str
    created_at: datetime
    updated_at: datetime

    @property
    def weight(self) -> int:
        """The candidate's share of traffic (percent) at the current step."""
        return self.steps[min(self.step_index, len(self.steps) - 1)]


class Evaluation(BaseModel):
    """A stored evaluation (kind "evaluation") or replay (kind "replay") of a version."""

    id: int
    model: str
    version: int
    kind: str
    against: int | None = None
    deployment: str | None = None
    state: str = Field(description="running, succeeded or failed.")
    request: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str = ""
    created_by: str = ""
    created_at: datetime
    finished_at: datetime | None = None


class PromotionState(StrEnum):
    """Where a promotion stands; the values are what the database and the API hold."""

    EVALUATING = "evaluating"
    FAILED = "failed"
    """A gate failed (or the evaluation could not run): nothing moved."""
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"
    ROLLING_OUT = "rolling_out"
    """Rollouts were started; the alias moves when they complete."""
    BAKING = "baking"
    """Promoted; guardrails watch it (until baking_until, or always when that is None)."""
    PROMOTED = "promoted"
    """Promoted, and the baking period passed without a guardrail crossing."""
    ROLLED_BACK = "rolled_back"
    """A guardrail moved the alias back (or a rollout it started rolled back)."""


class Promotion(BaseModel):
    id: int
    model: str
    version: int
    policy: str
    policy_revision: int
    alias: str
    previous_version: int | None = None
    state: PromotionState
    gates: list[dict[str, Any]] = Field(default_factory=list)
    evaluation_id: int | None = None
    replay_id: int | None = None
    rollouts: list[dict[str, Any]] = Field(default_factory=list)
    reason: str = ""
    requested_by: str = ""
    decided_by: str | None = None
    decided_at: datetime | None = None
    promoted_at: datetime | None = None
    baking_until: datetime | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def passed(self) -> bool:
        return all(gate.get("passed") for gate in self.gates)


class PolicyRevision(BaseModel):
    name: str
    revision: int
    document: dict[str, Any]
    digest: str
    created_by: str = ""
    created_at: datetime
