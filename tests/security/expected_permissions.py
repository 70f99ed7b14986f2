"""Who may call what, written by hand from the documentation, not from the code under test.

Sources: the role table in docs/security.md, the route tables in docs/api.md,
docs/promotion.md, docs/edge.md and docs/packaging.md, the page table in docs/console.md,
and docs/serving.md for the data plane. Nothing here is imported from
`shipyard.security.policy`: a wrong rule there must disagree with this file, so that
test_permissions_table.py fails. Change a row only when the documented behaviour changes
(and change the docs with it).
"""

from __future__ import annotations

ANONYMOUS = "anonymous"
IDENTITIES = (ANONYMOUS, "viewer", "predictor", "deployer", "admin")

# The role table of docs/security.md, spelled out as who holds each kind of access.
EVERYONE = frozenset(IDENTITIES)
"""Health, readiness, server metadata, version and the OpenAPI document: public."""
READERS = frozenset({"viewer", "deployer", "admin"})
"""The registry, /metrics, the repository index, quality, drift history and reports, cost
(viewer; a deployer is viewer + predictor + more)."""
CALLERS = frozenset({"predictor", "deployer", "admin"})
"""Inference, model metadata and readiness, ground-truth feedback (predictor)."""
DEVICES = frozenset({"viewer", "predictor", "deployer", "admin"})
"""Edge bundles: what a device polls, with a viewer's or a predictor's key (docs/edge.md)."""
DEPLOYERS = frozenset({"deployer", "admin"})
"""Register, tag, alias, archive, load/unload, deployments and rollouts, drift checks,
the prediction log (logged inputs may be personal data)."""
ADMINS = frozenset({"admin"})
"""Keys and the audit trail."""

