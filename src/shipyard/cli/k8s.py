"""`shipyard k8s render`: print the Kubernetes objects that run a deployment as a fleet."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Kubernetes: render manifests for a fleet.", no_args_is_help=True)


@app.command("render")
def render(
    file: Path = typer.Option(
        ..., "-f", "--file", exists=True, dir_okay=False, help="The deployment manifest (YAML)."
    ),
    image: str = typer.Option(..., help="The Shipyard container image (runs as uid 10001)."),
    artifact_root: str = typer.Option(
        ..., help="Object store URI every replica shares, e.g. s3://bucket/shipyard."
    ),
    namespace: str | None = typer.Option(None, help="Namespace (default: kubectl's -n)."),
    replicas: int = typer.Option(2, help="Fewest replicas (with scale to zero: 0 when idle)."),
    max_replicas: int = typer.Option(10, help="Most replicas; equal to --replicas: no autoscaler."),
    secret: str | None = typer.Option(
        None,
        help="Secret with database-url (and optional jwt-secret, api-key, metrics-key); "
        "default NAME-secrets. Only its name is rendered.",
    ),
    cpu: str = typer.Option("1", help="CPU request per pod."),
    memory: str = typer.Option("2Gi", help="Memory request and limit per pod."),
    cpu_limit: str | None = typer.Option(None, help="CPU limit per pod (default none)."),
    target_inflight: float | None = typer.Option(
        None,
        help="In-flight requests per pod to scale at (default: the manifest's "
        "target_ongoing_requests x max_workers, else 2 per requested core).",
    ),
    prometheus_url: str = typer.Option(
        "http://prometheus-operated.monitoring.svc:9090", help="Prometheus for KEDA's trigger."
    ),
    prometheus_annotations: bool = typer.Option(
        False, help="Also add prometheus.io/scrape annotations to the pods."
    ),
    database_port: int = typer.Option(5432, help="Database port the NetworkPolicy lets out."),
    database_cidr: str | None = typer.Option(None, help="Database address range (default any)."),
    object_store_port: int = typer.Option(443, help="Object store port the policy lets out."),
) -> None:
    """Deployment, Service, HPA (or KEDA ScaledObject for scale to zero), PodDisruptionBudget,
    NetworkPolicy and ServiceMonitor, as YAML documents on stdout."""
    import yaml

    from shipyard.cli.k8s_manifests import RenderOptions
    from shipyard.cli.k8s_manifests import render as render_objects
    from shipyard.registry.manifest import parse_manifest

    manifest = parse_manifest(file.read_text(), where=str(file))
    options = RenderOptions(
        image=image,
        artifact_root=artifact_root,
        namespace=namespace,
        replicas=replicas,
        max_replicas=max_replicas,
        secret=secret,
        cpu=cpu,
        memory=memory,
        cpu_limit=cpu_limit,
        target_inflight=target_inflight,
        prometheus_url=prometheus_url,
        prometheus_annotations=prometheus_annotations,
        database_port=database_port,
        database_cidr=database_cidr,
        object_store_port=object_store_port,
    )
    rendered = render_objects(manifest, options)
    typer.echo(yaml.safe_dump_all(rendered.objects, sort_keys=False, explicit_start=True), nl=False)
    for note in rendered.notes:
        typer.echo(f"note: {note}", err=True)
