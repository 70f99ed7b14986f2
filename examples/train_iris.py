"""Train the quickstart model: a small iris classifier, saved with joblib.

Usage: python examples/train_iris.py OUTPUT_DIR
Writes OUTPUT_DIR/iris.joblib and OUTPUT_DIR/iris-example.csv (the example rows
give the model its named-column signature and become its reference sample).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    iris = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(iris.data, iris.target)
    joblib.dump(model, output / "iris.joblib")
    with (output / "iris-example.csv").open("w", newline="") as example:
        writer = csv.writer(example)
        writer.writerow(FEATURES)
        writer.writerows(iris.data.tolist())
    print(
        f"wrote {output / 'iris.joblib'} (train accuracy {model.score(iris.data, iris.target):.3f})"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/build"))
