"""Stand-in models for tests: tiny, trained here by their real libraries."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FEATURES = ["f0", "f1", "f2", "f3"]


def training_data(rows: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(FEATURES)))
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    return features, labels


def write_sklearn_model(folder: Path, name: str = "model.joblib", seed: int = 0) -> Path:
    """A logistic regression saved with joblib; `seed` changes its bytes."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    features, labels = training_data(seed=seed)
    model = LogisticRegression().fit(features, labels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    joblib.dump(model, path)
    return path


def write_example_csv(folder: Path, rows: int = 20, name: str = "example.csv") -> Path:
    features, _ = training_data(rows=rows)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(FEATURES)
        writer.writerows(features.tolist())
    return path
