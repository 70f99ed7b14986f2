"""The Kubernetes objects that run one deployment manifest as a fleet of `shipyard server`
pods: pure (manifest and options in, plain objects out), so tests call it directly.

Secrets are referenced by name and key, never read: nothing here sees their values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from shipyard.config import DEFAULT_SCALING, ScalingOptions
from shipyard.errors import InvalidInput
from shipyard.registry.manifest import DeploymentManifest

HTTP_PORT = 8000
GRPC_PORT = 8001
UID = 10001
"""The image's non-root user (the Dockerfile creates it with this uid)."""
DATA_DIR = "/data"
HPA_MAX_WINDOW = 3600
"""autoscaling/v2 refuses a stabilization window above one hour."""
STARTUP_SECONDS = 600
"""How long a pod may take to come up (model loads) before liveness checks start."""

Object = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """What the manifest does not say about running the fleet; the CLI's flags."""

    image: str
    artifact_root: str
    """The object store every replica shares (s3://, gs://, az://…)."""
    namespace: str | None = None
    """None: the objects carry no namespace and `kubectl apply -n` decides."""
    replicas: int = 2
    max_replicas: int = 10
    secret: str | None = None
    """The Secret holding database-url (and optional keys); default NAME-secrets."""
    cpu: str = "1"
    memory: str = "2Gi"
    cpu_limit: str | None = None
    """None: no CPU limit (CFS throttling hurts tail latency more than it protects)."""
    target_inflight: float | None = None
    """In-flight requests per pod the autoscaler aims at; None: from the manifest."""
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_annotations: bool = False
    database_port: int = 5432
    database_cidr: str | None = None
    """None: egress to the database port is open to any address (narrow it)."""
    object_store_port: int = 443


@dataclass(frozen=True, slots=True)
class Rendered:
    objects: list[Object]
    notes: list[str] = field(default_factory=list)
    """Adjustments worth telling the operator (a clamped window, say)."""


def render(manifest: DeploymentManifest, options: RenderOptions) -> Rendered:
    """Deployment, Service, HPA (or a KEDA ScaledObject for scale to zero), PDB,
    NetworkPolicy and ServiceMonitor for `manifest`'s fleet."""
    _check(options)
    notes: list[str] = []
    name = manifest.name
    scaling = _scaling(manifest)
    to_zero = scales_to_zero(scaling)
    fixed = options.replicas == options.max_replicas and not to_zero
    objects = [
        _deployment(manifest, options, replicas=options.replicas if fixed else None),
        _service(name, options),
    ]
    if not fixed:
        behavior = _behavior(scaling, notes)
        target = _target_inflight(scaling, options)
        if to_zero:
            assert scaling is not None and scaling.scale_to_zero_after is not None
            objects.append(
                _scaled_object(
                    name, options, behavior, target, cooldown=math.ceil(scaling.scale_to_zero_after)
                )
            )
        else:
            objects.append(_hpa(name, options, behavior, target))
    objects += [
        _pdb(name, options),
        _network_policy(name, options),
        _service_monitor(name, options),
    ]
    return Rendered(objects, notes)


def scales_to_zero(scaling: ScalingOptions | None) -> bool:
    """The manifest asks for scale to zero: an idle time to unload after, with no
    worker floor above zero (the server's own rule for unloading)."""
    return (
        scaling is not None
        and scaling.scale_to_zero_after is not None
        and not scaling.min_workers  # None (server default 0) or 0
    )


def _scaling(manifest: DeploymentManifest) -> ScalingOptions | None:
    options = manifest.serving_options
    return options.scaling if options is not None else None


def _check(options: RenderOptions) -> None:
    if not 1 <= options.replicas <= options.max_replicas:
        raise InvalidInput(
            f"replicas must be at least 1 and at most max replicas ({options.max_replicas})"
        )
    if "://" not in options.artifact_root or options.artifact_root.startswith("file://"):
        raise InvalidInput(
            "the artifact root must be an object store every replica shares (s3://, gs://, "
            f"az://…), not {options.artifact_root!r}"
        )
    for quantity in (options.cpu, options.memory, options.cpu_limit):
        if quantity is not None and not _QUANTITY.fullmatch(quantity):
            raise InvalidInput(f"{quantity!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)")


