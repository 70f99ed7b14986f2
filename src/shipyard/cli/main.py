"""The `shipyard` command. Heavy imports happen inside commands so --help is instant."""

from __future__ import annotations

import sys

import typer

from shipyard.cli import (
    batch,
    build,
    cluster,
    deployments,
    edge,
    env,
    export,
    k8s,
    models,
    monitor,
    predict,
    promotion,
    security,
    serve,
    server,
    signing,
    stream,
)

app = typer.Typer(
    name="shipyard",
    help="Deploy machine-learning models and keep them healthy in production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models.app, name="models")
app.add_typer(env.app, name="env")
app.add_typer(security.keys_app, name="keys")
app.add_typer(deployments.app, name="deployments")
app.command("apply")(deployments.apply)
app.add_typer(deployments.rollout_app, name="rollout")
app.command("audit")(security.audit)
app.add_typer(monitor.app, name="monitor")
app.add_typer(batch.app, name="batch")
app.add_typer(stream.app, name="stream")
app.add_typer(k8s.app, name="k8s")
app.command("feedback")(monitor.feedback)
app.command("cluster")(cluster.cluster)
app.command("server")(server.server)
app.command("serve")(serve.serve)
app.command("build")(build.build)
app.command("serve-image")(build.serve_image)
app.command("predict")(predict.predict)
app.command("evaluate")(promotion.evaluate)
app.command("replay")(promotion.replay)
app.command("promote")(promotion.promote)
app.command("approve")(promotion.approve)
app.command("reject")(promotion.reject)
app.add_typer(promotion.evaluations_app, name="evaluations")
app.add_typer(promotion.policies_app, name="policies")
app.add_typer(promotion.promotions_app, name="promotions")
app.command("export")(export.export)
security.keys_app.add_typer(signing.app, name="signing")
app.command("bundle")(edge.bundle)
app.add_typer(edge.app, name="edge")


def main() -> None:
    """Console entry point: ShipyardError becomes one line on stderr and exit code 1."""
    from shipyard.errors import ShipyardError

    try:
        # Without standalone mode click hands back a typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except ShipyardError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and anything unexpected: one line, non-zero
        from typer.exceptions import TyperException

        # Typer carries its own copy of click: its usage errors are not click's classes.
        if isinstance(exc, TyperException) and hasattr(exc, "show"):
            exc.show()  # "Usage: … Try '… --help' … Error: Missing argument 'REF'."
            sys.exit(int(getattr(exc, "exit_code", 2)))
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
