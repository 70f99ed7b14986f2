"""The one place that decides who may do what.

Every REST route and every gRPC method has exactly one rule here, naming the
permission it needs; roles are sets of permissions. A route with no rule is
refused (403) and fails the role-matrix test, so a new endpoint cannot ship
open by accident.
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    PUBLIC = "public"
    """Liveness, readiness, version, API description: no credentials needed."""
    READ = "read"
    """Read the registry and metrics."""
    INFER = "infer"
    """Call models: inference and model metadata/readiness."""
    DEPLOY = "deploy"
    """Change the registry and what is loaded."""
    BUNDLE = "bundle"
    """Fetch a model's signed edge bundle: what viewers and predictors (devices) poll."""
    ADMIN = "admin"
    """Keys and the audit trail."""


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ, Permission.BUNDLE}),
    "predictor": frozenset({Permission.INFER, Permission.BUNDLE}),
    "deployer": frozenset(
        {Permission.READ, Permission.INFER, Permission.DEPLOY, Permission.BUNDLE}
    ),
    "admin": frozenset(Permission),
}

P = Permission
REST_RULES: dict[tuple[str, str], Permission] = {
    # FastAPI's own documentation routes
    ("GET", "/openapi.json"): P.PUBLIC,
    ("GET", "/docs"): P.PUBLIC,
    ("GET", "/docs/oauth2-redirect"): P.PUBLIC,
    ("GET", "/redoc"): P.PUBLIC,
    # health and identity
    ("GET", "/api/health"): P.PUBLIC,
    ("GET", "/v2"): P.PUBLIC,
    ("GET", "/v2/health/live"): P.PUBLIC,
    ("GET", "/v2/health/ready"): P.PUBLIC,
    ("GET", "/ping"): P.PUBLIC,
    ("GET", "/health"): P.PUBLIC,
    ("GET", "/version"): P.PUBLIC,
    # data plane
    ("GET", "/v2/models/{name}"): P.INFER,
    ("GET", "/v2/models/{name}/versions/{version}"): P.INFER,
    ("GET", "/v2/models/{name}/ready"): P.INFER,
    ("GET", "/v2/models/{name}/versions/{version}/ready"): P.INFER,
    ("POST", "/v2/models/{name}/infer"): P.INFER,
    ("POST", "/v2/models/{name}/versions/{version}/infer"): P.INFER,
    ("POST", "/invocations"): P.INFER,
    ("POST", "/deployments/{deployment}/invocations"): P.INFER,
    ("POST", "/v2/repository/index"): P.READ,
    ("POST", "/v2/repository/models/{name}/load"): P.DEPLOY,
    ("POST", "/v2/repository/models/{name}/unload"): P.DEPLOY,
    ("GET", "/metrics"): P.READ,
    ("GET", "/api/cluster"): P.READ,
    # registry
    ("GET", "/api/models"): P.READ,
    ("GET", "/api/models/{name}"): P.READ,
    ("POST", "/api/models/{name}/archive"): P.DEPLOY,
    ("PUT", "/api/models/{name}/tags/{key}"): P.DEPLOY,
    ("DELETE", "/api/models/{name}/tags/{key}"): P.DEPLOY,
    ("GET", "/api/models/{name}/versions"): P.READ,
    ("POST", "/api/models/{name}/versions"): P.DEPLOY,
    ("GET", "/api/models/{name}/versions/{version}"): P.READ,
    ("POST", "/api/models/{name}/versions/{version}/archive"): P.DEPLOY,
    ("PUT", "/api/models/{name}/versions/{version}/tags/{key}"): P.DEPLOY,
    ("DELETE", "/api/models/{name}/versions/{version}/tags/{key}"): P.DEPLOY,
    ("PUT", "/api/models/{name}/aliases/{alias}"): P.DEPLOY,
    ("DELETE", "/api/models/{name}/aliases/{alias}"): P.DEPLOY,
    ("POST", "/api/models/{name}/scaling"): P.DEPLOY,
    ("POST", "/api/models/{name}/versions/{version}/scaling"): P.DEPLOY,
    # a version's Python environment: building one costs the replica minutes and disk
    ("GET", "/api/models/{name}/versions/{version}/environment"): P.READ,
    ("POST", "/api/models/{name}/versions/{version}/environment"): P.DEPLOY,
    # edge bundles: a predictor key limited to models reaches only theirs (http_gate scope)
    ("GET", "/api/models/{name}/bundles/{alias}"): P.BUNDLE,
    ("GET", "/api/models/{name}/bundles/{alias}/download"): P.BUNDLE,
    # deployments
    ("GET", "/api/deployments"): P.READ,
    ("POST", "/api/deployments"): P.DEPLOY,
    ("GET", "/api/deployments/{name}"): P.READ,
    ("GET", "/api/deployments/{name}/history"): P.READ,
    ("POST", "/api/deployments/{name}/rollback"): P.DEPLOY,
    ("POST", "/api/deployments/{name}/rollout"): P.DEPLOY,
    ("GET", "/api/deployments/{name}/rollout"): P.READ,
    ("POST", "/api/deployments/{name}/rollout/{action}"): P.DEPLOY,
    # monitoring
    ("POST", "/api/feedback"): P.INFER,  # whoever gets predictions may label them
    # Logged inputs may be personal data: reading them takes more than a viewer.
    ("GET", "/api/predictions"): P.DEPLOY,
    ("GET", "/api/predictions/export"): P.DEPLOY,
    ("GET", "/api/deployments/{name}/quality"): P.READ,
    ("POST", "/api/deployments/{name}/drift"): P.DEPLOY,
    ("GET", "/api/deployments/{name}/drift"): P.READ,
    ("GET", "/api/drift/{report_id}/report"): P.READ,
    ("GET", "/api/monitoring/cost"): P.READ,
    # evaluation and promotion (a policy may narrow who approves further)
    ("POST", "/api/models/{name}/versions/{version}/evaluations"): P.DEPLOY,
    ("POST", "/api/models/{name}/versions/{version}/export"): P.DEPLOY,  # registers a version
    ("GET", "/api/models/{name}/versions/{version}/evaluations"): P.READ,
    ("GET", "/api/evaluations/{evaluation_id}"): P.READ,
    ("GET", "/api/evaluations/{evaluation_id}/report"): P.READ,
    ("POST", "/api/deployments/{name}/replay"): P.DEPLOY,  # re-sends logged inputs
    ("GET", "/api/policies"): P.READ,
    ("POST", "/api/policies"): P.DEPLOY,
    ("GET", "/api/policies/{name}"): P.READ,
    ("POST", "/api/promotions"): P.DEPLOY,
    ("GET", "/api/promotions"): P.READ,
    ("GET", "/api/promotions/{promotion_id}"): P.READ,
    ("POST", "/api/promotions/{promotion_id}/approve"): P.DEPLOY,
    ("POST", "/api/promotions/{promotion_id}/reject"): P.DEPLOY,
    # the web console (ui/): pages read, actions need what the matching API needs
    ("GET", "/ui"): P.READ,
    ("GET", "/ui/login"): P.PUBLIC,
    ("POST", "/ui/login"): P.PUBLIC,
    ("POST", "/ui/logout"): P.PUBLIC,
    ("GET", "/ui/static/{file}"): P.PUBLIC,
    ("GET", "/ui/fragments/overview"): P.READ,
    ("GET", "/ui/models/{name}"): P.READ,
    ("POST", "/ui/models/{name}/aliases"): P.DEPLOY,
    ("GET", "/ui/deployments/{name}"): P.READ,
    ("GET", "/ui/deployments/{name}/live"): P.READ,
    ("POST", "/ui/deployments/{name}/apply"): P.DEPLOY,
    ("GET", "/ui/deployments/{name}/rollout"): P.READ,
    ("GET", "/ui/deployments/{name}/rollout/live"): P.READ,
    ("POST", "/ui/deployments/{name}/rollout"): P.DEPLOY,
    ("POST", "/ui/deployments/{name}/rollout/{action}"): P.DEPLOY,
    ("GET", "/ui/monitoring/{name}"): P.READ,
    ("GET", "/ui/predictions"): P.DEPLOY,  # logged inputs: as GET /api/predictions
    ("GET", "/ui/jobs"): P.READ,
    ("POST", "/ui/jobs/{job_id}/resume"): P.DEPLOY,
    ("GET", "/ui/audit"): P.ADMIN,
    ("GET", "/ui/keys"): P.ADMIN,
    ("POST", "/ui/keys"): P.ADMIN,
    ("POST", "/ui/keys/{key_id}/revoke"): P.ADMIN,
    # keys and audit
    ("GET", "/api/keys"): P.ADMIN,
    ("POST", "/api/keys"): P.ADMIN,
    ("POST", "/api/keys/{key_id}/revoke"): P.ADMIN,
    ("GET", "/api/audit"): P.ADMIN,
}

PIN_VERSION = P.DEPLOY
"""Pinning a request to a version (x-shipyard-version) bypasses a deployment's routing."""
LOAD_ON_DEMAND = P.DEPLOY
"""Loading is a deploy action: a request may load a version nobody deployed (not an
archived one) only for a caller who may deploy."""

GRPC_RULES: dict[str, Permission] = {
    "ServerLive": P.PUBLIC,
    "ServerReady": P.PUBLIC,
    "ServerMetadata": P.PUBLIC,
    "ModelReady": P.INFER,
    "ModelMetadata": P.INFER,
    "ModelInfer": P.INFER,
    "RepositoryIndex": P.READ,
    "RepositoryModelLoad": P.DEPLOY,
    "RepositoryModelUnload": P.DEPLOY,
}


def allows(role: str, permission: Permission) -> bool:
    return permission is Permission.PUBLIC or permission in ROLE_PERMISSIONS.get(role, ())
