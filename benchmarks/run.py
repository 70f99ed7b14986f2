"""Serving benchmark: Shipyard against MLServer 1.7.1, a hand-written FastAPI endpoint,
the transport limit and the in-process compute limit, in one run on one machine.

Usage (from the repository root, after `make install-dev`):
    .venv/bin/python benchmarks/run.py [--duration 5] [--concurrency 1,16,64]

Needs `wrk` (a Debian package) and MLServer in its own venv (`make bench` makes it):
    python3 -m venv benchmarks/.venv-mlserver
    benchmarks/.venv-mlserver/bin/pip install mlserver==1.7.1 mlserver-sklearn==1.7.1
Closed-loop runs use wrk. The overload run (open loop, hey) is benchmarks/overload.py
(`make overload`), with its own section of BENCHMARKS.md.
Every closed-loop row also reports CPU per request by process role (utime+stime from
/proc around the measured run; wrk's own from its rusage) and, for Shipyard, the average
batch its workers ran (from /metrics).
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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
from proc_cpu import TICK_US, TreeTicks, cpu_ticks, tree_ticks
from proc_cpu import process_tree as process_tree  # elasticity.py imports it from here
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
PYTHON_BIN = ROOT / ".venv" / "bin"
MLSERVER_BIN = BENCH / ".venv-mlserver" / "bin"
FEATURES = 20
# Shipyard as measured here: one HTTP process and a fixed pool of one model worker per core
# (what the default was before issue 16 made pools elastic), so that runs compare.
SHIPYARD_WORKERS = os.cpu_count() or 1
SHIPYARD_PROCESSES = 1 + SHIPYARD_WORKERS
BATCH_COUNTER = re.compile(r"^(shipyard_batches_total|shipyard_batch_rows_total)(?:\{.*\})? (\S+)$",
                           re.MULTILINE)  # fmt: skip
NOTES_MARKER = "<!-- notes: written by hand, kept by run.py -->"
# wrk's own summary in machine-readable form (microseconds), printed last.
WRK_SUMMARY = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"status\\": %d, \\"connect\\": %d, \\"read\\": %d, "
    .. "\\"write\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


@dataclass(frozen=True)
class Server:
    """One server under test; `has_workers`: its root process serves HTTP and the rest of its
    process tree runs the model (False: every process in the tree serves HTTP)."""

    label: str
    command: list[str]
    env: dict[str, str]
    url_path: str
    has_workers: bool
    batch_metrics: bool = False  # Shipyard's shipyard_batches/shipyard_batch_rows on /metrics
    http_processes: int = 1  # Shipyard's --http-processes: its fronts count as front CPU


@dataclass(frozen=True)
class Limit:
    """In-process predict at one batch size: rows/s, and CPU per row (every thread)."""

    rows_per_s: float
    cpu_us_per_row: float


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
    front_us_per_request: float
    workers_us_per_request: float | None
    generator_us_per_request: float
    avg_batch_rows: float | None
    worker_us_per_row: float | None


@dataclass
class Idle:
    """A server's CPU with no load (cores), after start-up work settled."""

    model: str
    server: str
    front_cores: float
    workers_cores: float | None
    settled: bool


def write_section(start: str, end: str, lines: list[str]) -> None:
    """Replace the block between two markers in BENCHMARKS.md (append it the first time)."""
    target = BENCH / "BENCHMARKS.md"
    text = target.read_text()
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    target.write_text(text)


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
        + WRK_SUMMARY
    )
    return paths


def compute_limit(path: Path, batch: int, seconds: float = 1.5) -> Limit:
    """In-process predict: the most any server could do with this model, and its CPU cost."""
    model = joblib.load(path)
    rows = np.random.default_rng(1).normal(size=(batch, FEATURES))
    model.predict(rows)
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        model.predict(rows)
        calls += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Limit(calls * batch / elapsed, cpu * 1e6 / (calls * batch))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(command: list[str], url: str, body: bytes, env: dict[str, str], cwd: Path,
            log: Path) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
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
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wrk_result(out: str) -> tuple[int, float, float, float, int]:
    """(requests, requests/s, p50 ms, p99 ms, failed requests) from WRK_SUMMARY's line."""
    result = json.loads(out[out.index("RESULT ") + len("RESULT ") :].splitlines()[0])
    failed = sum(result[k] for k in ("status", "connect", "read", "write", "timeout"))
    rps = result["requests"] / (result["duration_us"] / 1e6)
    return result["requests"], rps, result["p50_us"] / 1000, result["p99_us"] / 1000, failed


