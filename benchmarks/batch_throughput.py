"""Batch scoring against its limit: `shipyard batch run` vs one in-process predict call.

The limit is the model's own `predict` over the whole input already in memory, in one
call, with every core its library wants: no reading, no writing, no processes. The
job reads a Parquet file in chunks, scores them in worker processes and writes Parquet
parts. Both report rows/s and peak memory (RSS: the limit's process; the job's whole
process tree, sampled every 20 ms).

Usage (from the repository root, after `make install-dev`):
    .venv/bin/python benchmarks/batch_throughput.py [--rows 1000000 10000000] [--model hgb]

Inputs are generated once into --data-dir (10M rows x 20 features is 1.6 GB) and reused.
Writes its table into benchmarks/BENCHMARKS.md between the batch markers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PYTHON_BIN, write_section

START = "<!-- batch throughput: written by batch_throughput.py -->"
END = "<!-- end of batch throughput -->"
FEATURES = [f"f{i:02d}" for i in range(20)]
ROW_GROUP = 131_072

LIMIT_SCRIPT = """
import resource, sys, time, joblib, numpy as np, pyarrow.parquet as pq
model = joblib.load(sys.argv[1])
table = pq.read_table(sys.argv[2])
features = np.column_stack([table.column(n).to_numpy() for n in table.column_names])
del table
model.predict(features[:1000])  # warm: lazy initialisation is not throughput
started = time.perf_counter()
predictions = model.predict(features)
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(len(predictions) / seconds, peak_mib, seconds)
"""


IO_LIMIT_SCRIPT = """
import sys, tempfile, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq
source, chunk = sys.argv[1], int(sys.argv[2])
with tempfile.TemporaryDirectory() as out:
    started = time.perf_counter()
    rows = 0
    for index, batch in enumerate(pq.ParquetFile(source).iter_batches(batch_size=chunk)):
        n = batch.num_rows
        features = np.column_stack([c.to_numpy() for c in batch.columns])  # what predict gets
        part = pa.table({
            "row_number": np.arange(rows, rows + n, dtype=np.int64),
            "predict": (features[:, 0] > 0).astype(np.int64),
            "predict_proba_0": np.zeros(n), "predict_proba_1": np.ones(n),
        })
        pq.write_table(part, f"{out}/part-{index:06d}.parquet")
        rows += n
    seconds = time.perf_counter() - started
print(rows / seconds, seconds)
"""
"""The I/O limit: pyarrow alone reading the input in the job's chunks, stacking the
features as a model would get them, and writing parts of the job's shape (row number,
label, two probabilities): what a job whose predict costs nothing could reach."""


def train(kind: str, folder: Path) -> tuple[Path, Path]:
    """A model on 20 features and an example CSV (its signature names the columns)."""
    import joblib

    rng = np.random.default_rng(0)
    features = rng.normal(size=(20_000, len(FEATURES)))
    labels = (features[:, 0] + features[:, 1] * features[:, 2] + rng.normal(size=20_000)) > 0
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(max_iter=100, random_state=0)
    else:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(max_iter=500)
    model.fit(features, labels.astype(int))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.joblib"
    joblib.dump(model, path)
    example = folder / "example.csv"
    example.write_text(
        ",".join(FEATURES)
        + "\n"
        + "\n".join(",".join(f"{v:.6f}" for v in row) for row in features[:50])
        + "\n"
    )
    return path, example


def make_input(rows: int, folder: Path) -> Path:
    """rows x 20 float64 features in one Parquet file, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"input-{rows}.parquet"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    partial = path.with_suffix(".partial")
    schema = pa.schema([(name, pa.float64()) for name in FEATURES])
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            block = rng.normal(size=(min(ROW_GROUP, rows - start), len(FEATURES)))
            writer.write_table(
                pa.table({name: block[:, j] for j, name in enumerate(FEATURES)}, schema=schema)
            )
    partial.rename(path)
    return path


