"""Elastic serving under a step load, against a fixed pool sized for the peak; and cold
starts by phase, without and with spare interpreters. One run, one machine.

Usage (from the repository root, after `make install-dev`):
    .venv/bin/python benchmarks/elasticity.py [--phases 15:20,55:20,15:20] [--burn-ms 20]
        [--max-workers 2] [--cold-starts 5]

Step load: a plain-Python model (python flavor) that burns `--burn-ms` of CPU per row is
served by `shipyard server` twice, one after the other: elastic (min 1 worker, max
`--max-workers`, the autoscaler's delays and targets below) and fixed
(SHIPYARD_WORKERS_PER_MODEL = max). Both get the same open-loop load, phase by phase
(`rate:seconds`): requests are due at a fixed pace and `--clients` threads with one
keep-alive connection each send them; a request's latency runs from when it was due, so
a generator that falls behind still counts the wait. /metrics is scraped every 0.5 s for
the ready (and desired) workers; the autoscaler's decisions come from the server's JSON
log. CPU per request is utime+stime (children included) of the server's process tree
over the load, from /proc.

Cold starts: a tiny scikit-learn LogisticRegression with SHIPYARD_SCALE_TO_ZERO_AFTER set;
each round waits for the server to unload it ("unloaded idle" in the log), then times
one request end to end and reads the phases of the load from the log line "loaded ...
(cold start)". Once with SHIPYARD_SPARE_WORKERS=0 (before spares), once with 1.

Writes the tables between the elasticity markers of benchmarks/BENCHMARKS.md, the plot to
benchmarks/elasticity.png (benchmarks/results/ is git-ignored), and raw numbers and server
logs to benchmarks/results/elasticity-<time>/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, PYTHON_BIN, free_port, process_tree, running, write_section

START = "<!-- elasticity: start -->"
END = "<!-- elasticity: end -->"
PLOT = BENCH / "elasticity.png"
TICKS = os.sysconf("SC_CLK_TCK")
KEEP_ALIVE = 2.0
"""Seconds a client connection may sit idle before it is opened anew."""
STEP_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
).encode()
SK_FEATURES = ["f0", "f1", "f2", "f3"]
SK_BODY = json.dumps(
    {"inputs": [{"name": f, "shape": [1], "datatype": "FP64", "data": [0.5]} for f in SK_FEATURES]}
).encode()
COLD_PHASES = ("fetch", "spawn", "imports", "spare_wait", "load", "warm_up", "total")
BURNER = '''
import time

import numpy as np


class Burner:
    """Burns a fixed CPU time per row: a compute-bound model that batching cannot speed up."""

    def load(self):
        self.seconds = {seconds}

    def predict(self, inputs):
        (values,) = inputs.values()
        for _ in range(len(values)):
            until = time.thread_time() + self.seconds
            while time.thread_time() < until:
                pass
        return np.zeros((len(values), 1))
'''


@dataclass(frozen=True)
class Phase:
    rate: float
    seconds: float


@dataclass
class Shot:
    """One request of the step load: when it was due (s from the start), how long it took
    from then, and whether it got a 200."""

    due: float
    latency: float
    ok: bool


@dataclass
class Scrape:
    at: float
    ready: int
    desired: int | None


@dataclass
class StepRun:
    label: str
    shots: list[Shot]
    scrapes: list[Scrape]
    decisions: list[dict[str, Any]]
    """The autoscaler's log lines (from, to, reason), with `at` in seconds from the start."""
    front_us: float
    workers_us: float
    others_cores: float
    """CPU the rest of the machine used meanwhile (other processes, the load generator)."""


def shipyard(home: Path, *args: str) -> None:
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    subprocess.run([str(PYTHON_BIN / "shipyard"), *args], env=env, check=True, capture_output=True)


def prepare(work: Path, home: Path, burn_ms: float) -> None:
    """Register the burner and the small scikit-learn model in a fresh home."""
    burner = work / "burner.py"
    burner.write_text(BURNER.format(seconds=burn_ms / 1000))
    shipyard(home, "models", "register", str(burner), "--name", "burner")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, len(SK_FEATURES)))
    labels = (features[:, 0] + features[:, 1] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(features, labels), work / "small.joblib")
    example = work / "example.csv"
    rows = [",".join(SK_FEATURES), *(",".join(f"{v:.4f}" for v in row) for row in features[:20])]
    example.write_text("\n".join(rows) + "\n")
    shipyard(
        home,
        "models",
        "register",
        str(work / "small.joblib"),
        "--name",
        "small",
        "--signature-from",
        str(example),
    )


