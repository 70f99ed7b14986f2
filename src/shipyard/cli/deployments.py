"""`shipyard apply` and `shipyard deployments …`: declarative endpoints with revisions."""

from __future__ import annotations

from pathlib import Path

import typer

from shipyard.cli.models import JsonOption, connect

app = typer.Typer(help="Deployments: list, show, history, rollback.", no_args_is_help=True)


def apply(
    file: Path = typer.Option(
        ..., "-f", "--file", exists=True, dir_okay=False, help="The deployment manifest (YAML)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the diff; change nothing."),
) -> None:
    """Make a manifest live: a new revision if it differs from the live one."""
    with connect() as client:
        result = client.apply(file.read_text(), dry_run=dry_run)
    for line in result.diff:
        typer.echo(line)
    if result.dry_run:
        typer.echo(f"dry run: {'would change' if result.changed else 'no change to'} "
                   f"{result.deployment} (live revision {result.revision})", err=True)  # fmt: skip
    elif result.changed:
        typer.echo(f"{result.deployment}: revision {result.revision} applied", err=True)
    else:
        typer.echo(f"{result.deployment}: unchanged (revision {result.revision})", err=True)


@app.command("list")
def list_deployments(json_output: bool = JsonOption) -> None:
    """Every deployment with its live revision."""
    with connect() as client:
        rows = client.list_deployments()
    if json_output:
        typer.echo("[" + ",".join(r.model_dump_json() for r in rows) + "]")
        return
    from shipyard.cli.output import print_table

    print_table(
        None,
        ["deployment", "revision", "model", "routes", "by", "at"],
        [
            [
                r.deployment,
                r.revision,
                r.manifest.model,
                ", ".join(f"{route.target}:{route.weight:g}" for route in r.manifest.routes),
                r.created_by,
                f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            ]
            for r in rows
        ],
    )


@app.command("show")
def show(name: str, json_output: bool = JsonOption) -> None:
    """The live revision's manifest and, from a server, how its model's versions are
    served: workers desired/ready/starting/draining and the last scaling decisions."""
    import json

    import yaml

    from shipyard.cli.models import show_serving
    from shipyard.registry.records import DeploymentRevision

    with connect() as client:
        status = client.deployment_status(name)
    if json_output:
        typer.echo(json.dumps(status))
        return
    live = DeploymentRevision.model_validate(status)
    typer.echo(f"# {live.deployment} revision {live.revision} by {live.created_by} "
               f"at {live.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    typer.echo(yaml.safe_dump(live.manifest.document(), sort_keys=False).rstrip())
    if status["serving"]:
        show_serving(status["serving"])


@app.command("history")
def history(name: str, json_output: bool = JsonOption) -> None:
    """Every revision, oldest first."""
    with connect() as client:
        rows = client.deployment_history(name)
    if json_output:
        typer.echo("[" + ",".join(r.model_dump_json() for r in rows) + "]")
        return
    from shipyard.cli.output import print_table

    print_table(
        None,
        ["revision", "reason", "by", "at"],
        [[r.revision, r.reason, r.created_by, f"{r.created_at:%Y-%m-%d %H:%M:%S}"] for r in rows],
    )


@app.command("rollback")
def rollback(
    name: str, to: int = typer.Option(..., "--to", help="Revision to go back to.")
) -> None:
    """Make an earlier revision live again (as a new revision)."""
    with connect() as client:
        live = client.rollback_deployment(name, to)
    typer.echo(f"{name}: revision {live.revision} now live (the manifest of revision {to})")


rollout_app = typer.Typer(
    help="Progressive rollouts with automatic rollback.", no_args_is_help=True
)


def _print_rollout(rollout: object, json_output: bool) -> None:
    from shipyard.registry.records import Rollout

    assert isinstance(rollout, Rollout)
    if json_output:
        typer.echo(rollout.model_dump_json())
        return
    typer.echo(
        f"rollout {rollout.id} of {rollout.deployment}: {rollout.state}, "
        f"{rollout.stable_version} -> {rollout.candidate_version}, "
        f"step {rollout.step_index + 1}/{len(rollout.steps)} ({rollout.weight}%)"
        + (f"; {rollout.reason}" if rollout.reason else "")
    )


@rollout_app.command("start")
def rollout_start(
    deployment: str,
    to: int = typer.Option(..., "--to", help="The candidate version."),
    steps: str | None = typer.Option(None, help="Candidate % per step, e.g. 5,25,50,100."),
    bake: str | None = typer.Option(None, help="Time at each step before gates: 30s, 5m, 1h."),
    min_requests: int | None = typer.Option(None, min=1, help="Candidate requests per step."),
    json_output: bool = JsonOption,
) -> None:
    """Start moving a deployment to a version; a running server steps and gates it."""
    from shipyard.errors import InvalidInput

    options: dict[str, object] = {"to": to, "min_requests": min_requests}
    if steps:
        try:
            options["steps"] = [int(s) for s in steps.split(",")]
        except ValueError:
            raise InvalidInput(
                f"--steps {steps!r}: use whole percentages like 5,25,50,100"
            ) from None
    if bake:
        units = {"s": 1, "m": 60, "h": 3600}
        if bake[-1] not in units or not bake[:-1].replace(".", "", 1).isdigit():
            raise InvalidInput(f"--bake {bake!r}: use 30s, 5m or 1h")
        options["bake_seconds"] = float(bake[:-1]) * units[bake[-1]]
    with connect() as client:
        rollout = client.start_rollout(deployment, **{k: v for k, v in options.items() if v})
    _print_rollout(rollout, json_output)


@rollout_app.command("status")
def rollout_status(deployment: str, json_output: bool = JsonOption) -> None:
    """The deployment's latest rollout and why it stands where it does."""
    with connect() as client:
        _print_rollout(client.rollout_status(deployment), json_output)


def _steer(action: str) -> None:
    def command(deployment: str, json_output: bool = JsonOption) -> None:
        with connect() as client:
            _print_rollout(client.rollout_action(deployment, action), json_output)

    command.__doc__ = {
        "promote": "Send all traffic to the candidate now.",
        "pause": "Hold the rollout at its step.",
        "resume": "Let a paused rollout go on.",
        "abort": "Send all traffic back to stable and stop.",
    }[action]
    rollout_app.command(action)(command)


for _action in ("promote", "pause", "resume", "abort"):
    _steer(_action)