def wrk(url: str, script: Path, concurrency: int, duration: int) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, failed requests) of one closed-loop run."""
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", str(script), url],
                   capture_output=True, check=True)  # warm-up  # fmt: skip
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _, rps, p50, p99, failed = wrk_result(out)
    return rps, p50, p99, failed


def batch_counters(url: str) -> tuple[float, float]:
    """(predict calls, rows) Shipyard's workers ran so far, summed over versions."""
    totals = {"shipyard_batches_total": 0.0, "shipyard_batch_rows_total": 0.0}
    for name, value in BATCH_COUNTER.findall(httpx.get(url, timeout=5).text):
        totals[name] += float(value)
    return totals["shipyard_batches_total"], totals["shipyard_batch_rows_total"]


def split_us(server: Server, before: TreeTicks, after: TreeTicks,
             fronts: int = 0) -> tuple[float, float | None]:  # fmt: skip
    """CPU µs the server's front and workers used between two readings (workers: None when
    every process serves HTTP). `fronts`: ticks Shipyard's extra HTTP processes used, in
    the tree's rest until here."""
    root, rest = (after.root - before.root) * TICK_US, (after.rest - before.rest) * TICK_US
    root, rest = root + fronts * TICK_US, rest - fronts * TICK_US
    return (root, rest) if server.has_workers else (root + rest, None)


FRONT_STARTED = re.compile(r"front process \d+ started \(pid (\d+)\)")


def front_pids(log: Path | None) -> list[int]:
    """Shipyard's extra HTTP processes, as its log names them."""
    return [int(pid) for pid in FRONT_STARTED.findall(log.read_text())] if log else []


def fronts_ticks(pids: list[int]) -> int:
    return sum(cpu_ticks(pids).values())


def wait_for_fronts(server: Server, log: Path, limit: float = 60.0) -> None:
    """Until every HTTP process of the server has started (each logs its startup)."""
    deadline = time.monotonic() + limit
    while server.http_processes > 1 and (
        log.read_text().count("Application startup complete") < server.http_processes
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label}: HTTP processes did not all start: see {log}")
        time.sleep(0.25)  # a benchmark harness waiting for a server, not a test


