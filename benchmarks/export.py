"""ONNX export per framework: artifact size, rows/s at batch 1 and 32 before and after,
and the equivalence gate's agreement and largest score difference.

Each model is trained here on 20 float64 features, registered in a scratch home with a
1,000-row example (its reference sample, which gates the export), and exported with
`packaging.service.export_version`: the same code `shipyard export` runs. Speeds are
measured in the export's worker processes, one thread per library, as serving workers
run (packaging/speed.py).

Usage (from the repository root, after `make install-dev`):
    .venv/bin/python benchmarks/export.py

Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROWS, FEATURES = 5_000, 20
GATE_ROWS = 1_000
NAMES = [f"f{i:02d}" for i in range(FEATURES)]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(ROWS, FEATURES))
    weights = rng.normal(size=FEATURES)
    labels = (features @ weights + 0.5 * rng.normal(size=ROWS) > 0).astype(np.int64)
    return features, labels


def random_forest(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    joblib.dump(model.fit(x, y), folder / "forest.joblib")
    return folder / "forest.joblib"


def mlp(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import joblib
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=200, random_state=0)
    joblib.dump(model.fit(x, y), folder / "mlp.joblib")
    return folder / "mlp.joblib"


def xgboost_model(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import xgboost

    matrix = xgboost.DMatrix(x, label=y, feature_names=NAMES)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, matrix, 200
    )
    booster.save_model(str(folder / "xgb.json"))
    return folder / "xgb.json"


def lightgbm_model(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import lightgbm

    data = lightgbm.Dataset(x, label=y, feature_name=NAMES)
    params = {"objective": "binary", "num_leaves": 31, "verbose": -1, "num_threads": 1}
    lightgbm.train(params, data, num_boost_round=200).save_model(str(folder / "lgb.txt"))
    return folder / "lgb.txt"


def torch_mlp(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 2), torch.nn.Softmax(dim=1),
    )  # fmt: skip
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(x).float(), torch.from_numpy(y)
    for _ in range(50):
        optimiser.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(net(inputs) + 1e-9), targets)
        loss.backward()
        optimiser.step()
    torch.jit.script(net.eval()).save(str(folder / "net.pt"))
    return folder / "net.pt"


CASES: list[tuple[str, str, Callable[[Path, np.ndarray, np.ndarray], Path], str | None]] = [
    ("sklearn RandomForest (100 trees, depth 8)", "forest", random_forest, None),
    ("sklearn MLP (256x256)", "mlp", mlp, None),
    ("sklearn MLP (256x256)", "mlp", mlp, "dynamic-int8"),
    ("XGBoost (200 trees, depth 6)", "xgb", xgboost_model, None),
    ("LightGBM (200 trees, 31 leaves)", "lgb", lightgbm_model, None),
    ("TorchScript MLP (256x256)", "net", torch_mlp, None),
    ("TorchScript MLP (256x256)", "net", torch_mlp, "dynamic-int8"),
    ("TorchScript MLP (256x256)", "net", torch_mlp, "fp16"),
]


def _example(folder: Path, x: np.ndarray) -> Path:
    path = folder / "example.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(NAMES)
        writer.writerows(x[:GATE_ROWS].tolist())
    return path


def main() -> None:
    from shipyard.config import Settings
    from shipyard.errors import UnsupportedModel
    from shipyard.packaging.service import ExportOptions, export_version
    from shipyard.registry.records import RegistrationOptions
    from shipyard.registry.refs import parse_ref
    from shipyard.registry.service import Registry

    x, y = _data()
    rows = []
    with tempfile.TemporaryDirectory(prefix="shipyard-export-bench-") as scratch:
        folder = Path(scratch)
        registry = Registry.open(Settings(home=folder / "home"))
        example = _example(folder, x)
        registered: dict[str, int] = {}
        for title, name, train, quantize in CASES:
            if name not in registered:
                torch = name == "net"  # no signature to read a table by: gated on --data
                version = registry.register(
                    train(folder, x, y),
                    RegistrationOptions(name=name),
                    None if torch else example,
                )
                registered[name] = version.version
            data = example if name == "net" else None
            print(f"exporting {title} ({quantize or 'float32'})", file=sys.stderr)
            try:
                result = export_version(
                    registry, parse_ref(f"{name}:{registered[name]}"),
                    ExportOptions(quantize=quantize), Settings().isolation_limits, data=data,
                )  # fmt: skip
            except UnsupportedModel as exc:
                rows.append(f"| {title} | {quantize or 'float32'} | refused: {exc.message[:160]} |")
                continue
            before, after = result.rows_per_second["before"], result.rows_per_second["after"]
            gate = result.gate
            rows.append(
                f"| {title} | {quantize or 'float32'} | {result.converter} "
                f"| {_kb(result.size['before'])} → {_kb(result.size['after'])} "
                f"| {before['batch_1']:,.0f} → {after['batch_1']:,.0f} "
                f"| {before['batch_32']:,.0f} → {after['batch_32']:,.0f} "
                f"| {gate['agreement']:.2%} | {gate['max_abs_diff']:.2g} |"
            )
        registry.close()
    print(
        f"ONNX export, gate on {GATE_ROWS:,} reference rows, {FEATURES} features; rows/s in "
        f"one worker process, one thread ({platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}).\n"
    )
    print(
        "| model | export | converter | size | rows/s batch 1 | rows/s batch 32 "
        "| agreement | max abs diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


def _kb(size: int) -> str:
    return f"{size / 1024:,.0f} KiB" if size >= 10_240 else f"{size:,} B"


if __name__ == "__main__":
    main()
