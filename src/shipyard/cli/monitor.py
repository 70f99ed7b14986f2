"""`shipyard monitor …` and `shipyard feedback FILE`: watching models in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shipyard.cli.models import JsonOption, connect

app = typer.Typer(
    help="Watch deployments: drift, live quality, prediction log, cost.", no_args_is_help=True
)

FEEDBACK_PART = 5_000
"""Labels per call when sending a file (the server takes at most 10,000 at once)."""


def feedback(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help=".csv, .jsonl or .parquet"),
    id_column: str = typer.Option("request_id", help="Column holding the request id."),
    label_column: str = typer.Option("label", help="Column holding the true label."),
) -> None:
    """Send ground-truth labels in bulk, joined to predictions by request id."""
    items = _read_labels(file, id_column, label_column)
    accepted = matched = 0
    with connect() as client:
        for start in range(0, len(items), FEEDBACK_PART):
            result = client.send_feedback(items[start : start + FEEDBACK_PART])
            accepted += result["accepted"]
            matched += result["matched"]
    typer.echo(f"{accepted} labels recorded; {matched} match a logged prediction", err=True)


def _read_labels(file: Path, id_column: str, label_column: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    from shipyard.errors import InvalidInput

    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            # Ids stay text even when they look like numbers.
            options = pa_csv.ConvertOptions(column_types={id_column: pa.string()})
            table = pa_csv.read_csv(file, convert_options=options)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            table = pa_json.read_json(file)
        elif suffix in (".parquet", ".pq"):
            table = pq.read_table(file)
        else:
            raise InvalidInput(f"{file}: use .csv, .jsonl or .parquet, not {suffix or 'none'}")
    except pa.ArrowInvalid as exc:
        raise InvalidInput(f"cannot read {file}: {exc}") from None
    missing = [c for c in (id_column, label_column) if c not in table.column_names]
    if missing:
        raise InvalidInput(f"{file} has no column {missing[0]!r} (columns: {table.column_names})")
    ids = table.column(id_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    return [
        {"request_id": str(request_id), "label": label}
        for request_id, label in zip(ids, labels, strict=True)
        if request_id is not None
    ]


DRIFT_EXIT = 3
"""`monitor drift`'s exit status when a version drifted (1 and 2 are errors and usage)."""


