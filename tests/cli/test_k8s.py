"""`shipyard k8s render`: every object valid for a pinned Kubernetes (strict), the CRD
objects valid for their vendored schemas, and the behaviour that could go wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from shipyard.cli.k8s_manifests import Object, RenderOptions, render
from shipyard.cli.main import app
from shipyard.errors import InvalidInput
from shipyard.registry.manifest import parse_manifest

KUBERNETES = "1.33.0"
"""The Kubernetes whose schemas (bundled by kubernetes-validate) the objects must meet."""
SCHEMAS = Path(__file__).parent / "k8s_schemas"
ROOT = Path(__file__).parents[2]
OPTIONS = RenderOptions(
    image="registry.example/shipyard:0.1.0",
    artifact_root="s3://models/shipyard",
    namespace="ml",
    replicas=2,
    max_replicas=8,
)

SCALING = """\
name: fraud-api
model: fraud
routes: [{alias: production, weight: 100}]
scaling: {min_workers: 1, max_workers: 3, target_ongoing_requests: 4,
          upscale_delay: 45, downscale_delay: 600}
"""
TO_ZERO = """\
name: nightly-api
model: nightly
routes: [{version: 2, weight: 100}]
scaling: {max_workers: 2, upscale_delay: 7.5, downscale_delay: 120, scale_to_zero_after: 900}
"""


def rendered(text: str, options: RenderOptions = OPTIONS) -> list[Object]:
    return render(parse_manifest(text), options).objects


def by_kind(objects: list[Object]) -> dict[str, Object]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object of each kind"
    return kinds


def strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation reads it: an object
    schema with properties refuses others unless it says it keeps unknown fields."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


def validate(obj: Object) -> None:
    """Raises if `obj` does not meet its schema: Kubernetes' own, or a vendored CRD's."""
    crd = CRDS.get((obj["apiVersion"], obj["kind"]))
    if crd is None:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        return
    schema = strict(json.loads((SCHEMAS / crd).read_text()))
    jsonschema.Draft202012Validator(schema).validate(obj)
    # The CRD leaves metadata open; hold it to ObjectMeta through any built-in kind.
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
        KUBERNETES,
        strict=True,
    )


@pytest.mark.parametrize("text", [SCALING, TO_ZERO], ids=["hpa", "scale-to-zero"])
def test_every_object_is_valid(text: str) -> None:
    objects = rendered(text)
    assert {o["kind"] for o in objects} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    }
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("kind", ["Deployment", "HorizontalPodAutoscaler", "ServiceMonitor"])
def test_validation_is_strict(kind: str) -> None:
    """A misspelt field fails: the checks above would catch a typo in the renderer."""
    obj = copy.deepcopy(by_kind(rendered(SCALING))[kind])
    obj["spec"]["replicaz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)


def test_scaled_object_validation_is_strict() -> None:
    obj = copy.deepcopy(by_kind(rendered(TO_ZERO))["ScaledObject"])
    obj["spec"]["triggers"][0]["metdata"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)


def test_hpa_windows_are_the_manifest_delays() -> None:
    kinds = by_kind(rendered(SCALING))
    assert "ScaledObject" not in kinds
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 45},
        "scaleDown": {"stabilizationWindowSeconds": 600},
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["scaleTargetRef"]["name"] == "fraud-api"
    [metric] = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "shipyard_inflight_requests"
    # 4 ongoing requests per worker x 3 workers per pod
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "12"}
    # the autoscaler owns the count: re-applying must not reset it
    assert "replicas" not in kinds["Deployment"]["spec"]


def test_a_delay_past_the_hpa_limit_is_clamped_and_said() -> None:
    text = SCALING.replace("downscale_delay: 600", "downscale_delay: 7200")
    result = render(parse_manifest(text), OPTIONS)
    hpa = by_kind(result.objects)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 3600}
    assert any("downscale_delay of 7200s" in note for note in result.notes)


def test_scale_to_zero_gives_a_scaled_object_and_no_hpa() -> None:
    kinds = by_kind(rendered(TO_ZERO))
    assert "HorizontalPodAutoscaler" not in kinds
    spec = kinds["ScaledObject"]["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 8)
    assert spec["cooldownPeriod"] == 900
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 8},  # 7.5 s rounded up
        "scaleDown": {"stabilizationWindowSeconds": 120},
    }
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (
        'sum(shipyard_inflight_requests{namespace="ml",service="nightly-api"})'
    )
    assert trigger["metadata"]["threshold"] == "4"  # default 2 per worker x 2 workers


def test_a_worker_floor_keeps_the_hpa() -> None:
    """scale_to_zero_after with min_workers above 0 never unloads: no scale to zero."""
    text = TO_ZERO.replace("{max_workers: 2,", "{min_workers: 1, max_workers: 2,")
    kinds = by_kind(rendered(text))
    assert "ScaledObject" not in kinds and "HorizontalPodAutoscaler" in kinds


def test_fixed_replicas_need_no_autoscaler() -> None:
    options = RenderOptions(image="i", artifact_root="gs://b/p", replicas=3, max_replicas=3)
    kinds = by_kind(rendered(SCALING, options))
    assert not {"HorizontalPodAutoscaler", "ScaledObject"} & kinds.keys()
    assert kinds["Deployment"]["spec"]["replicas"] == 3
    assert "namespace" not in kinds["Deployment"]["metadata"]  # kubectl -n decides
    for obj in kinds.values():
        validate(obj)


def test_security_context() -> None:
    pod = by_kind(rendered(SCALING))["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the read-only root leaves /tmp and SHIPYARD_HOME writable, and nothing else
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/data": "data"}
    assert {v["name"]: v for v in pod["volumes"]} == {
        "tmp": {"name": "tmp", "emptyDir": {}},
        "data": {"name": "data", "emptyDir": {}},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["SHIPYARD_HOME"]["value"] == "/data"
    assert env["SHIPYARD_ARTIFACT_ROOT"]["value"] == "s3://models/shipyard"
    assert env["SHIPYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "fraud-api-secrets",
        "key": "database-url",
    }
    assert env["SHIPYARD_MEMORY_BUDGET"]["value"] == str(2 * 2**30 * 4 // 5)  # 80% of 2Gi


def test_probes_ports_and_service() -> None:
    kinds = by_kind(rendered(SCALING))
    [container] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loads
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
    ]
    service = kinds["Service"]["spec"]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in service["ports"]] == [
        ("http", 8000, "http"),
        ("grpc", 8001, "grpc"),
    ]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["selector"],
        kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    monitor = kinds["ServiceMonitor"]["spec"]
    assert (
        monitor["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"]["labels"].items()
    )
    assert monitor["endpoints"][0]["path"] == "/metrics"


def test_a_local_artifact_root_is_refused() -> None:
    """Replicas share nothing on their own disks: a path would split the fleet."""
    for root in ("/data/artifacts", "file:///data/artifacts"):
        options = RenderOptions(image="i", artifact_root=root)
        with pytest.raises(InvalidInput, match="object store"):
            render(parse_manifest(SCALING), options)


def test_the_command_never_renders_a_secret(tmp_path: Path) -> None:
    """Secrets in the environment of whoever renders stay out of the output."""
    manifest = tmp_path / "fraud.yaml"
    manifest.write_text(SCALING)
    secrets = {
        "SHIPYARD_DATABASE_URL": "postgresql://shipyard:hunter2-db@db:5432/shipyard",
        "SHIPYARD_API_KEY": "sk-hunter2-key",
        "SHIPYARD_JWT_SECRET": "hunter2-jwt",
    }
    args = [
        "k8s",
        "render",
        "-f",
        str(manifest),
        "--image",
        "img:1",
        "--artifact-root",
        "s3://models/shipyard",
        "--secret",
        "shipyard-prod",
    ]
    result = CliRunner().invoke(app, args, env=secrets)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert [o["kind"] for o in objects] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ]
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in objects[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert refs and set(refs) == {"shipyard-prod"}
    assert "Secret" not in {o["kind"] for o in objects}


def test_the_example_output_is_current() -> None:
    """deploy/k8s/iris-api.yaml is what the command renders for the quickstart manifest."""
    example = ROOT / "deploy" / "k8s" / "iris-api.yaml"
    manifest = parse_manifest((ROOT / "examples" / "iris-deployment.yaml").read_text())
    options = RenderOptions(
        image="ghcr.io/example/shipyard:0.1.0",
        artifact_root="s3://example-models/shipyard",
        namespace="shipyard",
    )
    objects = render(manifest, options).objects
    on_disk = [doc for doc in yaml.safe_load_all(example.read_text()) if doc is not None]
    assert on_disk == objects, f"regenerate {example.relative_to(ROOT)} (see its header)"
    for obj in on_disk:
        validate(obj)