def server_command(port: int) -> list[str]:
    return [str(PYTHON_BIN / "shipyard"), "server", "--port", str(port), "--grpc-port", "-1"]


def log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(the first pid's own ticks, every other pid's) with reaped children's included, so
    that workers that stopped during the run still count (their parent waited for them)."""
    front = rest = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own, children = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        if pid == pids[0]:
            front, rest = front + own, rest + children
        else:
            rest += own + children
    return front, rest


def machine_ticks() -> int:
    """Busy ticks of the whole machine so far (every core; /proc/stat less idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def drive(port: int, phases: list[Phase], clients: int, origin: float) -> list[Shot]:
    """Send the phases' requests open loop, each due at its time after `origin`."""
    due, start = [], 0.0
    for phase in phases:
        due += [start + i / phase.rate for i in range(round(phase.rate * phase.seconds))]
        start += phase.seconds
    tickets = iter(due)
    lock = threading.Lock()
    shots: list[Shot] = []
    headers = {"content-type": "application/json"}

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        used = time.monotonic()
        while True:
            with lock:
                ticket = next(tickets, None)
            if ticket is None:
                connection.close()
                return
            delay = origin + ticket - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the open-loop pace
            if time.monotonic() - used > KEEP_ALIVE:
                # uvicorn closes a connection idle for 5 s; a POST sent as it does fails
                # without reaching the server: reconnect first, as pooled clients do.
                connection.close()
            try:
                connection.request("POST", "/v2/models/burner/infer", STEP_BODY, headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
            used = time.monotonic()
            shots.append(Shot(ticket, used - origin - ticket, ok))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(shots, key=lambda s: s.due)


def scrape_workers(port: int, origin: float, stop: threading.Event) -> list[Scrape]:
    """Ready (and desired) workers of the burner every 0.5 s, from /metrics.

    Reads `shipyard_workers{model,version,state}`, or the older form without `state`
    (live workers only), where the desired count comes from the scaling log instead."""
    pattern = re.compile(r"^shipyard_workers\{([^}]*)\} (\S+)$", re.M)
    scrapes = []
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            at = time.monotonic() - origin
            try:
                text = client.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.HTTPError:
                text = ""
            states: dict[str, int] = {}
            for labels, value in pattern.findall(text):
                fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                if fields.get("model") == "burner":
                    states[fields.get("state", "ready")] = int(float(value))
            scrapes.append(Scrape(at, states.get("ready", 0), states.get("desired")))
            stop.wait(0.5)  # the sampling cadence
    return scrapes


def step_run(
    label: str, env: dict[str, str], phases: list[Phase], clients: int, work: Path
) -> StepRun:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/burner/infer"
    log = work / f"step-{label}.log"
    with running(server_command(port), url, STEP_BODY, env, BENCH, log) as server:
        time.sleep(2)  # let the first load's successor spare finish starting: a quiet start
        origin = time.monotonic() + 0.5
        origin_wall = time.time() + 0.5
        stop = threading.Event()
        scrapes: list[Scrape] = []
        scraper = threading.Thread(
            target=lambda: scrapes.extend(scrape_workers(port, origin, stop)), daemon=True
        )
        before, machine, started = cpu_ticks(process_tree(server.pid)), machine_ticks(), time.time()
        scraper.start()
        shots = drive(port, phases, clients, origin)
        after, machine = cpu_ticks(process_tree(server.pid)), machine_ticks() - machine
        elapsed = time.time() - started
        stop.set()
        scraper.join()
    decisions = [
        {"at": wall(e) - origin_wall, "from": e["from"], "to": e["to"], "reason": e["reason"]}
        for e in log_events(log)
        if e.get("logger") == "shipyard.scaling" and "to" in e
    ]
    served = max(1, sum(s.ok for s in shots))
    front_us = (after[0] - before[0]) / TICKS * 1e6 / served
    workers_us = (after[1] - before[1]) / TICKS * 1e6 / served
    server_ticks = after[0] + after[1] - before[0] - before[1]
    others = (machine - server_ticks) / TICKS / elapsed
    return StepRun(label, shots, scrapes, decisions, front_us, workers_us, others)


# --- reading a step run -------------------------------------------------------------


def p95_ms(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 95)) * 1000 if latencies else float("nan")


def per_second(run: StepRun, seconds: int) -> dict[str, list[float]]:
    """Offered and achieved req/s, p95 and failures by second (requests by when due), and
    ready and desired workers (the last scrape in each second)."""
    series: dict[str, list[float]] = {
        k: [] for k in ("offered", "achieved", "p95", "failed", "ready", "desired")
    }
    for second in range(seconds):
        due = [s for s in run.shots if second <= s.due < second + 1]
        done = [s for s in run.shots if s.ok and second <= s.due + s.latency < second + 1]
        scrapes = [x for x in run.scrapes if x.at < second + 1] or run.scrapes[:1]
        series["offered"].append(len(due))
        series["achieved"].append(len(done))
        series["p95"].append(p95_ms([s.latency for s in due if s.ok]))
        series["failed"].append(sum(not s.ok for s in due))
        series["ready"].append(scrapes[-1].ready if scrapes else 0)
        series["desired"].append(float(desired_at(run, second + 1)))
    return series


def desired_at(run: StepRun, at: float) -> int:
    """The desired count at `at`: scraped when the metric has it, else from the log."""
    scraped = [x.desired for x in run.scrapes if x.at <= at and x.desired is not None]
    if scraped:
        return scraped[-1]
    moves = [d["to"] for d in run.decisions if d["at"] <= at]
    first = run.scrapes[0].ready if run.scrapes else 1
    return moves[-1] if moves else first


def worker_seconds(run: StepRun, end: float) -> float:
    """Integral of ready workers over the load (each scrape holds until the next)."""
    total = 0.0
    points = [x for x in run.scrapes if x.at <= end]
    for current, following in zip(points, [*points[1:], None], strict=True):
        until = following.at if following is not None else end
        total += current.ready * (max(0.0, until) - max(0.0, current.at))
    return total


@dataclass
class StepSummary:
    label: str
    decided_after: float | None
    ready_after: float | None
    recovered_after: float | None
    p95_low_ms: float
    p95_high_ms: float
    p95_high_after_ready_ms: float
    requests: int
    failed: int
    achieved_rps: float
    worker_seconds: float
    front_us: float
    workers_us: float
    others_cores: float


def recovery(run: StepRun, step: float, step_end: float, target_ms: float) -> float | None:
    """Seconds from the step to the first half second from which the p95 of requests due
    in each half second stays under target for 5 s (None: it never does)."""
    halves = int((step_end - step) * 2)
    p95 = [
        p95_ms([s.latency for s in run.shots if s.ok and 0 <= s.due - step - h / 2 < 0.5])
        for h in range(halves)
    ]
    for h in range(halves - 9):
        if all(v <= target_ms for v in p95[h : h + 10]):
            return h / 2
    return None


def ideal_worker_seconds(phases: list[Phase], burn_ms: float, most: int) -> float:
    """Worker-seconds of a pool that always had just the workers each phase needs (one
    core per worker), moving at no cost: the least any autoscaler could use."""
    return sum(p.seconds * min(most, max(1, math.ceil(p.rate * burn_ms / 1000))) for p in phases)


def summarize(run: StepRun, phases: list[Phase], target_ms: float) -> StepSummary:
    step, step_end = phases[0].seconds, phases[0].seconds + phases[1].seconds
    end = sum(p.seconds for p in phases)
    ups = [d for d in run.decisions if d["to"] > d["from"] and step <= d["at"] < step_end]
    decided = ups[0]["at"] - step if ups else None
    wanted = max((d["to"] for d in ups), default=None)
    ready = None
    if wanted is not None:
        reached = [x.at for x in run.scrapes if x.at >= step and x.ready >= wanted]
        ready = reached[0] - step if reached else None
    recovered = recovery(run, step, step_end, target_ms)
    high = [s for s in run.shots if step <= s.due < step_end]
    after = [s for s in high if ready is None or s.due >= step + ready]
    low = [s for s in run.shots if not step <= s.due < step_end]
    ok = [s for s in run.shots if s.ok]
    return StepSummary(
        run.label,
        decided,
        ready,
        recovered,
        p95_ms([s.latency for s in low if s.ok]),
        p95_ms([s.latency for s in high if s.ok]),
        p95_ms([s.latency for s in after if s.ok]),
        len(run.shots),
        len(run.shots) - len(ok),
        len(ok) / end,
        worker_seconds(run, end),
        run.front_us,
        run.workers_us,
        run.others_cores,
    )


# --- cold starts --------------------------------------------------------------------


@dataclass
class ColdStart:
    spares: int
    client_ms: float
    waited_ms: float
    """What the request waited for the load (`cold_start_ms` of its access log line)."""
    load_s: float
    """The manager's whole load ("loaded ... in X s")."""
    phases: dict[str, float]


def wait_for(log: Path, test: Any, seen: int, timeout: float = 60) -> dict[str, Any]:
    """The event after the first `seen` that pass `test`, waiting for the log to grow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matching = [e for e in log_events(log) if test(e)]
        if len(matching) > seen:
            return matching[seen]
        time.sleep(0.1)  # polling a log file
    raise RuntimeError(f"no awaited event in {log} after {timeout} s")


def cold_starts(
    spares: int, rounds: int, idle_after: float, home: Path, work: Path
) -> list[ColdStart]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/small/infer"
    env = {
        "SHIPYARD_HOME": str(home),
        "SHIPYARD_SPARE_WORKERS": str(spares),
        "SHIPYARD_SCALE_TO_ZERO_AFTER": str(idle_after),
        "SHIPYARD_MIN_WORKERS": "0",
        "SHIPYARD_MAX_WORKERS_PER_MODEL": "1",
        "SHIPYARD_LOG_FORMAT": "json",
    }
    log = work / f"cold-spares-{spares}.log"
    results = []

    def unloaded(e: dict[str, Any]) -> bool:
        return str(e.get("message", "")).startswith("unloaded idle small:")

    def loaded(e: dict[str, Any]) -> bool:
        return str(e.get("message", "")).startswith("loaded small:")

    with running(server_command(port), url, SK_BODY, env, BENCH, log), httpx.Client() as client:
        for index in range(rounds):
            wait_for(log, unloaded, index)
            time.sleep(0.5)  # idle a moment longer, as a real idle version would be
            started = time.perf_counter()
            response = client.post(
                url, content=SK_BODY, timeout=60, headers={"content-type": "application/json"}
            )
            client_ms = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            request_id = response.headers["x-request-id"]
            load = wait_for(log, loaded, index + 1)  # the first load was the readiness probe
            access = wait_for(log, lambda e, rid=request_id: e.get("request_id") == rid, 0)
            seconds = float(re.findall(r"in ([0-9.]+) s", load["message"])[0])
            results.append(
                ColdStart(
                    spares,
                    client_ms,
                    float(access.get("cold_start_ms", 0)),
                    seconds,
                    load.get("phases", {}),
                )
            )
            print(
                f"spares={spares} cold start {index + 1}: {client_ms:.0f} ms client-side, "
                f"phases {load.get('phases')}",
                flush=True,
            )
    return results


# --- output -------------------------------------------------------------------------


def plot(runs: list[StepRun], phases: list[Phase], target_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    end = int(sum(p.seconds for p in phases))
    fig, (load, latency, workers) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    colors = {"elastic": "tab:blue", "fixed": "tab:orange"}
    for run in runs:
        series = per_second(run, end)
        x = np.arange(end) + 0.5
        color = colors.get(run.label, "tab:gray")
        if run is runs[0]:
            load.step(x, series["offered"], where="mid", color="black", label="offered")
        load.plot(x, series["achieved"], color=color, label=f"{run.label}: answered")
        latency.plot(x, series["p95"], color=color, label=f"{run.label}: p95")
        at = [s.at for s in run.scrapes]
        workers.step(
            at,
            [s.ready for s in run.scrapes],
            where="post",
            color=color,
            label=f"{run.label}: ready",
        )
        if run.label == "elastic":
            workers.step(
                x,
                series["desired"],
                where="mid",
                color=color,
                linestyle=":",
                label="elastic: desired",
            )
    latency.axhline(target_ms, color="red", linestyle="--", linewidth=1, label="p95 target")
    edge = 0.0
    for phase in phases[:-1]:
        edge += phase.seconds
        for axis in (load, latency, workers):
            axis.axvline(edge, color="gray", linewidth=0.8, linestyle=":")
    load.set_ylabel("requests/s")
    latency.set_ylabel("p95 ms (log)")
    latency.set_yscale("log")
    latency.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    latency.yaxis.set_major_formatter(ScalarFormatter())
    latency.yaxis.set_minor_formatter(NullFormatter())
    workers.set_ylabel("workers")
    workers.set_ylim(0, max(s.ready for run in runs for s in run.scrapes) + 0.5)
    workers.yaxis.set_major_locator(MaxNLocator(integer=True))
    workers.set_xlabel("seconds (requests by when they were due)")
    for axis in (load, latency, workers):
        axis.legend(loc="upper right", fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle("Step load: elastic pool vs a fixed pool sized for the peak")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}{unit}"


def markdown(
    summaries: list[StepSummary], colds: list[ColdStart], args: argparse.Namespace, work: Path
) -> list[str]:
    elastic, fixed = summaries
    saving = 1 - elastic.worker_seconds / fixed.worker_seconds
    ideal = ideal_worker_seconds(parse_phases(args.phases), args.burn_ms, args.max_workers)
    command = (
        f".venv/bin/python benchmarks/elasticity.py --phases {args.phases} --burn-ms "
        f"{args.burn_ms:g} --max-workers {args.max_workers} --target-ongoing "
        f"{args.target_ongoing:g} --target-p95-ms {args.target_p95_ms:g} --upscale-delay "
        f"{args.upscale_delay:g} --downscale-delay {args.downscale_delay:g} --clients "
        f"{args.clients} --cold-starts {args.cold_starts} --scale-to-zero-after "
        f"{args.scale_to_zero_after:g}"
    )
    lines = [
        "## Elastic serving: a step load, and cold starts (issue 16)",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores shared "
        "by the load generator (Python threads), the server and whatever else ran. A "
        f"plain-Python model burns {args.burn_ms:g} ms of CPU per row; the load is open loop, "
        f"requests/s:seconds per phase `{args.phases}`, one-row requests, at most "
        f"{args.clients} in flight. Elastic: min 1, max {args.max_workers} workers, target "
        f"{args.target_ongoing:g} ongoing requests per worker, target p95 "
        f"{args.target_p95_ms:g} ms, upscale delay {args.upscale_delay:g} s, downscale delay "
        f"{args.downscale_delay:g} s. Fixed: SHIPYARD_WORKERS_PER_MODEL={args.max_workers}. "
        "Both keep the default spare interpreter. Latency runs from when a request was due "
        "(a late generator still counts), p95 groups requests by when they were due. "
        "*Under target*: from the step to the first half second from which every half "
        "second's p95 stays under target for 5 s. Worker-seconds: ready workers (scraped from "
        "/metrics every 0.5 s) integrated over the load. CPU µs/req: utime+stime of the "
        "server's process tree (front = the HTTP process, workers = the rest, stopped ones "
        "included) per answered request; *others*: cores the rest of the machine (load "
        "generator included) used meanwhile.",
        "",
        "![step load](elasticity.png)",
        "",
        "| pool | scale-up decided | ready | p95 under target | p95 low phases | "
        "p95 high phase | p95 high, once scaled up | failed / requests | answered req/s | "
        "worker-seconds | front µs/req | workers µs/req | others (cores) |",
        "| --- " + "| ---: " * 12 + "|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.label} | {fmt(s.decided_after, ' s')} | {fmt(s.ready_after, ' s')} | "
            f"{fmt(s.recovered_after, ' s')} | {fmt(s.p95_low_ms, ' ms', 0)} | "
            f"{fmt(s.p95_high_ms, ' ms', 0)} | {fmt(s.p95_high_after_ready_ms, ' ms', 0)} | "
            f"{s.failed} / {s.requests:,} | {s.achieved_rps:.1f} | {s.worker_seconds:.0f} | "
            f"{s.front_us:,.0f} | {s.workers_us:,.0f} | {s.others_cores:.2f} |"
        )
    lines += [
        "",
        "Times are seconds after the step up. Worker-seconds saved by the elastic pool: "
        f"**{saving:.0%}** ({elastic.worker_seconds:.0f} vs {fixed.worker_seconds:.0f}); a pool "
        f"that had exactly the workers each phase needs, at no cost to move, would use "
        f"{ideal:.0f} ({1 - ideal / fixed.worker_seconds:.0%} less than fixed): the most this "
        "load shape allows.",
        "",
        "Cold starts of a small scikit-learn model (LogisticRegression, 4 features), "
        f"SHIPYARD_SCALE_TO_ZERO_AFTER={args.scale_to_zero_after:g}, one worker: the server "
        f"unloads it, then one request is timed. Medians of {args.cold_starts} rounds, ms. "
        "Phases are the server's log line `loaded ... (cold start)`: fetch (artifact), spawn "
        "and imports (a fresh interpreter importing the framework) or spare_wait (what was "
        "left of a spare's start), load (unpickling), warm_up (a predict on a row of zeros), "
        "total (the worker's start); whole load = the manager's, fetch to ready; waited = the "
        "request's `cold_start_ms`; client = the request end to end.",
        "",
        "| spare interpreters | " + " | ".join(COLD_PHASES) + " | whole load | waited | client |",
        "| --- " + "| ---: " * (len(COLD_PHASES) + 3) + "|",
    ]
    for spares in sorted({c.spares for c in colds}):
        mine = [c for c in colds if c.spares == spares]
        cells = []
        for phase in COLD_PHASES:
            values = [c.phases[phase] * 1000 for c in mine if phase in c.phases]
            cells.append(f"{statistics.median(values):,.0f}" if values else "-")
        name = f"{spares} ({'before' if spares == 0 else 'after'})"
        lines.append(
            f"| {name} | {' | '.join(cells)} | "
            f"{statistics.median(c.load_s * 1000 for c in mine):,.0f} | "
            f"{statistics.median(c.waited_ms for c in mine):,.0f} | "
            f"{statistics.median(c.client_ms for c in mine):,.0f} |"
        )
    lines += [
        "",
        f"Raw numbers and server logs: `benchmarks/results/{work.name}/` (not committed).",
    ]
    return lines


def parse_phases(text: str) -> list[Phase]:
    phases = [Phase(float(r), float(s)) for r, s in (p.split(":") for p in text.split(","))]
    if len(phases) < 3:
        raise SystemExit("--phases needs low, high, low (rate:seconds each)")
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="15:20,55:20,15:20", help="rate:seconds,...")
    parser.add_argument("--burn-ms", type=float, default=20.0, help="CPU per row")
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--target-ongoing", type=float, default=1.0)
    parser.add_argument("--target-p95-ms", type=float, default=100.0)
    parser.add_argument("--upscale-delay", type=float, default=1.0)
    parser.add_argument("--downscale-delay", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64, help="most requests in flight")
    parser.add_argument("--cold-starts", type=int, default=5, help="rounds per spare setting")
    parser.add_argument("--scale-to-zero-after", type=float, default=2.0)
    args = parser.parse_args()
    phases = parse_phases(args.phases)
    work = BENCH / "results" / ("elasticity-" + time.strftime("%Y%m%d-%H%M%S"))
    work.mkdir(parents=True)
    home = Path(tempfile.mkdtemp(prefix="shipyard-elastic-"))
    (work / "home").symlink_to(home)
    prepare(work, home, args.burn_ms)
    common = {
        "SHIPYARD_HOME": str(home),
        "SHIPYARD_LOG_FORMAT": "json",
        "SHIPYARD_SCALING_TICK": "0.5",
    }
    elastic = {
        **common,
        "SHIPYARD_MIN_WORKERS": "1",
        "SHIPYARD_MAX_WORKERS_PER_MODEL": str(args.max_workers),
        "SHIPYARD_TARGET_ONGOING_REQUESTS": str(args.target_ongoing),
        "SHIPYARD_TARGET_P95_MS": str(args.target_p95_ms),
        "SHIPYARD_UPSCALE_DELAY": str(args.upscale_delay),
        "SHIPYARD_DOWNSCALE_DELAY": str(args.downscale_delay),
    }
    fixed = {**common, "SHIPYARD_WORKERS_PER_MODEL": str(args.max_workers)}
    runs = []
    for label, env in (("elastic", elastic), ("fixed", fixed)):
        runs.append(step_run(label, env, phases, args.clients, work))
        print(
            f"{label}: {len(runs[-1].shots)} requests, decisions {runs[-1].decisions}", flush=True
        )
    summaries = [summarize(run, phases, args.target_p95_ms) for run in runs]
    for s in summaries:
        print(s, flush=True)
    colds = [
        c
        for spares in (0, 1)
        for c in cold_starts(spares, args.cold_starts, args.scale_to_zero_after, home, work)
    ]
    (work / "raw.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "runs": [asdict(r) for r in runs],
                "summaries": [asdict(s) for s in summaries],
                "cold_starts": [asdict(c) for c in colds],
            },
            indent=1,
        )
    )
    plot(runs, phases, args.target_p95_ms)
    write_section(START, END, markdown(summaries, colds, args, work))
    print(f"wrote {PLOT} and the elasticity section of {BENCH / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
