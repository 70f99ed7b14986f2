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
serving: {workers: 2, max_batch_size: 32, cache: true}
```
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.config import ServingOptions
from shipyard.errors import InvalidInput
from shipyard.registry.refs import check_model_name


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1)
    alias: str | None = None
    weight: float = Field(default=100, ge=0)

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.version is None) == (self.alias is None):
            raise ValueError("a route names either a version or an alias")
        return self

    @property
    def target(self) -> str:
        return str(self.version) if self.version is not None else str(self.alias)


class Sticky(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str | None = None
    input: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Sticky:
        if (self.header is None) == (self.input is None):
            raise ValueError("sticky routing keys on either a header or an input")
        return self


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1)
    alias: str | None = None
    fraction: float = Field(default=1.0, gt=0, le=1)

    @property
    def target(self) -> str:
        return str(self.version) if self.version is not None else str(self.alias)


class RolloutPolicy(BaseModel):
    """Defaults for `shipyard rollout start`: steps, bake time, gates."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    bake_seconds: float = Field(default=300, ge=0)
    min_requests: int = Field(default=100, ge=1)
    gates: dict[str, float] = Field(default_factory=dict)
    webhook: str | None = None


class DeploymentManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    description: str = ""
    routes: list[Route] = Field(min_length=1)
    sticky: Sticky | None = None
    shadow: Shadow | None = None
    serving: ServingOptions | None = None
    rollout: RolloutPolicy | None = None

    @model_validator(mode="after")
    def _sane(self) -> DeploymentManifest:
        check_model_name(self.name)
        check_model_name(self.model)
        if sum(r.weight for r in self.routes) <= 0:
            raise ValueError("route weights must add up to more than 0")
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
