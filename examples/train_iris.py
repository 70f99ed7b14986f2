"""Train the quickstart model: a small iris classifier, saved with joblib.

Usage: python examples/train_iris.py OUTPUT_DIR [--c C]
Trains on a fixed 70% of the flowers and writes OUTPUT_DIR/iris.joblib,
OUTPUT_DIR/iris-example.csv (the training rows: they give the model its named-column
signature and become its reference sample) and OUTPUT_DIR/iris-holdout.csv (the other
30%, with the true `species`: what `shipyard evaluate` and `shipyard promote` score on).
`--c` sets the regularisation (smaller: simpler model), to train a different candidate.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main(output: Path, c: float) -> None:
    output.mkdir(parents=True, exist_ok=True)
    iris = load_iris()
    train, holdout, train_species, holdout_species = train_test_split(
        iris.data, iris.target, test_size=0.3, random_state=7, stratify=iris.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
    model.fit(train, train_species)
    joblib.dump(model, output / "iris.joblib")
    with (output / "iris-example.csv").open("w", newline="") as example:
        writer = csv.writer(example)
        writer.writerow(FEATURES)
        writer.writerows(train.tolist())
    with (output / "iris-holdout.csv").open("w", newline="") as held:
        writer = csv.writer(held)
        writer.writerow([*FEATURES, "species"])
        writer.writerows(
            [*row, int(species)]
            for row, species in zip(holdout.tolist(), holdout_species, strict=True)
        )
    print(
        f"wrote {output / 'iris.joblib'} "
        f"(holdout accuracy {model.score(holdout, holdout_species):.3f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="examples/build", type=Path)
    parser.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    arguments = parser.parse_args()
    main(arguments.output, arguments.c)