REST: dict[tuple[str, str], frozenset[str]] = {
    # The OpenAPI document and FastAPI's pages that show it (docs/api.md): public.
    ("GET", "/openapi.json"): EVERYONE,
    ("GET", "/docs"): EVERYONE,
    ("GET", "/docs/oauth2-redirect"): EVERYONE,
    ("GET", "/redoc"): EVERYONE,
    # Health, server metadata, version (docs/security.md "Roles", docs/serving.md).
    ("GET", "/api/health"): EVERYONE,
    ("GET", "/v2"): EVERYONE,
    ("GET", "/v2/health/live"): EVERYONE,
    ("GET", "/v2/health/ready"): EVERYONE,
    ("GET", "/ping"): EVERYONE,
    ("GET", "/health"): EVERYONE,
    ("GET", "/version"): EVERYONE,
    # The data plane (docs/serving.md): inference and model metadata/readiness.
    ("GET", "/v2/models/{name}"): CALLERS,
    ("GET", "/v2/models/{name}/ready"): CALLERS,
    ("GET", "/v2/models/{name}/versions/{version}"): CALLERS,
    ("GET", "/v2/models/{name}/versions/{version}/ready"): CALLERS,
    ("POST", "/v2/models/{name}/infer"): CALLERS,
    ("POST", "/v2/models/{name}/versions/{version}/infer"): CALLERS,
    ("POST", "/invocations"): CALLERS,
    ("POST", "/deployments/{deployment}/invocations"): CALLERS,
    # The repository extension: the index is read, load/unload is deploy.
    ("POST", "/v2/repository/index"): READERS,
    ("POST", "/v2/repository/models/{name}/load"): DEPLOYERS,
    ("POST", "/v2/repository/models/{name}/unload"): DEPLOYERS,
    ("GET", "/metrics"): READERS,
    ("GET", "/api/cluster"): READERS,
    # The registry (docs/api.md): reading is a viewer's, every change a deployer's.
    ("GET", "/api/models"): READERS,
    ("GET", "/api/models/{name}"): READERS,
    ("POST", "/api/models/{name}/archive"): DEPLOYERS,
    ("PUT", "/api/models/{name}/tags/{key}"): DEPLOYERS,
    ("DELETE", "/api/models/{name}/tags/{key}"): DEPLOYERS,
    ("GET", "/api/models/{name}/versions"): READERS,
    ("POST", "/api/models/{name}/versions"): DEPLOYERS,
    ("GET", "/api/models/{name}/versions/{version}"): READERS,
    ("POST", "/api/models/{name}/versions/{version}/archive"): DEPLOYERS,
    ("PUT", "/api/models/{name}/versions/{version}/tags/{key}"): DEPLOYERS,
    ("DELETE", "/api/models/{name}/versions/{version}/tags/{key}"): DEPLOYERS,
    ("PUT", "/api/models/{name}/aliases/{alias}"): DEPLOYERS,
    ("DELETE", "/api/models/{name}/aliases/{alias}"): DEPLOYERS,
    ("POST", "/api/models/{name}/scaling"): DEPLOYERS,
    ("POST", "/api/models/{name}/versions/{version}/scaling"): DEPLOYERS,
    # docs/packaging.md: "viewer | deployer"; export: "deployer role".
    ("GET", "/api/models/{name}/versions/{version}/environment"): READERS,
    ("POST", "/api/models/{name}/versions/{version}/environment"): DEPLOYERS,
    ("POST", "/api/models/{name}/versions/{version}/export"): DEPLOYERS,
    # docs/edge.md: "viewer, predictor (...), deployer, admin".
    ("GET", "/api/models/{name}/bundles/{alias}"): DEVICES,
    ("GET", "/api/models/{name}/bundles/{alias}/download"): DEVICES,
    # Deployments and rollouts (docs/deployments.md, docs/console.md: deployers steer).
    ("GET", "/api/deployments"): READERS,
    ("POST", "/api/deployments"): DEPLOYERS,
    ("GET", "/api/deployments/{name}"): READERS,
    ("GET", "/api/deployments/{name}/history"): READERS,
    ("POST", "/api/deployments/{name}/rollback"): DEPLOYERS,
    ("GET", "/api/deployments/{name}/rollout"): READERS,
    ("POST", "/api/deployments/{name}/rollout"): DEPLOYERS,
    ("POST", "/api/deployments/{name}/rollout/{action}"): DEPLOYERS,
    # Monitoring (docs/api.md, docs/monitoring.md).
    ("POST", "/api/feedback"): CALLERS,
    ("GET", "/api/predictions"): DEPLOYERS,
    ("GET", "/api/predictions/export"): DEPLOYERS,
    ("GET", "/api/deployments/{name}/quality"): READERS,
    ("POST", "/api/deployments/{name}/drift"): DEPLOYERS,
    ("GET", "/api/deployments/{name}/drift"): READERS,
    ("GET", "/api/drift/{report_id}/report"): READERS,
    ("GET", "/api/monitoring/cost"): READERS,
    # Evaluation and promotion (docs/promotion.md "REST API": read / deploy).
    ("POST", "/api/models/{name}/versions/{version}/evaluations"): DEPLOYERS,
    ("GET", "/api/models/{name}/versions/{version}/evaluations"): READERS,
    ("GET", "/api/evaluations/{evaluation_id}"): READERS,
    ("GET", "/api/evaluations/{evaluation_id}/report"): READERS,
    ("POST", "/api/deployments/{name}/replay"): DEPLOYERS,
    ("GET", "/api/policies"): READERS,
    ("POST", "/api/policies"): DEPLOYERS,
    ("GET", "/api/policies/{name}"): READERS,
    ("POST", "/api/promotions"): DEPLOYERS,
    ("GET", "/api/promotions"): READERS,
    ("GET", "/api/promotions/{promotion_id}"): READERS,
    ("POST", "/api/promotions/{promotion_id}/approve"): DEPLOYERS,
    ("POST", "/api/promotions/{promotion_id}/reject"): DEPLOYERS,
    # Keys and the audit trail (docs/security.md "API keys", "Audit trail"): admin.
    ("GET", "/api/keys"): ADMINS,
    ("POST", "/api/keys"): ADMINS,
    ("POST", "/api/keys/{key_id}/revoke"): ADMINS,
    ("GET", "/api/audit"): ADMINS,
    # The console (docs/console.md): signing in and its files are open; pages need a role
    # that may read (a predictor is refused); each action the role its page names.
    ("GET", "/ui/login"): EVERYONE,
    ("POST", "/ui/login"): EVERYONE,
    ("POST", "/ui/logout"): EVERYONE,
    ("GET", "/ui/static/{file}"): EVERYONE,
    ("GET", "/ui"): READERS,
    ("GET", "/ui/fragments/overview"): READERS,
    ("GET", "/ui/models/{name}"): READERS,
    ("POST", "/ui/models/{name}/aliases"): DEPLOYERS,
    ("GET", "/ui/deployments/{name}"): READERS,
    ("GET", "/ui/deployments/{name}/live"): READERS,
    ("POST", "/ui/deployments/{name}/apply"): DEPLOYERS,
    ("GET", "/ui/deployments/{name}/rollout"): READERS,
    ("GET", "/ui/deployments/{name}/rollout/live"): READERS,
    ("POST", "/ui/deployments/{name}/rollout"): DEPLOYERS,
    ("POST", "/ui/deployments/{name}/rollout/{action}"): DEPLOYERS,
    ("GET", "/ui/monitoring/{name}"): READERS,
    ("GET", "/ui/predictions"): DEPLOYERS,
    ("GET", "/ui/jobs"): READERS,
    ("POST", "/ui/jobs/{job_id}/resume"): DEPLOYERS,
    ("GET", "/ui/audit"): ADMINS,
    ("GET", "/ui/keys"): ADMINS,
    ("POST", "/ui/keys"): ADMINS,
    ("POST", "/ui/keys/{key_id}/revoke"): ADMINS,
}

