"""Deployment manifests: what a named endpoint serves, declared in YAML.

```yaml
name: fraud-api
model: fraud
routes:
  - version: 3
    weight: 90
  - alias: challenger
    weight: 10
sticky: {header: x-user-id}          # or {input: user_id}: one caller, one arm
shadow: {version: 5, fraction: 0.1}  # copies, answers discarded, agreement recorded
serving: {max_batch_size: 32, cache: true}   # or workers: 2 for a fixed count
scaling:                             # see docs/scaling.md; delays in seconds
  {min_workers: 1, max_workers: 4, target_ongoing_requests: 2, downscale_delay: 60}
monitoring:                          # see docs/monitoring.md
  sample: 0.1                        # share of requests kept in the prediction log
  drift: {window: 1h, schedule: 10m, p_value: 0.05, share: 0.5, webhook: https://…}
```
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shipyard.config import (
    DEFAULT_DEPLOYMENT_SAMPLE,
    DEFAULT_DRIFT_P_VALUE,
    DEFAULT_DRIFT_SHARE,
    ScalingOptions,
    ServingOptions,
)
from shipyard.durations import duration_seconds
from shipyard.errors import InvalidInput
from shipyard.registry.refs import check_alias, check_model_name


class Target(BaseModel):
    """What a route or a shadow sends requests to: a version number or an alias, one of them."""

    model_config = ConfigDict(extra="forbid")
    noun: ClassVar[str] = "target"

    version: int | None = Field(default=None, ge=1)
    alias: str | None = None

    @field_validator("alias")
    @classmethod
    def _alias(cls, alias: str | None) -> str | None:
        if alias is not None:
            try:
                check_alias(alias)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None  # pydantic then says where
        return alias

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.version is None) == (self.alias is None):
            raise ValueError(f"a {self.noun} names either a version or an alias")
        return self

    @property
    def target(self) -> str:
        return str(self.version) if self.version is not None else str(self.alias)


class Route(Target):
    noun = "route"

    weight: float = Field(default=100, ge=0)


class Sticky(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str | None = None
    input: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Sticky:
        if (self.header is None) == (self.input is None):
            raise ValueError("sticky routing keys on either a header or an input")
        return self


class Shadow(Target):
    """Copies of a share of requests, answers discarded and agreement recorded."""

    noun = "shadow"

    fraction: float = Field(default=1.0, gt=0, le=1)


class RolloutPolicy(BaseModel):
    """Defaults for `shipyard rollout start`: steps, bake time, gates."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    bake_seconds: float = Field(default=300, ge=0)
    min_requests: int = Field(default=100, ge=1)
    gates: dict[str, float] = Field(default_factory=dict)
    webhook: str | None = None


class DriftPolicy(BaseModel):
    """How a deployment's inputs are checked against its version's reference sample."""

    model_config = ConfigDict(extra="forbid")

    window: str = "1h"
    """How far back the logged inputs are taken from."""
    schedule: str | None = None
    """How often the server checks on its own (e.g. 10m); None: on demand only."""
    p_value: float = Field(default=DEFAULT_DRIFT_P_VALUE, gt=0, lt=1)
    """A feature drifts when its test's p-value is below this."""
    psi: float | None = Field(default=None, gt=0)
    """A feature also drifts when its population stability index reaches this."""
    share: float = Field(default=DEFAULT_DRIFT_SHARE, gt=0, le=1)
    """The dataset drifts when at least this share of its features drift."""
    min_rows: int = Field(default=100, ge=1)
    """Fewer logged rows than this in the window: no verdict."""
    webhook: str | None = None
    """POSTed a JSON alert when a check finds drift (and the last one did not)."""

    @model_validator(mode="after")
    def _durations(self) -> DriftPolicy:
        try:
            duration_seconds(self.window, "window")
            if self.schedule is not None:
                duration_seconds(self.schedule, "schedule")
        except InvalidInput as exc:
            raise ValueError(exc.message) from None  # pydantic then says where
        return self

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)

    @property
    def schedule_seconds(self) -> float | None:
        return duration_seconds(self.schedule) if self.schedule else None


class MonitoringPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample: float = Field(default=DEFAULT_DEPLOYMENT_SAMPLE, ge=0, le=1)
    """Share of requests written to the prediction log."""
    prediction_output: str | None = None
    """The output whose values are the predictions scored against feedback
    (default: `predict` if the model has it, else its first output)."""
    drift: DriftPolicy = Field(default_factory=DriftPolicy)


_DEFAULT_MONITORING = MonitoringPolicy()


class DeploymentManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    description: str = ""
    routes: list[Route] = Field(min_length=1)
    sticky: Sticky | None = None
    shadow: Shadow | None = None
    serving: ServingOptions | None = None
    scaling: ScalingOptions | None = None
    rollout: RolloutPolicy | None = None
    monitoring: MonitoringPolicy | None = None
    """None: the defaults (see `watch`), left out of stored revisions."""

    def document(self) -> dict[str, Any]:
        """The manifest as revisions store it and the API shows it: unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def serving_options(self) -> ServingOptions | None:
        """`serving` with `scaling` folded in: what the model manager applies."""
        if self.scaling is None:
            return self.serving
        base = self.serving or ServingOptions()
        return base.model_copy(update={"scaling": self.scaling})

    @property
    def watch(self) -> MonitoringPolicy:
        """The monitoring policy in force: the manifest's, or the defaults."""
        return self.monitoring if self.monitoring is not None else _DEFAULT_MONITORING

    @model_validator(mode="after")
    def _sane(self) -> DeploymentManifest:
        check_model_name(self.name)
        check_model_name(self.model)
        if sum(r.weight for r in self.routes) <= 0:
            raise ValueError("route weights must add up to more than 0")
        if self.scaling is not None and self.serving is not None:
            if self.serving.scaling is not None:
                raise ValueError("set scaling once: at the top level or in serving, not both")
            if self.serving.workers is not None:
                raise ValueError("serving.workers fixes the worker count: drop it to scale")
        targets = [r.target for r in self.routes]
        if len(set(targets)) != len(targets):
            raise ValueError("each version or alias may appear in one route only")
        return self


def parse_manifest(text: str, where: str = "manifest") -> DeploymentManifest:
    """A manifest from YAML (or JSON) text, with errors that say where."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{where} must be a mapping with name, model and routes")
    try:
        return DeploymentManifest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"{where}: {problems}") from None
