"""Serving benchmark: Shipyard against MLServer 1.7.1, a hand-written FastAPI endpoint,
the transport limit and the in-process compute limit, in one run on one machine.

Usage (from the repository root, after `make install-dev`):
    .venv/bin/python benchmarks/run.py [--duration 5] [--concurrency 1,16,64]

Needs `wrk` (Debian package) and MLServer in its own venv:
    python3 -m venv benchmarks/.venv-mlserver
    benchmarks/.venv-mlserver/bin/pip install mlserver==1.7.1 mlserver-sklearn==1.7.1
Writes the table to benchmarks/BENCHMARKS.md and raw numbers to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PYTHON_BIN = ROOT / ".venv" / "bin"
MLSERVER_BIN = BENCH / ".venv-mlserver" / "bin"
FEATURES = 20


@dataclass
class Point:
    model: str
    server: str
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


def train(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5000, FEATURES))
    labels = (features[:, 0] + features[:, 1] * features[:, 2] > 0).astype(int)
    models = {
        "light": LogisticRegression(max_iter=500),
        # ~1 ms for a single-row predict on this machine.
        "heavy": RandomForestClassifier(n_estimators=20, max_depth=10, random_state=0, n_jobs=1),
    }
    paths = {}
    for name, model in models.items():
        model.fit(features, labels)
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    row = features[:1].tolist()
    body = {
        "inputs": [{"name": "input-0", "shape": [1, FEATURES], "datatype": "FP64", "data": row}]
    }
    (folder / "body.json").write_text(json.dumps(body))
    (folder / "post.lua").write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{folder / "body.json"}")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    return paths


def compute_limit(path: Path, batch: int, seconds: float = 1.5) -> float:
    """In-process predict rows/s: the most any server could do with this model."""
    model = joblib.load(path)
    rows = np.random.default_rng(1).normal(size=(batch, FEATURES))
    model.predict(rows)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict(rows)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(command: list[str], url: str, body: bytes, env: dict[str, str], cwd: Path,
            log: Path) -> Iterator[None]:  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: see {log}")
            try:
                headers = {"content-type": "application/json"}
                if httpx.post(url, content=body, headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} never answered: see {log}")
            time.sleep(0.25)  # a benchmark harness waiting for a server, not a test
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, concurrency: int, duration: int) -> tuple[float, float, float, int]:
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", str(script), url],
                   capture_output=True, check=True)  # warm-up  # fmt: skip
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def servers(model: str, path: Path, work: Path) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(label, command, env, url path) for every server under test."""
    port_holder = "{port}"
    mlserver_dirs = {}
    for label, batching in (
        ("mlserver", {}),
        ("mlserver-adaptive", {"max_batch_size": 32, "max_batch_time": 0.005}),
    ):
        folder = work / f"{label}-{model}"
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"}, **batching,
        }))  # fmt: skip
        mlserver_dirs[label] = folder
    shipyard_home = tempfile.mkdtemp(prefix="shipyard-bench-")
    return [
        ("transport limit (uvicorn, 2 processes)",
         [str(PYTHON_BIN / "uvicorn"), "servers.transport_app:app", "--port", port_holder,
          "--workers", "2", "--no-access-log", "--log-level", "warning"], {}, "/v2/models/m/infer"),
        ("MLServer 1.7.1 (defaults)",
         [str(MLSERVER_BIN / "mlserver"), "start", str(mlserver_dirs["mlserver"])],
         {"MLSERVER_HTTP_PORT": port_holder, "MLSERVER_GRPC_PORT": "0",
          "MLSERVER_METRICS_PORT": "0"}, f"/v2/models/{model}/infer"),
        ("MLServer 1.7.1 (adaptive batching)",
         [str(MLSERVER_BIN / "mlserver"), "start", str(mlserver_dirs["mlserver-adaptive"])],
         {"MLSERVER_HTTP_PORT": port_holder, "MLSERVER_GRPC_PORT": "0",
          "MLSERVER_METRICS_PORT": "0"}, f"/v2/models/{model}/infer"),
        ("FastAPI endpoint",
         [str(PYTHON_BIN / "uvicorn"), "servers.fastapi_app:app", "--port", port_holder,
          "--no-access-log", "--log-level", "warning"], {"MODEL_PATH": str(path)},
         f"/v2/models/{model}/infer"),
        ("Shipyard",
         [str(PYTHON_BIN / "shipyard"), "serve", str(path), "--port", port_holder,
          "--grpc-port", "-1"], {"SHIPYARD_HOME": shipyard_home}, f"/v2/models/{model}/infer"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    work = BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    paths = train(work)
    body = (work / "body.json").read_bytes()
    limits = {name: {b: compute_limit(p, b) for b in (1, 32)} for name, p in paths.items()}
    points: list[Point] = []
    for model, path in paths.items():
        for label, command, env, url_path in servers(model, path, work):
            port = free_port()
            command = [c.replace("{port}", str(port)) for c in command]
            env = {k: v.replace("{port}", str(port)) for k, v in env.items()}
            url = f"http://127.0.0.1:{port}{url_path}"
            log = work / f"{model}-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.log"
            with running(command, url, body, env, BENCH, log):
                for concurrency in levels:
                    rps, p50, p99, errors = wrk(url, work / "post.lua", concurrency, args.duration)
                    points.append(Point(model, label, concurrency, rps, rps, p50, p99, errors))
                    summary = f"{rps:8.0f} req/s p50 {p50:7.2f} ms p99 {p99:8.2f} ms"
                    print(f"{model:5} {label:40} c={concurrency:<3} {summary} non-2xx {errors}")
    (work / "points.json").write_text(json.dumps([asdict(p) for p in points], indent=1))
    write_markdown(points, limits, args, work)


def write_markdown(points: list[Point], limits: dict[str, dict[int, float]],
                   args: argparse.Namespace, work: Path) -> None:  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        "Made by `.venv/bin/python benchmarks/run.py "
        f"--duration {args.duration} --concurrency {args.concurrency}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared by the load generator "
        "(wrk, 1 thread) and the servers. One-row V2 JSON requests; `light` is a logistic "
        "regression on 20 features, `heavy` a 20-tree random forest (~1 ms per one-row predict).",
        "",
        "## Compute limit (in-process `predict`, rows/s)",
        "",
        "| model | batch 1 | batch 32 |",
        "| --- | ---: | ---: |",
    ]
    for model, by_batch in limits.items():
        lines.append(f"| {model} | {by_batch[1]:,.0f} | {by_batch[32]:,.0f} |")
    for model in limits:
        lines += ["", f"## {model}", "",
                  "| server | concurrency | req/s | rows/s | p50 ms | p99 ms | non-2xx |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for p in points:
            if p.model == model:
                lines.append(
                    f"| {p.server} | {p.concurrency} | {p.requests_per_s:,.0f} | "
                    f"{p.rows_per_s:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.non_2xx} |"
                )
    lines += ["", f"Raw numbers: `benchmarks/results/{work.name}/points.json` (not committed)."]
    (BENCH / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {BENCH / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    sys.exit(main())