def measure_limit(model: Path, data: Path) -> tuple[float, float]:
    done = subprocess.run(
        [str(PYTHON_BIN / "python"), "-c", LIMIT_SCRIPT, str(model), str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    rate, peak, _seconds = (float(v) for v in done.stdout.split())
    return rate, peak


def measure_io_limit(data: Path, chunk: int) -> float:
    done = subprocess.run(
        [str(PYTHON_BIN / "python"), "-c", IO_LIMIT_SCRIPT, str(data), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[0])


def measure_job(
    home: Path, data: Path, out: Path, workers: int, chunk: int
) -> tuple[float, float, float, float]:
    """Rows/s over the whole command (start to exit, model loading included), peak RSS of
    the process tree, rows/s while scoring, and the wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(PYTHON_BIN / "shipyard"), "batch", "run", "bench",
        "--input", str(data), "--output", str(out),
        "--workers", str(workers), "--chunk-rows", str(chunk),
    ]  # fmt: skip
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)  # sampling memory, not synchronising
    seconds = time.perf_counter() - started
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"batch run failed: {stderr}")
    rows = int(data.stem.split("-")[1])
    return rows / seconds, peak / 2**20, scoring_rate(out, rows), seconds


def scoring_rate(out: Path, rows: int) -> float:
    """Rows/s between the first part written and the last: the job once it is running."""
    import pyarrow.parquet as pq

    parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 2:
        return float("nan")
    first_rows = pq.ParquetFile(parts[0]).metadata.num_rows
    span = parts[-1].stat().st_mtime - parts[0].stat().st_mtime
    return (rows - first_rows) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[3_000_000, 10_000_000])
    parser.add_argument("--model", nargs="+", default=["hgb", "logistic"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shipyard-batch-bench"
    )
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.model:
            home = Path(scratch) / f"home-{kind}"
            model, example = train(kind, Path(scratch) / kind)
            subprocess.run(
                [str(PYTHON_BIN / "shipyard"), "models", "register", str(model),
                 "--name", "bench", "--signature-from", str(example)],
                env={**os.environ, "SHIPYARD_HOME": str(home)},
                check=True, capture_output=True,
            )  # fmt: skip
            for rows in args.rows:
                data = make_input(rows, args.data_dir)
                limit_rate, limit_peak = measure_limit(model, data)
                io_rate = measure_io_limit(data, args.chunk_rows)
                out = Path(scratch) / f"out-{kind}-{rows}"
                job_rate, job_peak, steady, seconds = measure_job(
                    home, data, out, args.workers, args.chunk_rows
                )
                shutil.rmtree(out, ignore_errors=True)
                row = (kind, rows, limit_rate, limit_peak, job_rate, job_peak, steady, seconds,
                       io_rate)  # fmt: skip
                results.append(row)
                print(
                    f"{kind:8} {rows:>11,} rows  limit {limit_rate:>12,.0f} rows/s "
                    f"{limit_peak:>7,.0f} MiB   batch run {job_rate:>12,.0f} rows/s "
                    f"({seconds:.1f} s) {job_peak:>7,.0f} MiB  {job_rate / limit_rate:.0%} "
                    f"of the limit; while scoring {steady:,.0f} rows/s "
                    f"{steady / limit_rate:.0%}; I/O limit {io_rate:,.0f} rows/s, "
                    f"{job_rate / io_rate:.0%} of it",
                    flush=True,
                )
    write_table(results, args)


def write_table(results: list[tuple[Any, ...]], args: argparse.Namespace) -> None:
    names = {"hgb": "HistGradientBoosting (100 trees)", "logistic": "LogisticRegression"}
    lines = [
        "## Batch scoring vs the in-process limit (20 float features, Parquet in and out)",
        "",
        f"Made by `.venv/bin/python benchmarks/batch_throughput.py --rows "
        f"{' '.join(str(r) for r in args.rows)} --model {' '.join(args.model)} --workers "
        f"{args.workers} --chunk-rows {args.chunk_rows}` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores. Limit: one `model.predict` over the whole input already in "
        "memory (reading excluded), every core its library uses. `batch run`: the whole "
        "command, start to exit (CLI start, registry, worker processes loading the model, "
        "reading, scoring, writing parts, job record); *while scoring*: rows/s from the first "
        "part written to the last. Peak RSS: the limit's process; the job's whole process "
        "tree (main process + workers), sampled every 20 ms. I/O limit: pyarrow alone "
        "reading the input in the job's chunks, stacking the features and writing parts of "
        "the job's shape, no model (what a job whose predict cost nothing could reach).",
        "",
        "| model | rows | limit rows/s | limit peak RSS | batch run rows/s (s) | of limit "
        "| while scoring rows/s | of limit | I/O limit rows/s | of I/O limit "
        "| batch peak RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {names.get(kind, kind)} | {rows:,} | {lr:,.0f} | {lp:,.0f} MiB "
            f"| {jr:,.0f} ({secs:.1f} s) | {jr / lr:.0%} | {st:,.0f} | {st / lr:.0%} "
            f"| {io:,.0f} | {jr / io:.0%} | {jp:,.0f} MiB |"
            for kind, rows, lr, lp, jr, jp, st, secs, io in results
        ),
    ]
    write_section(START, END, lines)


if __name__ == "__main__":
    main()
