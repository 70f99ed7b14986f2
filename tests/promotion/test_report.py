"""HTML reports of hand-written evaluation and replay results."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from shipyard.promotion.report import render_html

EVALUATION: dict[str, Any] = {
    "kind": "evaluation",
    "candidate": {"model": "churn", "version": 3},
    "champion": {"model": "churn", "version": 2},
    "data": {
        "uri": "/data/holdout.csv",
        "rows": 1200,
        "label": "churned",
        "digest": "ab" * 32,
        "slice_by": "region",
    },
    "task": "classification",
    "metrics": {
        "candidate": {"accuracy": 0.9125, "f1": 0.875, "roc_auc": None},
        "champion": {"accuracy": 0.8625, "f1": 0.8, "roc_auc": None},
    },
    "slices": [
        {
            "value": "north & <east>",
            "rows": 700,
            "candidate": {"accuracy": 0.95, "f1": 0.9, "roc_auc": None},
            "champion": {"accuracy": 0.85, "f1": 0.8, "roc_auc": None},
        },
        {
            "value": "south",
            "rows": 500,
            "candidate": {"accuracy": 0.86, "f1": 0.84, "roc_auc": None},
            "champion": {"accuracy": 0.88, "f1": 0.8, "roc_auc": None},
        },
    ],
    "disagreement": 0.0625,
    "latency": {
        "candidate": {
            "one_row_p50_ms": 1.5,
            "one_row_p95_ms": 3.25,
            "batch32_p50_ms": 4.0,
            "batch32_p95_ms": 7.5,
        },
        "champion": {
            "one_row_p50_ms": 1.25,
            "one_row_p95_ms": 2.5,
            "batch32_p50_ms": 3.0,
            "batch32_p95_ms": 6.0,
        },
    },
    "resources": {
        "candidate": {"artifact_bytes": 2097152, "worker_memory_bytes": 104857600},
        "champion": {"artifact_bytes": 1048576, "worker_memory_bytes": 94371840},
    },
    "signature": {
        "compatible": False,
        "breaking": ["input f3 removed"],
        "non_breaking": ["output predict_proba added (FP64 [-1, 2])"],
    },
    "data_checks": {
        "passed": False,
        "checks": [
            {"check": "columns", "feature": "<script>", "passed": True, "detail": "present"},
            {
                "check": "unseen_categories",
                "feature": "<script>",
                "passed": False,
                "detail": "1 unseen categories in 4 of 1200 rows: '<b>'",
            },
        ],
    },
    "errors": {"candidate": 2, "champion": 0},
    "gates": [
        {"gate": "accuracy >= champion", "value": "0.9125", "threshold": "0.8625", "passed": True},
        {"gate": "signature compatible", "value": "false", "threshold": "true", "passed": False},
    ],
}

REPLAY: dict[str, Any] = {
    "kind": "replay",
    "candidate": {"model": "churn", "version": 3},
    "deployment": "churn-prod",
    "window_seconds": 3600.0,
    "since": 1700000000.0,
    "requests": 250,
    "rows": 400,
    "logged_versions": {"2": 380, "1": 20},
    "output": "predict",
    "agreement": 0.9575,
    "flips": [
        {"from": "no", "to": "yes", "count": 12},
        {"from": "<yes>", "to": "no", "count": 5},
    ],
    "output_drift": {"ks": 0.041, "p_value": 0.87, "psi": 0.012},
    "error_rate": 0.004,
    "errors": 1,
    "error_samples": ["ValueError: <bad> input"],
    "latency": {"p50_ms": 2.75, "p95_ms": 9.5},
}


class _Outline(HTMLParser):
    """Counts the elements a page opens, to check it is one well-formed document."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] = self.starts.get(tag, 0) + 1


def outline(page: str) -> dict[str, int]:
    parser = _Outline()
    parser.feed(page)
    parser.close()
    return parser.starts


def text_of(page: str) -> str:
    """Visible text, entities left as written, tags removed."""
    return re.sub(r"<[^>]+>", " ", page)


