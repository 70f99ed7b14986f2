"""An evaluation or replay result as one self-contained HTML page.

Same house style as monitoring/drift_report.py: inline CSS and hand-drawn SVG, no
scripts and no network, so the page can be saved, mailed or attached to a review.
Results are JSON documents (docs/promotion.md), read defensively: a field a result
lacks is shown as "—" rather than failing the page. Every string is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from shipyard.monitoring.drift_report import CURRENT_COLOR, REFERENCE_COLOR

CANDIDATE_COLOR = CURRENT_COLOR
CHAMPION_COLOR = REFERENCE_COLOR
MISSING = "—"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 75rem; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #666; margin-top: 0; }
.verdict { font-size: 1.3rem; font-weight: 600; padding: 0.6rem 1rem; border-radius: 6px; }
.fail { background: #fde2e1; color: #9b1c1c; } .ok { background: #e1f5e6; color: #1d6b35; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fff1f0; }
section { margin: 1.5rem 0; } svg text { font-size: 11px; fill: #333; }
"""

_Row = list[str]  # cells already escaped or formatted as HTML


def render_html(result: Mapping[str, Any], title: str) -> str:
    """The whole page for one evaluation or replay result (chosen by result["kind"])."""
    if result.get("kind") == "replay":
        sections = _replay_sections(result)
    else:
        sections = _evaluation_sections(result)
    subtitle = f"{result.get('kind', 'evaluation')} of {_version(result.get('candidate'))}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f'<h1>{escape(title)}</h1><p class="subtitle">{escape(subtitle)}</p>',
            _gates(result.get("gates")),
            *sections,
            "</body></html>",
        ]
    )


# --- evaluation -------------------------------------------------------------------------


def _evaluation_sections(result: Mapping[str, Any]) -> list[str]:
    return [
        _evaluation_summary(result),
        _metrics(result.get("metrics") or {}),
        _latency(result.get("latency") or {}),
        _resources(result.get("resources") or {}),
        _slices(result.get("slices") or []),
        _signature(result.get("signature")),
        _data_checks(result.get("data_checks")),
    ]


def _evaluation_summary(result: Mapping[str, Any]) -> str:
    data = result.get("data") or {}
    errors = result.get("errors") or {}
    rows = [
        ("Candidate", escape(_version(result.get("candidate")))),
        ("Champion", escape(_version(result.get("champion"), none="none"))),
        ("Task", _text(result.get("task"))),
        ("Data", _text(data.get("uri"))),
        ("Rows", _text(data.get("rows"))),
        ("Label", _text(data.get("label"))),
        ("Sliced by", _text(data.get("slice_by"), none="not sliced")),
        ("Data digest", _text(data.get("digest"))),
        ("Disagreement with champion", _number(result.get("disagreement"), ".2%")),
        ("Rows the candidate could not score", _text(errors.get("candidate"))),
        ("Rows the champion could not score", _text(errors.get("champion"))),
    ]
    return _section("Summary", _key_values(rows))


def _metrics(metrics: Mapping[str, Any]) -> str:
    candidate = metrics.get("candidate") or {}
    champion = metrics.get("champion")
    names = list(candidate)
    pairs = [(name, candidate.get(name), (champion or {}).get(name)) for name in names]
    return _section(
        "Metrics",
        _comparison_table("Metric", pairs, champion is not None)
        + _bar_chart(pairs, champion is not None, "metrics"),
    )


def _latency(latency: Mapping[str, Any]) -> str:
    candidate = latency.get("candidate") or {}
    champion = latency.get("champion")
    pairs = [(name, candidate.get(name), (champion or {}).get(name)) for name in candidate]
    return _section(
        "Latency (ms)",
        _comparison_table("Measure", pairs, champion is not None)
        + _bar_chart(pairs, champion is not None, "latency"),
    )


