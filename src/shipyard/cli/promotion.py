"""`shipyard evaluate | replay | promote | approve | reject`, `shipyard evaluations …` and
`shipyard policies …`: model CI/CD from the command line (docs/promotion.md).

`promote` exits 1 when a gate fails, so a CI job fails with it; the table it prints
names each gate with its value and threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from shipyard.cli.models import JsonOption, connect

if TYPE_CHECKING:
    from shipyard.registry import records

evaluations_app = typer.Typer(help="Stored evaluations and replays.", no_args_is_help=True)
policies_app = typer.Typer(help="Promotion policies stored in the registry.", no_args_is_help=True)
promotions_app = typer.Typer(help="Promotions and their gates.", no_args_is_help=True)

FAILED_GATES_EXIT = 1


def evaluate(
    ref: str = typer.Argument(..., help="The candidate: NAME:VERSION or NAME@ALIAS."),
    data: Path = typer.Option(..., "--data", help="Holdout .csv or .parquet."),
    label: str = typer.Option(..., "--label", help="Column of true values."),
    against: str = typer.Option("production", help="Champion: an alias or a version number."),
    slice_by: str | None = typer.Option(None, "--slice-by", help="Report metrics per value."),
    max_rows: int | None = typer.Option(None, min=1, help="Evaluate on the first N rows only."),
    report: Path | None = typer.Option(None, help="Also write the HTML report here."),
    as_json: bool = JsonOption,
) -> None:
    """Score a version and its champion on the same rows, in worker processes."""
    _need_file(data, "--data")
    with connect() as client:
        found = client.evaluate(ref, data, label, against, slice_by, max_rows)
        html = client.evaluation_report(found.id) if report and found.result else None
    if html is not None and report is not None:
        report.write_text(html)
    _print_evaluation(found, as_json)
    _exit_if_failed(found)


def replay(
    deployment: str = typer.Argument(..., help="Whose logged traffic to re-send."),
    to: str = typer.Option(..., "--to", help="The candidate: NAME:VERSION."),
    window: str = typer.Option("24h", help="How far back in the prediction log."),
    limit: int | None = typer.Option(None, min=1, help="Newest requests at most."),
    as_json: bool = JsonOption,
) -> None:
    """Re-send logged inputs to a candidate, off the live path, and compare its answers."""
    with connect() as client:
        found = client.replay(deployment, to, window, limit)
    _print_evaluation(found, as_json)
    _exit_if_failed(found)


def _exit_if_failed(found: records.Evaluation) -> None:
    """A server runs it in the background: a failure arrives as a state, not an error."""
    if found.state == "failed":
        raise typer.Exit(1)


def promote(
    ref: str = typer.Argument(..., help="The candidate: NAME:VERSION."),
    policy: Path = typer.Option(..., "--policy", help="The promotion policy (YAML)."),
    data: Path | None = typer.Option(None, "--data", help="Holdout; overrides the policy's."),
    label: str | None = typer.Option(None, "--label", help="Column of true values."),
    slice_by: str | None = typer.Option(None, "--slice-by", help="Overrides the policy's."),
    as_json: bool = JsonOption,
) -> None:
    """Run the policy's gates; on success move the alias or start rollouts (or wait for
    approval). Exits 1 when a gate fails."""
    _need_file(policy, "--policy")
    if data is not None:
        _need_file(data, "--data")
    else:
        data = policy_data(policy)
    with connect() as client:
        promotion = client.promote(ref, policy.read_text(), data, label, slice_by)
    _print_promotion(promotion, as_json)
    if promotion.state.value == "failed":
        raise typer.Exit(FAILED_GATES_EXIT)


def policy_data(policy: Path) -> Path | None:
    """The policy's own data file, found beside the policy (or from here), so that the
    CLI uploads it to a server; None for a URI the evaluating process reads itself."""
    from shipyard.promotion.policy import parse_policy

    parsed = parse_policy(policy.read_text(), str(policy))
    if parsed.data is None or "://" in parsed.data.path:
        return None
    for candidate in (policy.parent / parsed.data.path, Path(parsed.data.path)):
        if candidate.is_file():
            return candidate
    return None


def approve(
    target: str = typer.Argument(..., help="NAME:VERSION (its waiting promotion) or an id."),
    reason: str = typer.Option("", help="Why, for the audit trail."),
    as_json: bool = JsonOption,
) -> None:
    """Approve a promotion waiting for approval; it then acts."""
    _decide(target, True, reason, as_json)


def reject(
    target: str = typer.Argument(..., help="NAME:VERSION (its waiting promotion) or an id."),
    reason: str = typer.Option("", help="Why, for the audit trail."),
    as_json: bool = JsonOption,
) -> None:
    """Reject a promotion waiting for approval."""
    _decide(target, False, reason, as_json)


def _decide(target: str, approve: bool, reason: str, as_json: bool) -> None:
    with connect() as client:
        promotion_id = _promotion_id(client, target)
        promotion = client.decide(promotion_id, approve, reason)
    _print_promotion(promotion, as_json)


def _promotion_id(client: Any, target: str) -> int:
    """An id as given, or the newest promotion of NAME:VERSION waiting for approval."""
    from shipyard.errors import NotFound
    from shipyard.registry.refs import parse_ref

    if target.isdigit():
        return int(target)
    version = client.get_version(parse_ref(target))
    for promotion in client.promotions(version.model):
        if promotion.version == version.version and promotion.state.value == "awaiting_approval":
            return int(promotion.id)
    raise NotFound(f"{version.model}:{version.version} has no promotion awaiting approval")


@evaluations_app.command("list")
def list_evaluations(
    ref: str = typer.Argument(..., help="NAME:VERSION."), as_json: bool = JsonOption
) -> None:
    """Evaluations and replays of a version, newest first."""
    with connect() as client:
        found = client.evaluations(ref)
    if as_json:
        _json(found)
        return
    show_evaluations(found)


@evaluations_app.command("show")
def show_evaluation(
    evaluation_id: int = typer.Argument(...),
    report: Path | None = typer.Option(None, help="Write the HTML report here."),
    as_json: bool = JsonOption,
) -> None:
    """One evaluation or replay in full."""
    with connect() as client:
        found = client.evaluation(evaluation_id)
        if report is not None:
            report.write_text(client.evaluation_report(evaluation_id))
    _print_evaluation(found, as_json)


@policies_app.command("apply")
def apply_policy(
    policy: Path = typer.Argument(..., help="The policy file (YAML)."), as_json: bool = JsonOption
) -> None:
    """Store a policy (a new revision when it changed); its on_register then applies."""
    _need_file(policy, "policy")
    with connect() as client:
        stored = client.apply_policy(policy.read_text())
    if as_json:
        _json(stored)
    else:
        typer.echo(f"policy {stored.name} revision {stored.revision} ({stored.digest[:12]})")


@policies_app.command("list")
def list_policies(as_json: bool = JsonOption) -> None:
    """The newest revision of every stored policy."""
    from shipyard.cli.output import print_table

    with connect() as client:
        found = client.policies()
    if as_json:
        _json(found)
        return
    print_table(None, ["name", "revision", "model", "alias", "approval", "on register", "by"],
                [(p.name, p.revision, p.document.get("model", "any"),
                  p.document.get("alias"), _approval(p.document),
                  (p.document.get("on_register") or {}).get("alias", ""), p.created_by)
                 for p in found])  # fmt: skip


@promotions_app.command("list")
def list_promotions(
    model: str | None = typer.Argument(None, help="Only this model's."), as_json: bool = JsonOption
) -> None:
    """Promotions, newest first."""
    from shipyard.cli.output import print_table

    with connect() as client:
        found = client.promotions(model)
    if as_json:
        _json(found)
        return
    print_table(None, ["id", "version", "policy", "alias", "state", "reason", "by", "at"],
                [(p.id, f"{p.model}:{p.version}", f"{p.policy}#{p.policy_revision}", p.alias,
                  p.state.value, p.reason[:80], p.requested_by,
                  f"{p.updated_at:%Y-%m-%d %H:%M:%S}") for p in found])  # fmt: skip


@promotions_app.command("show")
def show_promotion(promotion_id: int = typer.Argument(...), as_json: bool = JsonOption) -> None:
    """One promotion with its gate table."""
    with connect() as client:
        found = client.promotion(promotion_id)
    _print_promotion(found, as_json)


def _approval(document: dict[str, Any]) -> str:
    approval = document.get("approval") or {}
    if not approval.get("required"):
        return "no"
    roles = ", ".join(approval.get("roles") or ["admin"])
    return roles + (" (four eyes)" if approval.get("four_eyes") else "")


def _need_file(path: Path, option: str) -> None:
    from shipyard.errors import InvalidInput

    if not path.is_file():
        raise InvalidInput(f"{option}: no such file: {path}")


def _json(value: Any) -> None:
    from shipyard.cli.output import print_json

    print_json(value)


def show_evaluations(found: list[records.Evaluation]) -> None:
    from shipyard.cli.output import print_table

    print_table("evaluations", ["id", "kind", "against", "state", "summary", "at"],
                [(e.id, e.kind, e.deployment or (e.against or ""), e.state, _summary(e),
                  f"{e.created_at:%Y-%m-%d %H:%M:%S}") for e in found])  # fmt: skip


def _summary(evaluation: records.Evaluation) -> str:
    result = evaluation.result
    if result is None:
        return evaluation.error[:80]
    if evaluation.kind == "replay":
        agreement = result.get("agreement")
        shown = "n/a" if agreement is None else f"{agreement:.3f}"
        return f"{result.get('requests')} requests, agreement {shown}"
    metrics = (result.get("metrics") or {}).get("candidate") or {}
    return ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4] if v is not None)


def _print_evaluation(found: records.Evaluation, as_json: bool) -> None:
    from shipyard.cli.output import print_fields, print_table

    if as_json:
        _json(found)
        return
    result = found.result or {}
    print_fields(f"{found.kind} {found.id} of {found.model}:{found.version}", [
        ("state", found.state), ("against", found.deployment or found.against),
        ("error", found.error or None), ("report", f"/api/evaluations/{found.id}/report"),
    ])  # fmt: skip
    if not result:
        return
    if found.kind == "replay":
        print_fields("replay", [(key, result.get(key)) for key in (
            "requests", "rows", "agreement", "error_rate", "output_drift", "latency")])  # fmt: skip
        flips = result.get("flips") or []
        if flips:
            print_table("flips", ["from", "to", "count"],
                        [(f["from"], f["to"], f["count"]) for f in flips])  # fmt: skip
        return
    metrics = result.get("metrics") or {}
    candidate, champion = metrics.get("candidate") or {}, metrics.get("champion") or {}
    print_table("metrics", ["metric", "candidate", "champion"],
                [(k, _num(v), _num(champion.get(k))) for k, v in candidate.items()])  # fmt: skip
    latency = result.get("latency") or {}
    print_table("latency (ms)", ["", *(latency.get("candidate") or {})],
                [(who, *map(_num, (latency.get(who) or {}).values()))
                 for who in ("candidate", "champion") if latency.get(who)])  # fmt: skip
    signature = result.get("signature") or {}
    checks = result.get("data_checks") or {}
    print_fields("checks", [
        ("disagreement", _num(result.get("disagreement"))),
        ("signature", "compatible" if signature.get("compatible") else
         "; ".join(signature.get("breaking") or [])),
        ("data checks", "passed" if checks.get("passed") else "; ".join(
            f"{c['check']} {c['feature']}" for c in checks.get("checks") or []
            if not c.get("passed"))),
    ])  # fmt: skip
    if result.get("gates"):
        print_gates(result["gates"])


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def print_gates(gates: list[dict[str, Any]]) -> None:
    from shipyard.cli.output import print_table

    print_table("gates", ["gate", "value", "threshold", "result"],
                [(g["gate"], g["value"], g["threshold"], "pass" if g["passed"] else "FAIL")
                 for g in gates])  # fmt: skip


def _print_promotion(promotion: records.Promotion, as_json: bool) -> None:
    from shipyard.cli.output import print_fields

    if as_json:
        _json(promotion)
        return
    if promotion.gates:
        print_gates(promotion.gates)
    print_fields(f"promotion {promotion.id} of {promotion.model}:{promotion.version}", [
        ("policy", f"{promotion.policy}#{promotion.policy_revision}"),
        ("alias", promotion.alias), ("state", promotion.state.value),
        ("reason", promotion.reason), ("evaluation", promotion.evaluation_id),
        ("replay", promotion.replay_id), ("previous version", promotion.previous_version),
        ("rollouts", ", ".join(f"{r['deployment']}#{r['rollout']}" for r in promotion.rollouts)
         or None),
        ("decided by", promotion.decided_by), ("baking until", promotion.baking_until),
    ])  # fmt: skip