_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
_BYTES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?", quantity)
    if match is None:
        raise InvalidInput(f"memory {quantity!r} must be in bytes (e.g. 2Gi, 1500M)")
    return int(float(match.group(1)) * _BYTES[match.group(2) or ""])


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/instance": name}


def _metadata(name: str, options: RenderOptions, **extra: Any) -> Object:
    meta: Object = {"name": name}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    meta["labels"] = {
        **_labels(name),
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "shipyard-k8s-render",
    }
    meta.update(extra)
    return meta


def _secret_env(variable: str, secret: str, key: str, *, optional: bool) -> Object:
    ref: Object = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": variable, "valueFrom": {"secretKeyRef": ref}}


def _probe(path: str, *, period: int, failures: int, timeout: int) -> Object:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _deployment(
    manifest: DeploymentManifest, options: RenderOptions, replicas: int | None
) -> Object:
    name = manifest.name
    secret = options.secret or f"{name}-secrets"
    memory_bytes = _bytes(options.memory)
    env = [
        _secret_env("SHIPYARD_DATABASE_URL", secret, "database-url", optional=False),
        _secret_env("SHIPYARD_JWT_SECRET", secret, "jwt-secret", optional=True),
        _secret_env("SHIPYARD_API_KEY", secret, "api-key", optional=True),
        {"name": "SHIPYARD_ARTIFACT_ROOT", "value": options.artifact_root},
        {"name": "SHIPYARD_HOME", "value": DATA_DIR},
        # What GET /api/cluster shows for this replica: its pod address, not 0.0.0.0.
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "SHIPYARD_ADVERTISE_URL", "value": f"http://$(POD_IP):{HTTP_PORT}"},
        # The server's default budget is 80% of the machine's memory, which inside a pod
        # is the node's: hold the workers to 80% of this container's limit instead.
        {"name": "SHIPYARD_MEMORY_BUDGET", "value": str(memory_bytes * 4 // 5)},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},  # the root fs is read-only
        {"name": "HOME", "value": "/tmp"},  # libraries that cache under ~ get a writable one
    ]
    limits = {"memory": options.memory}
    if options.cpu_limit is not None:
        limits["cpu"] = options.cpu_limit
    container: Object = {
        "name": "shipyard",
        "image": options.image,
        "command": [
            "shipyard",
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(HTTP_PORT),
            "--grpc-port",
            str(GRPC_PORT),
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory}, "limits": limits},
        # Startup gates liveness while models load; readiness then says "can serve".
        "startupProbe": _probe(
            "/v2/health/live", period=5, failures=STARTUP_SECONDS // 5, timeout=3
        ),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3, timeout=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3, timeout=5),
        # Endpoints take a few seconds to drop a terminating pod: keep serving meanwhile.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "data", "mountPath": DATA_DIR},
        ],
    }
    annotations = {"shipyard.dev/deployment": name}
    if options.prometheus_annotations:
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(HTTP_PORT),
            "prometheus.io/path": "/metrics",
        }
    spec: Object = {
        "selector": {"matchLabels": _labels(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        },
        "template": {
            "metadata": {"labels": _metadata(name, options)["labels"], "annotations": annotations},
            "spec": {
                "automountServiceAccountToken": False,  # the server never calls the API
                "terminationGracePeriodSeconds": 30,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": UID,
                    "runAsGroup": UID,
                    "fsGroup": UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": _labels(name)},
                    }
                ],
                "containers": [container],
                "volumes": [
                    {"name": "tmp", "emptyDir": {}},
                    {"name": "data", "emptyDir": {}},
                ],
            },
        },
    }
    if replicas is not None:  # otherwise the autoscaler owns the count: apply must not reset it
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, options),
        "spec": spec,
    }


def _service(name: str, options: RenderOptions) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, options),
        "spec": {
            "selector": _labels(name),
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
            ],
        },
    }