def _resources(resources: Mapping[str, Any]) -> str:
    candidate = resources.get("candidate") or {}
    champion = resources.get("champion")
    head = ["Resource", "Candidate", *(["Champion"] if champion is not None else [])]
    rows = [
        [escape(name), _bytes(value), *([_bytes(champion.get(name))] if champion else [])]
        for name, value in candidate.items()
    ]
    return _section("Resources", _table(head, rows, numeric_from=1))


def _slices(slices: list[Mapping[str, Any]]) -> str:
    if not slices:
        return _section("Slices", "<p>Not sliced.</p>")
    names = list(slices[0].get("candidate") or {})
    with_champion = any(s.get("champion") is not None for s in slices)
    head = ["Slice", "Rows"]
    for name in names:
        head += [f"{name} (candidate)", *([f"{name} (champion)"] if with_champion else [])]
    rows = [_slice_row(s, names, with_champion) for s in slices]
    return _section("Slices", _table(head, rows, numeric_from=1))


def _slice_row(slice_: Mapping[str, Any], names: list[str], with_champion: bool) -> _Row:
    candidate = slice_.get("candidate") or {}
    champion = slice_.get("champion") or {}
    row = [_text(slice_.get("value")), _text(slice_.get("rows"))]
    for name in names:
        row.append(_number(candidate.get(name)))
        if with_champion:
            row.append(_number(champion.get(name)))
    return row


def _signature(signature: Mapping[str, Any] | None) -> str:
    if signature is None:
        return _section("Signature", f"<p>{MISSING}</p>")
    compatible = bool(signature.get("compatible"))
    verdict = _verdict(compatible, "Compatible with the champion", "Breaking changes")
    lists = "".join(
        f"<h3>{heading}</h3>{_list(signature.get(key) or [])}"
        for heading, key in (("Breaking", "breaking"), ("Non-breaking", "non_breaking"))
    )
    return _section("Signature", verdict + lists)


def _data_checks(checks: Mapping[str, Any] | None) -> str:
    if checks is None:
        return _section("Data checks", f"<p>{MISSING}</p>")
    items = checks.get("checks") or []
    failed = sum(not c.get("passed") for c in items)
    verdict = _verdict(
        bool(checks.get("passed")), "All data checks passed", f"{failed} data checks failed"
    )
    head = ["Check", "Feature", "Passed", "Detail"]
    rows = [
        [
            _text(c.get("check")),
            _text(c.get("feature")),
            _yes_no(c.get("passed")),
            _text(c.get("detail")),
        ]
        for c in items
    ]
    failed_rows = {i for i, c in enumerate(items) if not c.get("passed")}
    return _section("Data checks", verdict + _table(head, rows, failed_rows=failed_rows))


# --- replay -----------------------------------------------------------------------------


def _replay_sections(result: Mapping[str, Any]) -> list[str]:
    return [
        _replay_summary(result),
        _logged_versions(result.get("logged_versions") or {}),
        _flips(result.get("flips") or []),
        _output_drift(result.get("output_drift")),
        _replay_errors(result),
    ]


def _replay_summary(result: Mapping[str, Any]) -> str:
    latency = result.get("latency") or {}
    window = result.get("window_seconds")
    rows = [
        ("Candidate", escape(_version(result.get("candidate")))),
        ("Deployment", _text(result.get("deployment"))),
        ("Window", MISSING if window is None else f"{_number(window, '.6g')} s"),
        ("Since (unix time)", _number(result.get("since"), ".3f")),
        ("Requests replayed", _text(result.get("requests"))),
        ("Rows", _text(result.get("rows"))),
        ("Output compared", _text(result.get("output"))),
        ("Agreement with logged outputs", _number(result.get("agreement"), ".2%")),
        ("Latency p50 (ms)", _number(latency.get("p50_ms"))),
        ("Latency p95 (ms)", _number(latency.get("p95_ms"))),
    ]
    return _section("Summary", _key_values(rows))


def _logged_versions(versions: Mapping[str, Any]) -> str:
    rows = [[_text(version), _text(rows)] for version, rows in versions.items()]
    return _section("Logged versions", _table(["Version", "Rows"], rows, numeric_from=1))