GRPC: dict[str, frozenset[str]] = {
    # The V2 gRPC service, as its REST twins above.
    "ServerLive": EVERYONE,
    "ServerReady": EVERYONE,
    "ServerMetadata": EVERYONE,
    "ModelReady": CALLERS,
    "ModelMetadata": CALLERS,
    "ModelInfer": CALLERS,
    "RepositoryIndex": READERS,
    "RepositoryModelLoad": DEPLOYERS,
    "RepositoryModelUnload": DEPLOYERS,
}

# A key made with `--model OWN` (docs/security.md "scopes hold everywhere", docs/edge.md)
# reaches OWN and is refused (403) on OTHER, on every route that names a model; a
# deployment counts as the model it routes to. Each row: the key's role, method, and path
# with `{model}` (filled with OWN, then OTHER) or `{deployment}` (a deployment of each).
SCOPED_REST: tuple[tuple[str, str, str], ...] = (
    ("predictor", "GET", "/v2/models/{model}"),
    ("predictor", "GET", "/v2/models/{model}/ready"),
    ("predictor", "GET", "/v2/models/{model}/versions/1"),
    ("predictor", "GET", "/v2/models/{model}/versions/1/ready"),
    ("predictor", "POST", "/v2/models/{model}/infer"),
    ("predictor", "POST", "/v2/models/{model}/versions/1/infer"),
    ("predictor", "GET", "/v2/models/{deployment}"),
    ("predictor", "GET", "/v2/models/{deployment}/ready"),
    ("predictor", "POST", "/v2/models/{deployment}/infer"),
    ("predictor", "POST", "/deployments/{deployment}/invocations"),
    ("predictor", "GET", "/api/models/{model}/bundles/latest"),
    ("predictor", "GET", "/api/models/{model}/bundles/latest/download"),
    # "/api/models/{name}/… (aliases, tags, versions), load/unload, prediction-log queries"
    ("deployer", "GET", "/api/models/{model}"),
    ("deployer", "GET", "/api/models/{model}/versions"),
    ("deployer", "GET", "/api/models/{model}/versions/1"),
    ("deployer", "PUT", "/api/models/{model}/tags/team"),
    ("deployer", "DELETE", "/api/models/{model}/tags/team"),
    ("deployer", "PUT", "/api/models/{model}/versions/1/tags/team"),
    ("deployer", "PUT", "/api/models/{model}/aliases/production"),
    ("deployer", "POST", "/v2/repository/models/{model}/load"),
    ("deployer", "GET", "/api/predictions?model={model}"),
    ("deployer", "GET", "/api/predictions/export?model={model}"),
    ("deployer", "GET", "/api/deployments/{deployment}/quality"),
)
SCOPED_GRPC: tuple[str, ...] = ("ModelReady", "ModelMetadata", "ModelInfer")
"""For a predictor key: each called with OWN, OTHER and a deployment of each."""
# Feedback is scoped too (docs/security.md): a limited key labels only logged predictions
# of its models; another model's request id, and an unknown one, get 403.
