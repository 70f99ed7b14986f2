"""The promotion policy: a YAML file, kept in version control beside the training code.

```yaml
name: fraud                     # the policy's name in the registry (revisions kept)
model: fraud
alias: production               # what promotion moves; the champion is what it names now
data: {path: holdout.parquet, label: is_fraud, slice_by: region}
metrics:                        # MLflow MetricThreshold's vocabulary
  roc_auc: {min: 0.80, min_change: -0.01, per_slice: true}
  log_loss: {max: 0.45}         # lower is better: known from the name
latency: {one_row_p95_ms: 20, batch32_p95_ms: 80, max_ratio: 1.5}
memory: {max_mb: 1024}
signature: compatible           # or: any
data_checks: required           # or: advisory
max_disagreement: 0.25
replay: {deployment: fraud-api, window: 24h, limit: 2000, min_agreement: 0.95,
         max_error_rate: 0.01}
approval: {required: true, roles: [admin], four_eyes: true}
on_promote: {action: alias}     # or {action: rollout, steps: [10, 50, 100], bake_seconds: 120}
guardrails: {baking: 1h, max_error_rate: 0.05, max_p95_ms: 50, min_accuracy: 0.8,
             max_drift: 0.3, min_requests: 50}
on_register: {alias: candidate} # registering with this alias evaluates on the server
webhook: https://ci.example.com/hooks/shipyard
```
"""

from __future__ import annotations

from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.durations import duration_seconds
from shipyard.errors import InvalidInput
from shipyard.registry.refs import check_alias, check_model_name

LOWER_IS_BETTER = frozenset({"log_loss", "calibration_error", "mae", "rmse"})
"""Metrics where smaller wins; every other metric is greater-is-better unless the
policy says otherwise (`greater_is_better: false`)."""

KNOWN_METRICS = frozenset(
    {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "calibration_error",
     "mae", "rmse", "r2"}
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricThreshold(_Strict):
    """Bounds on one task metric: absolute, and relative to the champion's value."""

    min: float | None = None
    max: float | None = None
    min_change: float | None = None
    """Least improvement over the champion, in the metric's units, signed so that
    better is positive whatever the direction (-0.01: may lose at most 0.01)."""
    min_relative_change: float | None = None
    """Least improvement over the champion as a share of its value (0.02: 2% better)."""
    greater_is_better: bool | None = None
    """None: from the metric's name (log loss, calibration error, MAE, RMSE are lower)."""
    per_slice: bool = False
    """Hold every slice of `data.slice_by` to the same bounds, not only the whole set."""

    @model_validator(mode="after")
    def _something(self) -> Self:
        if all(v is None for v in (self.min, self.max, self.min_change,
                                   self.min_relative_change)):  # fmt: skip
            raise ValueError("give min, max, min_change or min_relative_change")
        return self


class DataSource(_Strict):
    path: str
    """A local path or fsspec URI the evaluating process can read (.csv or .parquet)."""
    label: str
    slice_by: str | None = None
    max_rows: int | None = Field(default=None, ge=1)


class LatencyBudget(_Strict):
    one_row_p95_ms: float | None = Field(default=None, gt=0)
    batch32_p95_ms: float | None = Field(default=None, gt=0)
    max_ratio: float | None = Field(default=None, gt=0)
    """Most the candidate's one-row p95 may be, as a multiple of the champion's."""


class MemoryBudget(_Strict):
    max_mb: float = Field(gt=0)
    """Peak resident memory of the worker that loaded and scored the candidate."""


class ReplayGate(_Strict):
    deployment: str
    window: str = "24h"
    limit: int | None = Field(default=1000, ge=1)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _window(self) -> Self:
        try:
            duration_seconds(self.window, "replay.window")
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self


class Approval(_Strict):
    required: bool = False
    roles: list[str] = Field(default_factory=lambda: ["admin"])
    four_eyes: bool = False
    """The approver must be neither who asked for the promotion nor who registered it."""


class OnPromote(_Strict):
    action: Literal["alias", "rollout"] = "alias"
    steps: list[int] | None = None
    bake_seconds: float | None = Field(default=None, ge=0)
    min_requests: int | None = Field(default=None, ge=1)


class Guardrails(_Strict):
    """What is watched after promotion, and for how long."""

    baking: str = "1h"
    """How long to watch; "always" never stops."""
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    """Live accuracy from ground-truth feedback on the promoted version."""
    max_drift: float | None = Field(default=None, gt=0, le=1)
    """Largest KS distance between the promoted version's predictions and the previous
    version's before promotion."""
    min_requests: int = Field(default=50, ge=1)
    """Fewer requests than this since promotion: no verdict yet."""

    @model_validator(mode="after")
    def _baking(self) -> Self:
        if self.baking != "always":
            try:
                duration_seconds(self.baking, "guardrails.baking")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return self

    @property
    def baking_seconds(self) -> float | None:
        """None: always."""
        return None if self.baking == "always" else duration_seconds(self.baking)


class OnRegister(_Strict):
    alias: str


class PromotionPolicy(_Strict):
    name: str
    model: str | None = None
    """The model it is for; None: any model."""
    alias: str = "production"
    against: str | int | None = None
    """The champion: an alias or a version number (default: `alias`)."""
    data: DataSource | None = None
    metrics: dict[str, MetricThreshold] = Field(default_factory=dict)
    latency: LatencyBudget | None = None
    memory: MemoryBudget | None = None
    signature: Literal["compatible", "any"] = "compatible"
    data_checks: Literal["required", "advisory"] = "advisory"
    max_disagreement: float | None = Field(default=None, ge=0, le=1)
    replay: ReplayGate | None = None
    approval: Approval = Field(default_factory=Approval)
    on_promote: OnPromote = Field(default_factory=OnPromote)
    guardrails: Guardrails | None = None
    on_register: OnRegister | None = None
    webhook: str | None = None

    @model_validator(mode="after")
    def _sane(self) -> Self:
        for name in (self.name, *([self.model] if self.model else [])):
            _checked(check_model_name, name)
        for alias in (self.alias, *([self.on_register.alias] if self.on_register else [])):
            _checked(check_alias, alias)
        unknown = sorted(set(self.metrics) - KNOWN_METRICS)
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; metrics: "
                             f"{', '.join(sorted(KNOWN_METRICS))}")  # fmt: skip
        if self.on_register and self.on_register.alias == self.alias:
            raise ValueError("on_register.alias must differ from the alias promotion moves")
        return self

    def greater_is_better(self, metric: str) -> bool:
        threshold = self.metrics.get(metric)
        if threshold is not None and threshold.greater_is_better is not None:
            return threshold.greater_is_better
        return metric not in LOWER_IS_BETTER

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _checked(check: Any, value: str) -> None:
    try:
        check(value)
    except InvalidInput as exc:
        raise ValueError(exc.message) from None  # pydantic then says where


def parse_policy(text: str, where: str = "policy") -> PromotionPolicy:
    """A policy from YAML (or JSON) text, with errors that say where."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{where} must be a mapping with at least a name")
    return policy_from_document(document, where)


def policy_from_document(document: dict[str, Any], where: str = "policy") -> PromotionPolicy:
    try:
        return PromotionPolicy.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or where}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"{where}: {problems}") from None