def _flips(flips: list[Mapping[str, Any]]) -> str:
    if not flips:
        return _section("Flips", "<p>No label changed.</p>")
    rows = [[_text(f.get("from")), _text(f.get("to")), _text(f.get("count"))] for f in flips]
    return _section("Flips", _table(["Logged", "Candidate", "Rows"], rows, numeric_from=2))


def _output_drift(drift: Mapping[str, Any] | None) -> str:
    if drift is None:
        return _section("Output drift", f"<p>{MISSING}</p>")
    rows = [
        ("KS statistic", _number(drift.get("ks"))),
        ("p-value", _number(drift.get("p_value"), ".3g")),
        ("PSI", _number(drift.get("psi"), ".3f")),
    ]
    return _section("Output drift", _key_values(rows))


def _replay_errors(result: Mapping[str, Any]) -> str:
    rows = [
        ("Errors", _text(result.get("errors"))),
        ("Error rate", _number(result.get("error_rate"), ".2%")),
    ]
    samples = result.get("error_samples") or []
    sample_list = f"<h3>Samples</h3>{_list(samples)}" if samples else ""
    return _section("Errors", _key_values(rows) + sample_list)


# --- shared pieces ----------------------------------------------------------------------


def _gates(gates: list[Mapping[str, Any]] | None) -> str:
    if not gates:
        return ""
    failed = sum(not g.get("passed") for g in gates)
    verdict = _verdict(not failed, "All gates passed", f"{failed} of {len(gates)} gates failed")
    rows = [
        [
            _text(g.get("gate")),
            _text(g.get("value")),
            _text(g.get("threshold")),
            _yes_no(g.get("passed")),
        ]
        for g in gates
    ]
    failed_rows = {i for i, g in enumerate(gates) if not g.get("passed")}
    table = _table(["Gate", "Value", "Threshold", "Passed"], rows, failed_rows=failed_rows)
    return _section("Gates", verdict + table)


def _comparison_table(label: str, pairs: list[tuple[str, Any, Any]], with_champion: bool) -> str:
    head = [label, "Candidate", *(["Champion", "Change"] if with_champion else [])]
    rows = []
    for name, candidate, champion in pairs:
        row = [escape(name), _number(candidate)]
        if with_champion:
            row += [_number(champion), _change(candidate, champion)]
        rows.append(row)
    return _table(head, rows, numeric_from=1)


def _change(candidate: Any, champion: Any) -> str:
    if not (_finite(candidate) and _finite(champion)):
        return MISSING
    return format(float(candidate) - float(champion), "+.4g")


# Hand-drawn SVG for the same reason as drift_report: two bar series need no plotting library.
def _bar_chart(pairs: list[tuple[str, Any, Any]], with_champion: bool, label: str) -> str:
    """Candidate (and champion) bars per name; each group scaled to its own largest value,
    since metrics differ in unit (a share, a loss, milliseconds)."""
    drawn = [(name, c, p) for name, c, p in pairs if _finite(c) or _finite(p)]
    if not drawn:
        return ""
    bar, group, plot_height, top, bottom = 18, 60, 120, 34, 60
    left = 80  # room for the first slanted name, which leans left of its bars
    series = 2 if with_champion else 1
    label = ("candidate and champion " if with_champion else "candidate ") + label
    width = max(left + group * len(drawn) + 10, 200)  # the legend needs 200
    baseline = top + plot_height
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{baseline + bottom}" role="img" aria-label="{escape(label)}">',
        f'<line x1="{left}" y1="{baseline}" x2="{width - 10}" y2="{baseline}" stroke="#999"/>',
        *_legend(10, 14, with_champion),
    ]
    for i, (name, candidate, champion) in enumerate(drawn):
        values = [(candidate, CANDIDATE_COLOR, "candidate")]
        if with_champion:
            values.append((champion, CHAMPION_COLOR, "champion"))
        peak = max((abs(float(v)) for v, _, _ in values if _finite(v)), default=0.0) or 1.0
        x0 = left + i * group + (group - series * bar) / 2
        for j, (value, color, who) in enumerate(values):
            parts.append(_bar(x0 + j * bar, baseline, bar, plot_height, value, peak, color, who))
        parts.append(_axis_label(name, x0 + series * bar / 2, baseline + 12))
    parts.append("</svg>")
    return "".join(parts)