def test_evaluation_page_is_one_document_with_charts() -> None:
    page = render_html(EVALUATION, "churn v3 <vs> v2")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<html") == 1 and page.rstrip().endswith("</html>")
    tags = outline(page)
    assert tags["html"] == tags["body"] == tags["head"] == 1
    assert tags["svg"] == 2  # metrics and latency
    assert "script" not in tags
    assert "<title>churn v3 &lt;vs&gt; v2</title>" in page


def test_evaluation_page_shows_the_numbers() -> None:
    text = text_of(render_html(EVALUATION, "report"))
    for expected in [
        "churn:3",
        "churn:2",
        "1200",
        "6.25%",  # disagreement
        "0.9125",
        "0.8625",
        "+0.05",  # accuracy change, 0.9125 - 0.8625
        "+0.075",  # f1 change
        "3.25",  # one-row p95 latency
        "2,097,152 (2.0 MiB)",
        "100.0 MiB",
        "input f3 removed",
        "output predict_proba added (FP64 [-1, 2])",
        "north &amp; &lt;east&gt;",
        "700",
        "0.95",
        "1 of 2 gates failed",
        "signature compatible",
    ]:
        assert expected in text, expected


def test_gates_come_first() -> None:
    page = render_html(EVALUATION, "report")
    assert page.index("Gates") < page.index("Summary") < page.index("Metrics")


def test_every_string_is_escaped() -> None:
    page = render_html(EVALUATION, "report")
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "<b>" not in page and "&#x27;&lt;b&gt;&#x27;" in page
    assert "<east>" not in page


def test_undefined_metrics_show_a_dash_and_draw_no_bar() -> None:
    page = render_html(EVALUATION, "report")
    roc_row = re.search(r"<tr><td>roc_auc</td>(.*?)</tr>", page)
    assert roc_row is not None
    assert roc_row.group(1).count("—") == 3  # candidate, champion, change
    metrics_chart = page.split("Metrics", 1)[1].split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "accuracy" in metrics_chart and "roc_auc" not in metrics_chart


def test_evaluation_without_champion() -> None:
    result = {
        **EVALUATION,
        "champion": None,
        "metrics": {"candidate": {"mae": 1.5, "rmse": 2.0, "r2": -0.25}, "champion": None},
        "latency": {"candidate": EVALUATION["latency"]["candidate"], "champion": None},
        "resources": {"candidate": EVALUATION["resources"]["candidate"], "champion": None},
        "slices": [],
        "disagreement": None,
        "signature": {"compatible": True, "breaking": [], "non_breaking": []},
        "data_checks": {
            "passed": True,
            "checks": [
                {
                    "check": "reference",
                    "feature": "",
                    "passed": True,
                    "detail": "no reference sample",
                }
            ],
        },
        "gates": [],
    }
    page = render_html(result, "first version")
    text = text_of(page)
    assert "Champion" in text and "none" in text
    assert "champion" not in page.split("Metrics", 1)[1].split("</section>", 1)[0]
    assert "-0.25" in text  # a negative r2 keeps its sign
    assert "Not sliced." in text
    assert "no reference sample" in text
    assert "Gates" not in page
    assert outline(page)["svg"] == 2


def test_replay_page() -> None:
    page = render_html(REPLAY, "replay of churn:3 on churn-prod")
    tags = outline(page)
    assert tags["html"] == 1 and "script" not in tags
    text = text_of(page)
    for expected in [
        "churn:3",
        "churn-prod",
        "3600 s",
        "250",
        "400",
        "95.75%",  # agreement
        "0.40%",  # error rate
        "380",
        "12",
        "0.041",
        "0.87",
        "0.012",
        "2.75",
        "9.5",
        "&lt;yes&gt;",
        "ValueError: &lt;bad&gt; input",
    ]:
        assert expected in text, expected
    assert "<yes>" not in page and "<bad>" not in page
    # Flips keep the result's order (most frequent first).
    assert page.index(">no</td><td>yes<") < page.index("&lt;yes&gt;")


def test_replay_without_drift_or_flips() -> None:
    result = {**REPLAY, "flips": [], "output_drift": None, "agreement": None, "error_samples": []}
    text = text_of(render_html(result, "replay"))
    assert "No label changed." in text
    assert "Output drift" in text