def _window(seconds: float, what: str, notes: list[str]) -> int:
    window = math.ceil(seconds)
    if window > HPA_MAX_WINDOW:
        notes.append(
            f"{what} of {seconds:g}s is above the autoscaler's {HPA_MAX_WINDOW}s "
            f"limit: its stabilization window is {HPA_MAX_WINDOW}s"
        )
        return HPA_MAX_WINDOW
    return window


def _behavior(scaling: ScalingOptions | None, notes: list[str]) -> Object:
    """Stabilization windows from the manifest's delays; a delay it leaves out takes
    the server's default, so replicas and workers follow load at the same pace."""
    up = DEFAULT_SCALING.upscale_delay
    down = DEFAULT_SCALING.downscale_delay
    if scaling is not None:
        up = up if scaling.upscale_delay is None else scaling.upscale_delay
        down = down if scaling.downscale_delay is None else scaling.downscale_delay
    return {
        "scaleUp": {"stabilizationWindowSeconds": _window(up, "upscale_delay", notes)},
        "scaleDown": {"stabilizationWindowSeconds": _window(down, "downscale_delay", notes)},
    }


def _target_inflight(scaling: ScalingOptions | None, options: RenderOptions) -> float:
    """In-flight requests per pod to aim at: what the manifest asks of each worker times
    the workers a pod runs at most (its max_workers, else one per requested core)."""
    if options.target_inflight is not None:
        return options.target_inflight
    per_worker = DEFAULT_SCALING.target_ongoing_requests
    workers = max(1, math.ceil(_cores(options.cpu)))
    if scaling is not None:
        per_worker = scaling.target_ongoing_requests or per_worker
        workers = scaling.max_workers or workers
    return per_worker * workers


def _cores(cpu: str) -> float:
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _quantity(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{round(value * 1000)}m"


INFLIGHT_METRIC = "shipyard_inflight_requests"


def _hpa(name: str, options: RenderOptions, behavior: Object, target: float) -> Object:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas,
            # Served to the HPA by prometheus-adapter (docs/deploying.md has the rule).
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": INFLIGHT_METRIC},
                        "target": {"type": "AverageValue", "averageValue": _quantity(target)},
                    },
                }
            ],
            "behavior": behavior,
        },
    }


def _scaled_object(
    name: str, options: RenderOptions, behavior: Object, target: float, *, cooldown: int
) -> Object:
    selector = f'service="{name}"'
    if options.namespace is not None:
        selector = f'namespace="{options.namespace}",{selector}'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(name, options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": 0,
            "maxReplicaCount": options.max_replicas,
            "cooldownPeriod": cooldown,  # the manifest's scale_to_zero_after
            "pollingInterval": 15,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": options.prometheus_url,
                        "query": f"sum({INFLIGHT_METRIC}{{{selector}}})",
                        "threshold": _quantity(target),  # per replica: KEDA divides by pods
                        "activationThreshold": "0",
                    },
                }
            ],
        },
    }


def _pdb(name: str, options: RenderOptions) -> Object:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, options),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}},
    }


def _network_policy(name: str, options: RenderOptions) -> Object:
    """Ingress to the two ports from anywhere; egress to DNS, the database port and the
    object store port. The operator narrows `from` and the peers to their network."""
    database: Object = {"ports": [{"protocol": "TCP", "port": options.database_port}]}
    if options.database_cidr is not None:
        database["to"] = [{"ipBlock": {"cidr": options.database_cidr}}]
    dns_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, options),
        "spec": {
            "podSelector": {"matchLabels": _labels(name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "ports": [
                        {"protocol": "TCP", "port": HTTP_PORT},
                        {"protocol": "TCP", "port": GRPC_PORT},
                    ]
                }
            ],
            "egress": [
                {
                    "to": [dns_peer],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                database,
                {"ports": [{"protocol": "TCP", "port": options.object_store_port}]},
            ],
        },
    }


def _service_monitor(name: str, options: RenderOptions) -> Object:
    secret = options.secret or f"{name}-secrets"
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(name, options),
        "spec": {
            "selector": {"matchLabels": _labels(name)},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": "15s",
                    # With API keys on, /metrics needs a viewer's key.
                    "authorization": {
                        "type": "Bearer",
                        "credentials": {"name": secret, "key": "metrics-key", "optional": True},
                    },
                }
            ],
        },
    }