@app.command("drift")
def drift(
    deployment: str,
    window: str = typer.Option(None, help="How far back, e.g. 1h (default: the manifest's)."),
    version: int = typer.Option(None, help="Only this version (default: every one that served)."),
    html: Path = typer.Option(
        None, help="Where to write the HTML report (default: drift-DEPLOYMENT-vVERSION.html)."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Check logged inputs against the reference sample now; write the HTML report.
    Exits 3 when a version drifted (0: none did), for scripts."""
    with connect() as client:
        reports = client.check_drift(deployment, window, version)
        pages = {report["id"]: client.drift_report_html(report["id"]) for report in reports}
    if json_output:
        from shipyard.cli.output import print_json

        print_json({"reports": reports})
    for report in reports:
        path = html if html is not None and len(reports) == 1 else None
        path = path or Path(f"drift-{deployment}-v{report['version']}.html")
        path.write_text(pages[report["id"]], encoding="utf-8")
        if not json_output:
            _print_report(report)
        typer.echo(f"report: {path}", err=True)
    if any(report["drifted"] for report in reports):
        raise typer.Exit(DRIFT_EXIT)  # for scripts: `shipyard monitor drift fraud || alert`


def _print_report(report: dict[str, Any]) -> None:
    from shipyard.cli.output import print_table

    result = report["result"]
    verdict = "DRIFT" if report["drifted"] else "no drift"
    if not result.get("enough_rows", True):
        verdict = f"no verdict (only {report['current_rows']} rows)"
    features = list(result.get("features", []))
    if result.get("output"):
        features.append({**result["output"], "name": "(output)"})
    from shipyard.monitoring.drift_report import rows_described

    rows = rows_described(report["current_rows"], result)
    print_table(
        f"{report['deployment']} {report['model']}:{report['version']}: {verdict}, "
        f"{report['share']:.0%} of features drifted ({rows})",
        ["feature", "kind", "test", "statistic", "p-value", "PSI", "drifted"],
        [
            [
                f["name"],
                f["kind"],
                f["test"],
                _number(f.get("statistic")),
                _number(f.get("p_value")),
                _number(f.get("psi")),
                "yes" if f.get("drifted") else "",
            ]
            for f in features
        ],
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


@app.command("history")
def history(deployment: str, limit: int = 20, json_output: bool = JsonOption) -> None:
    """Past drift checks of a deployment, newest first."""
    import time

    from shipyard.cli.output import print_json, print_table

    with connect() as client:
        reports = client.drift_history(deployment, limit)
    if json_output:
        print_json({"reports": reports})
        return
    print_table(
        f"drift checks of {deployment}",
        ["id", "at", "version", "trigger", "rows", "share", "drifted"],
        [
            [
                r["id"],
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["at"])),
                r["version"],
                r["trigger"],
                r["current_rows"],
                f"{r['share']:.0%}",
                "yes" if r["drifted"] else "",
            ]
            for r in reports
        ],
    )


@app.command("quality")
def quality(
    deployment: str,
    window: str = typer.Option("1h", help="How far back, e.g. 24h."),
    bucket: str = typer.Option(None, help="Also per time bucket, e.g. 10m."),
    json_output: bool = JsonOption,
) -> None:
    """Live quality per version from ground-truth feedback (accuracy/F1/AUC or MAE/RMSE)."""
    from shipyard.cli.output import print_json, print_table

    with connect() as client:
        answer = client.quality(deployment, window, bucket)
    if json_output:
        print_json(answer)
        return
    by_version: dict[str, dict[str, Any]] = answer["by_version"]
    metrics = sorted({k for m in by_version.values() for k in m if k != "count"})
    print_table(
        f"{deployment}: quality over the last {window} ({answer['labelled_rows']} labelled rows)",
        ["version", "count", *metrics],
        [
            [version, m.get("count"), *(_number(m.get(k)) for k in metrics)]
            for version, m in sorted(by_version.items())
        ],
    )
    if "auc" in metrics and any(
        m.get("auc") is None and m.get("count") for m in by_version.values()
    ):
        typer.echo(
            "auc is empty where the logged predictions carry no scores: it needs the model's "
            "predict_proba in the prediction log (a classifier with predict_proba, asked "
            "for that output or all outputs), and both classes among the labels",
            err=True,
        )
    for entry in answer.get("over_time", []):
        shown = {k: v for k, v in entry.items() if k not in ("version", "start", "end")}
        values = ", ".join(f"{k}={_number(v)}" for k, v in shown.items())
        typer.echo(f"v{entry['version']} {entry['start']:.0f}: {values}")


@app.command("predictions")
def predictions(
    deployment: str = typer.Option(None),
    model: str = typer.Option(None),
    version: int = typer.Option(None),
    since: str = typer.Option(None, help="ISO time, e.g. 2026-11-23T10:00:00+00:00"),
    until: str = typer.Option(None, help="ISO time"),
    limit: int = typer.Option(20, help="Records to show (newest first)."),
    export: Path = typer.Option(None, help="Write every matching record to this Parquet file."),
    json_output: bool = JsonOption,
) -> None:
    """Show the prediction log, or export it to Parquet."""
    from shipyard.cli.output import print_json, print_table

    filters = {
        "deployment": deployment,
        "model": model,
        "version": version,
        "since": since,
        "until": until,
    }
    with connect() as client:
        if export is not None:
            rows = client.export_predictions(export, **filters)
            typer.echo(f"{rows} rows written to {export}", err=True)
            return
        records = client.predictions(**filters, limit=limit)
    if json_output:
        print_json({"predictions": records})
        return
    import time

    print_table(
        None,
        ["at", "request id", "deployment", "version", "ms", "rows", "outputs"],
        [
            [
                time.strftime("%H:%M:%S", time.gmtime(r["at"])),
                r["request_id"],
                r["deployment"] or "",
                f"{r['model']}:{r['version']}",
                f"{r['latency_ms']:.1f}",
                r["rows"],
                str(r["outputs"])[:60],
            ]
            for r in records
        ],
    )


@app.command("cost")
def cost(json_output: bool = JsonOption) -> None:
    """Cost per 1,000 predictions per loaded version (a server with a price set)."""
    from shipyard.cli.output import print_json, print_table

    with connect() as client:
        usage = client.cost()
    if json_output:
        print_json({"cost": usage})
        return
    print_table(
        None,
        ["version", "rows", "cpu s", "replicas", "per 1k (cpu)", "per 1k (provisioned)"],
        [
            [
                f"{u['model']}:{u['version']}",
                u["rows"],
                f"{u['cpu_seconds']:.1f}",
                u["replicas"],
                _number(u["cost_per_1k"]),
                _number(u["provisioned_cost_per_1k"]),
            ]
            for u in usage
        ],
    )
