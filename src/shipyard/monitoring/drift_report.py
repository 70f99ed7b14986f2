"""A drift result as one self-contained HTML page: verdict, feature table, histograms.

Inline CSS and SVG only (no scripts, no network), so the page can be saved, mailed or
served as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from shipyard.monitoring.drift import DriftResult, FeatureDrift, Histogram

REFERENCE_COLOR = "#7f93ad"
CURRENT_COLOR = "#e0792b"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #666; margin-top: 0; }
.verdict { font-size: 1.3rem; font-weight: 600; padding: 0.6rem 1rem; border-radius: 6px; }
.drift { background: #fde2e1; color: #9b1c1c; } .ok { background: #e1f5e6; color: #1d6b35; }
.unknown { background: #eee; color: #555; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.drifted td { background: #fff1f0; }
section { margin: 1.5rem 0; } svg text { font-size: 11px; fill: #333; }
"""


def rows_described(current_rows: int, result: Mapping[str, Any]) -> str:
    """How many rows a stored drift result tested, and how many of them came from
    requests the version failed on (their inputs are logged too, with no outputs)."""
    failed = int(result.get("failed_rows", 0))
    text = f"{current_rows} rows"
    if failed:
        text += (
            f", {failed} of them from requests the version failed on: inputs logged, no "
            "outputs, so the output test uses answered rows only"
        )
    return text


def render_html(result: DriftResult, title: str, subtitle: str = "") -> str:
    """The whole page for one drift result."""
    sections = [_histogram_section(feature) for feature in result.features]
    if result.output is not None:
        sections.append(_histogram_section(result.output, heading="Prediction drift (output)"))
    subtitle_html = f'<p class="subtitle">{escape(subtitle)}</p>' if subtitle else ""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(title)}</h1>{subtitle_html}",
            _summary(result),
            _feature_table(result),
            "<h2>Distributions</h2>",
            *sections,
            "</body></html>",
        ]
    )


def _summary(result: DriftResult) -> str:
    thresholds = result.thresholds
    tested = [feature for feature in result.features if feature.enough_rows]
    drifted = sum(feature.drifted for feature in tested)
    if not result.enough_rows:
        verdict = (
            '<p class="verdict unknown">No verdict: only '
            f"{result.current_rows} current rows (need {thresholds.min_rows})</p>"
        )
    elif result.drifted:
        verdict = '<p class="verdict drift">Dataset drift detected</p>'
    else:
        verdict = '<p class="verdict ok">No dataset drift</p>'
    psi_rule = "not used" if thresholds.psi is None else f"≥ {thresholds.psi:g}"
    rows = [
        ("Drifted features", f"{drifted} of {len(tested)} tested ({result.share:.0%})"),
        ("Dataset drifts when", f"≥ {thresholds.share:.0%} of features drift"),
        ("Feature drifts when", f"p-value < {thresholds.p_value:g} or PSI {psi_rule}"),
        ("Minimum rows", str(thresholds.min_rows)),
        ("Reference rows", str(result.reference_rows)),
        ("Current rows", str(result.current_rows)),
    ]
    cells = "".join(f"<tr><th>{name}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    return f"{verdict}<table>{cells}</table>"


def _feature_table(result: DriftResult) -> str:
    features = [*result.features, *([result.output] if result.output else [])]
    head = "".join(
        f"<th>{name}</th>"
        for name in ("Feature", "Kind", "Test", "Statistic", "p-value", "PSI", "Rows", "Drifted")
    )
    body = "".join(_feature_row(feature, feature is result.output) for feature in features)
    return f"<h2>Features</h2><table><tr>{head}</tr>{body}</table>"


def _feature_row(feature: FeatureDrift, is_output: bool) -> str:
    name = escape(feature.name) + (" <em>(output, not counted)</em>" if is_output else "")
    if not feature.enough_rows:
        verdict = "no verdict"
    else:
        verdict = "<strong>yes</strong>" if feature.drifted else "no"
    rows = f"{feature.reference_rows} / {feature.current_rows}"
    missing = feature.reference_missing + feature.current_missing
    if missing:
        rows += f" ({feature.reference_missing} / {feature.current_missing} missing)"
    cells = [
        name,
        escape(feature.kind),
        escape(feature.test),
        _number(feature.statistic, ".4g"),
        _number(feature.p_value, ".3g"),
        _number(feature.psi, ".3f"),
        rows,
        verdict,
    ]
    row_class = ' class="drifted"' if feature.drifted else ""
    tds = "".join(
        f'<td class="num">{cell}</td>' if 3 <= i <= 5 else f"<td>{cell}</td>"
        for i, cell in enumerate(cells)
    )
    return f"<tr{row_class}>{tds}</tr>"


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "—"


def _histogram_section(feature: FeatureDrift, heading: str | None = None) -> str:
    title = escape(heading or feature.name)
    mark = " — drifted" if feature.drifted else ""
    return (
        f"<section><h3>{title}{mark}</h3>"
        f"<p>{escape(feature.kind)}, {escape(feature.test)} test, "
        f"p-value {_number(feature.p_value, '.3g')}, PSI {_number(feature.psi, '.3f')}</p>"
        f"{_histogram_svg(feature.histogram)}</section>"
    )


# Hand-drawn SVG on purpose: a plotting library would be a heavy dependency for two bar series.
def _histogram_svg(histogram: Histogram) -> str:
    bar, group, plot_height = 16, 44, 150
    left, top, label_space = 56, 28, 70
    width = left + group * len(histogram.labels) + 10
    height = top + plot_height + label_space
    peak = max([*histogram.reference, *histogram.current, 0.0]) or 1.0
    baseline = top + plot_height

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="reference and current shares per bin">',
        f'<line x1="{left}" y1="{baseline}" x2="{width - 10}" y2="{baseline}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:.0%}</text>',
        f'<text x="{left - 4}" y="{baseline}" text-anchor="end">0%</text>',
        *_legend(left, 14),
    ]
    series = zip(histogram.labels, histogram.reference, histogram.current, strict=True)
    for i, (label, ref_share, cur_share) in enumerate(series):
        x = left + i * group + (group - 2 * bar) / 2
        for offset, share, color, who in (
            (0, ref_share, REFERENCE_COLOR, "reference"),
            (bar, cur_share, CURRENT_COLOR, "current"),
        ):
            bar_height = plot_height * share / peak
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{baseline - bar_height:.1f}" width="{bar}" '
                f'height="{bar_height:.1f}" fill="{color}">'
                f"<title>{escape(label)}: {who} {share:.1%}</title></rect>"
            )
        shown = label if len(label) <= 14 else label[:13] + "…"
        label_x, label_y = x + bar, baseline + 12
        parts.append(
            f'<text x="{label_x:.1f}" y="{label_y}" text-anchor="end" '
            f'transform="rotate(-40 {label_x:.1f} {label_y})">{escape(shown)}'
            f"<title>{escape(label)}</title></text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(x: int, y: int) -> list[str]:
    return [
        f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{REFERENCE_COLOR}"/>',
        f'<text x="{x + 14}" y="{y}">reference</text>',
        f'<rect x="{x + 84}" y="{y - 9}" width="10" height="10" fill="{CURRENT_COLOR}"/>',
        f'<text x="{x + 98}" y="{y}">current</text>',
    ]