def _bar(
    x: float, baseline: int, width: int, height: int, value: Any, peak: float, color: str, who: str
) -> str:
    if not _finite(value):
        middle = x + width / 2
        return f'<text x="{middle:.1f}" y="{baseline - 4}" text-anchor="middle">{MISSING}</text>'
    # Negative values (an r2 below zero) are drawn by size; the label keeps the sign.
    bar_height = height * abs(float(value)) / peak
    shown = format(float(value), ".3g")
    return (
        f'<rect x="{x:.1f}" y="{baseline - bar_height:.1f}" width="{width}" '
        f'height="{bar_height:.1f}" fill="{color}"><title>{who} {escape(shown)}</title></rect>'
        f'<text x="{x + width / 2:.1f}" y="{baseline - bar_height - 3:.1f}" '
        f'text-anchor="middle">{escape(shown)}</text>'
    )


def _axis_label(name: str, x: float, y: int) -> str:
    shown = name if len(name) <= 16 else name[:15] + "…"
    return (
        f'<text x="{x:.1f}" y="{y}" text-anchor="end" transform="rotate(-30 {x:.1f} {y})">'
        f"{escape(shown)}<title>{escape(name)}</title></text>"
    )


def _legend(x: int, y: int, with_champion: bool) -> list[str]:
    parts = [
        f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{CANDIDATE_COLOR}"/>',
        f'<text x="{x + 14}" y="{y}">candidate</text>',
    ]
    if with_champion:
        parts += [
            f'<rect x="{x + 84}" y="{y - 9}" width="10" height="10" fill="{CHAMPION_COLOR}"/>',
            f'<text x="{x + 98}" y="{y}">champion</text>',
        ]
    return parts


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{escape(heading)}</h2>{body}</section>"


def _verdict(passed: bool, ok: str, fail: str) -> str:
    css, text = ("ok", ok) if passed else ("fail", fail)
    return f'<p class="verdict {css}">{escape(text)}</p>'


def _key_values(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{escape(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{cells}</table>"


def _table(
    head: list[str],
    rows: list[_Row],
    numeric_from: int | None = None,
    failed_rows: set[int] | None = None,
) -> str:
    """A table of formatted cells; columns from `numeric_from` on are right-aligned numbers."""
    ths = "".join(f"<th>{escape(name)}</th>" for name in head)
    body = []
    for i, row in enumerate(rows):
        tds = "".join(
            f'<td class="num">{cell}</td>'
            if numeric_from is not None and j >= numeric_from
            else f"<td>{cell}</td>"
            for j, cell in enumerate(row)
        )
        row_class = ' class="failed"' if failed_rows and i in failed_rows else ""
        body.append(f"<tr{row_class}>{tds}</tr>")
    return f"<table><tr>{ths}</tr>{''.join(body)}</table>"


def _list(items: list[Any]) -> str:
    if not items:
        return "<p>None.</p>"
    return "<ul>" + "".join(f"<li>{escape(str(item))}</li>" for item in items) + "</ul>"


def _version(ref: Any, none: str = MISSING) -> str:
    """`model:version` from a {"model", "version"} reference (not escaped)."""
    if not isinstance(ref, Mapping):
        return none
    return f"{ref.get('model', MISSING)}:{ref.get('version', MISSING)}"


def _text(value: Any, none: str = MISSING) -> str:
    return escape(none if value is None else str(value))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, spec: str = ".4g") -> str:
    return format(float(value), spec) if _finite(value) else MISSING


def _yes_no(passed: Any) -> str:
    return "yes" if passed else "<strong>no</strong>"


def _bytes(value: Any) -> str:
    if not _finite(value):
        return MISSING
    mib = float(value) / 2**20
    return f"{int(value):,} ({mib:,.1f} MiB)"
