"""Train the CI example's churn model on generated data (no downloads).

Usage: python examples/ci/train.py [--out DIR] [--seed N] [--quality good|bad]

Writes, under DIR (default build/):
- model.joblib: a scikit-learn pipeline that predicts `churned` (0 or 1);
- example.csv: training rows, features only; `--signature-from` makes them the version's
  named-column signature and its reference sample (what data checks compare with);
- holdout.csv: rows the model never saw, with the true `churned` label and the
  customer's `plan` (not a model input: the column evaluation slices by).

`--quality bad` trains the same pipeline without learning from `tenure_months` (its
training values are shuffled): same signature, same data, a clearly worse model, the
candidate a promotion policy should refuse.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "usage_gb"]
LABEL = "churned"
SLICE = "plan"
PLANS = {"basic": 0.55, "pro": 0.35, "enterprise": 0.10}  # share of customers
TRAIN_ROWS, HOLDOUT_ROWS = 2000, 800


def customers(rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Made-up customers (features in FEATURES order, churned, plan): short tenure, high
    charges and many support calls churn."""
    features = np.column_stack([
        rng.uniform(1, 72, rows).round(1),  # tenure_months
        rng.uniform(20, 120, rows).round(2),  # monthly_charges
        rng.integers(0, 10, rows).astype(float),  # support_calls
        rng.uniform(0, 500, rows).round(1),  # usage_gb
    ])  # fmt: skip
    risk = features @ np.array([-0.16, 0.06, 0.9, -0.004]) - 1.0
    churned = (rng.uniform(size=rows) < 1 / (1 + np.exp(-risk))).astype(int)
    plan = rng.choice(list(PLANS), size=rows, p=list(PLANS.values()))
    return features, churned, plan


def write_csv(path: Path, header: list[str], columns: list[np.ndarray]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(zip(*(c.tolist() for c in columns), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quality", choices=["good", "bad"], default="good")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    features, churned, _ = customers(TRAIN_ROWS, rng)
    held, held_churned, held_plan = customers(HOLDOUT_ROWS, rng)
    learned = features.copy()
    if args.quality == "bad":
        learned[:, 0] = rng.permutation(learned[:, 0])  # tenure tells it nothing
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(learned, churned)

    args.out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out / "model.joblib")
    write_csv(args.out / "example.csv", FEATURES, list(features.T))
    write_csv(args.out / "holdout.csv", [*FEATURES, LABEL, SLICE],
              [*held.T, held_churned, held_plan])  # fmt: skip
    accuracy = model.score(held, held_churned)
    print(f"wrote {args.out}/model.joblib ({args.quality}: holdout accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