def measure(model: str, server: Server, pid: int, url: str, script: Path, concurrency: int,
            duration: int, log: Path | None = None) -> Point:  # fmt: skip
    """One warmed-up closed-loop wrk run, with the CPU each process role spent on it."""
    command = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script), url]
    subprocess.run([*command, "-d1s"], capture_output=True, check=True)  # warm-up
    metrics = url.split("/v2/", 1)[0] + "/metrics"
    counted = batch_counters(metrics) if server.batch_metrics else None
    fronts = front_pids(log)
    before, fronts_before = tree_ticks(pid), fronts_ticks(fronts)
    with subprocess.Popen([*command, f"-d{duration}s"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as generator:  # fmt: skip
        out = generator.stdout.read() if generator.stdout else ""
        # Reaping wrk ourselves gives its exact utime+stime (every thread) in the rusage.
        _, status, usage = os.wait4(generator.pid, 0)
        generator.returncode = os.waitstatus_to_exitcode(status)
    after, fronts_after = tree_ticks(pid), fronts_ticks(fronts)
    if generator.returncode != 0:
        raise subprocess.CalledProcessError(generator.returncode, generator.args, out)
    requests, rps, p50, p99, failed = wrk_result(out)
    front, workers = split_us(server, before, after, fronts_after - fronts_before)
    batch_rows = rows = None
    if counted is not None:
        batches_then, rows_then = counted
        batches_now, rows_now = batch_counters(metrics)
        rows = rows_now - rows_then
        batch_rows = rows / max(batches_now - batches_then, 1)
    per = max(requests, 1)
    return Point(
        model, server.label, concurrency, rps, rps, p50, p99, failed,
        front_us_per_request=front / per,
        workers_us_per_request=None if workers is None else workers / per,
        generator_us_per_request=(usage.ru_utime + usage.ru_stime) * 1e6 / per,
        avg_batch_rows=batch_rows,
        # One row per request: without the server's own count, rows are wrk's requests.
        worker_us_per_row=None if workers is None else workers / max(rows or requests, 1),
    )  # fmt: skip


def settle(model: str, server: Server, pid: int, window: float = 1.0, quiet: float = 0.25,
           limit: float = 20.0, log: Path | None = None) -> Idle:  # fmt: skip
    """Wait until the server's processes use under `quiet` cores in all (start-up work, such
    as a spare interpreter's imports, would otherwise land in the first run), at most
    `limit` seconds; the last window's CPU is the server's idle cost."""
    deadline = time.monotonic() + limit
    while True:
        fronts = front_pids(log)
        before, fronts_before, started = tree_ticks(pid), fronts_ticks(fronts), time.monotonic()
        time.sleep(window)  # a harness sampling CPU, not a test
        after, elapsed = tree_ticks(pid), time.monotonic() - started
        front, workers = split_us(server, before, after, fronts_ticks(fronts) - fronts_before)
        cores = (front + (workers or 0.0)) / 1e6 / elapsed
        if cores < quiet or time.monotonic() > deadline:
            return Idle(model, server.label, front / 1e6 / elapsed,
                        None if workers is None else workers / 1e6 / elapsed,
                        settled=cores < quiet)  # fmt: skip


def servers(model: str, path: Path, work: Path) -> list[Server]:
    """Every server under test, Shipyard last."""
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
    transport = [str(PYTHON_BIN / "uvicorn"), "servers.transport_app:app", "--port", port_holder,
                 "--no-access-log", "--log-level", "warning"]  # fmt: skip
    mlserver_env = {"MLSERVER_HTTP_PORT": port_holder, "MLSERVER_GRPC_PORT": "0",
                    "MLSERVER_METRICS_PORT": "0"}  # fmt: skip
    shipyard_env = {"SHIPYARD_HOME": shipyard_home,
                    "SHIPYARD_WORKERS_PER_MODEL": str(SHIPYARD_WORKERS)}  # fmt: skip
    return [
        Server("transport limit (1 process, as Shipyard's HTTP)", transport, {},
               "/v2/models/m/infer", has_workers=False),
        Server(f"transport limit ({SHIPYARD_PROCESSES} processes, as Shipyard's total)",
               [*transport, "--workers", str(SHIPYARD_PROCESSES)], {}, "/v2/models/m/infer",
               has_workers=False),
        Server("MLServer 1.7.1 (defaults)",
               [str(MLSERVER_BIN / "mlserver"), "start", str(mlserver_dirs["mlserver"])],
               mlserver_env, f"/v2/models/{model}/infer", has_workers=True),
        Server("MLServer 1.7.1 (adaptive batching)",
               [str(MLSERVER_BIN / "mlserver"), "start", str(mlserver_dirs["mlserver-adaptive"])],
               mlserver_env, f"/v2/models/{model}/infer", has_workers=True),
        Server("FastAPI endpoint",
               [str(PYTHON_BIN / "uvicorn"), "servers.fastapi_app:app", "--port", port_holder,
                "--no-access-log", "--log-level", "warning"], {"MODEL_PATH": str(path)},
               f"/v2/models/{model}/infer", has_workers=False),
        Server("Shipyard",
               [str(PYTHON_BIN / "shipyard"), "serve", str(path), "--port", port_holder,
                "--grpc-port", "-1"], shipyard_env, f"/v2/models/{model}/infer",
               has_workers=True, batch_metrics=True),
        Server("Shipyard (2 HTTP processes)",
               [str(PYTHON_BIN / "shipyard"), "serve", str(path), "--port", port_holder,
                "--grpc-port", "-1", "--http-processes", "2"], shipyard_env,
               f"/v2/models/{model}/infer", has_workers=True, batch_metrics=True,
               http_processes=2),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--servers", default="", help="only servers whose label has this text")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    work = BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    paths = train(work)
    body = (work / "body.json").read_bytes()
    limits = {name: {b: compute_limit(p, b) for b in (1, 32)} for name, p in paths.items()}
    points: list[Point] = []
    idles: list[Idle] = []
    for model, path in paths.items():
        for server in servers(model, path, work):
            if args.servers and args.servers.lower() not in server.label.lower():
                continue
            port = free_port()
            command = [c.replace("{port}", str(port)) for c in server.command]
            env = {k: v.replace("{port}", str(port)) for k, v in server.env.items()}
            url = f"http://127.0.0.1:{port}{server.url_path}"
            log = work / f"{model}-{re.sub(r'[^a-z0-9]+', '-', server.label.lower())}.log"
            with running(command, url, body, env, BENCH, log) as process:
                wait_for_fronts(server, log)
                idles.append(settle(model, server, process.pid, log=log))
                for concurrency in levels:
                    p = measure(model, server, process.pid, url, work / "post.lua", concurrency,
                                args.duration, log)  # fmt: skip
                    points.append(p)
                    print(f"{model:5} {server.label:40} c={concurrency:<3} "
                          f"{p.requests_per_s:8.0f} req/s p50 {p.p50_ms:7.2f} ms "
                          f"p99 {p.p99_ms:8.2f} ms non-2xx {p.non_2xx} CPU µs/req front "
                          f"{p.front_us_per_request:5.0f} workers "
                          f"{cell(p.workers_us_per_request, '5.0f')} generator "
                          f"{p.generator_us_per_request:4.0f} batch "
                          f"{cell(p.avg_batch_rows, '.1f')}", flush=True)  # fmt: skip
    (work / "points.json").write_text(
        json.dumps({"limits": {m: {b: asdict(v) for b, v in by.items()}
                               for m, by in limits.items()},
                    "points": [asdict(p) for p in points], "idle": [asdict(i) for i in idles]},
                   indent=1)
    )  # fmt: skip
    write_markdown(points, limits, idles, args, work)


def cell(value: float | None, spec: str) -> str:
    """A table cell: the value formatted, or "-" where the server has no such thing."""
    return "-" if value is None else format(value, spec)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for current in process_tree(pid):
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def write_markdown(points: list[Point], limits: dict[str, dict[int, Limit]], idles: list[Idle],
                   args: argparse.Namespace, work: Path) -> None:  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        "Made by `.venv/bin/python benchmarks/run.py "
        f"--duration {args.duration} --concurrency {args.concurrency}"
        f"{' --servers ' + args.servers if args.servers else ''}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared by the load generator "
        "(wrk, 1 thread) and the servers. One-row V2 JSON requests; "
        "`light` is a logistic regression on 20 features, `heavy` a 20-tree random forest "
        "(~1 ms per one-row predict). Shipyard runs a fixed pool: "
        f"`SHIPYARD_WORKERS_PER_MODEL={SHIPYARD_WORKERS}` (one worker per core, the default "
        "before issue 16 made pools elastic), so that runs compare.",
        "",
        "CPU columns (issue 17): utime+stime from `/proc/PID/stat` of the server's process tree "
        "right before and right after the measured wrk run (after a 1 s warm-up), divided by "
        "the requests wrk completed. *front*: the process that serves HTTP (for the transport "
        "apps and the FastAPI endpoint, every process of the server: the model, if any, runs "
        "there); *workers*: the rest of the tree (Shipyard's model workers and spare "
        "interpreter, MLServer's inference pool), workers that stopped during the run "
        "included (through their parent's reaped-children time); *generator*: wrk's own "
        "utime+stime from its rusage. *avg batch rows*: Shipyard's `shipyard_batch_rows_total` "
        "/ `shipyard_batches_total` over the run (from `/metrics`). *worker ÷ in-process*: "
        "workers CPU per row (Shipyard: rows from `/metrics`; MLServer: one row per request) "
        "over the in-process predict's CPU per row at batch 32. Each figure includes the "
        "server's idle work over the run (see the idle table).",
        "",
        "## Compute limit (in-process `predict`)",
        "",
        "| model | batch 1 rows/s | batch 32 rows/s | batch 1 CPU µs/row | batch 32 CPU µs/row |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for model, by_batch in limits.items():
        one, many = by_batch[1], by_batch[32]
        lines.append(f"| {model} | {one.rows_per_s:,.0f} | {many.rows_per_s:,.0f} | "
                     f"{one.cpu_us_per_row:,.1f} | {many.cpu_us_per_row:,.2f} |")  # fmt: skip
    for model in limits:
        lines += ["", f"## {model}", "",
                  "| server | concurrency | req/s | rows/s | p50 ms | p99 ms | non-2xx | "
                  "front µs/req | workers µs/req | generator µs/req | avg batch rows | "
                  "worker µs/row ÷ in-process µs/row (batch 32) |",
                  "| --- " + "| ---: " * 11 + "|"]  # fmt: skip
        in_process = limits[model][32].cpu_us_per_row
        for p in points:
            if p.model == model:
                ratio = None if p.worker_us_per_row is None else p.worker_us_per_row / in_process
                lines.append(
                    f"| {p.server} | {p.concurrency} | {p.requests_per_s:,.0f} | "
                    f"{p.rows_per_s:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.non_2xx} | "
                    f"{p.front_us_per_request:,.0f} | {cell(p.workers_us_per_request, ',.0f')} | "
                    f"{p.generator_us_per_request:,.0f} | {cell(p.avg_batch_rows, '.1f')} | "
                    f"{cell(ratio, '.1f')} |"
                )
    lines += ["", "## Idle CPU (cores, no load, after start-up settled)", "",
              "| server | model | front | workers |", "| --- | --- | ---: | ---: |"]  # fmt: skip
    for i in idles:
        note = "" if i.settled else " (never settled under 0.25 cores in 20 s)"
        lines.append(f"| {i.server}{note} | {i.model} | {i.front_cores:.3f} | "
                     f"{cell(i.workers_cores, '.3f')} |")  # fmt: skip
    lines += ["", f"Raw numbers: `benchmarks/results/{work.name}/points.json` (not committed)."]
    target = BENCH / "BENCHMARKS.md"
    # Hand-written reading of the numbers lives below the marker and survives a rerun.
    kept = target.read_text().partition(NOTES_MARKER)[2] if target.exists() else ""
    target.write_text("\n".join(lines) + "\n\n" + NOTES_MARKER + kept)
    print(f"wrote {BENCH / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
