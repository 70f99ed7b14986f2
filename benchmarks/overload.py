"""Overload held: Shipyard serving `heavy` with one worker, offered 4x its capacity open loop.

Usage (from the repository root, after `make install-dev`; needs `wrk` and `hey`):
    .venv/bin/python benchmarks/overload.py [--factor 4] [--seconds 10]    # or: make overload

Why one worker and one row per predict (`SHIPYARD_WORKERS_PER_MODEL=1`,
`SHIPYARD_MAX_BATCH_SIZE=1`): capacity must sit far below what the generator can offer
while it shares the machine's cores with the server. With batching, the forest runs 30 rows
in about the time of one (~1.5 ms per call from 1 to 32 rows), so capacity is the HTTP
front's (~4k req/s here) and hey cannot offer 4x that: run.py's old overload run offered
3,322 req/s against a capacity of 3,876 and never reached overload. One row per predict
makes the worker the bottleneck at its own service time (~600 req/s), which is honest:
it is what a model that cannot batch gets, and what any model gets once its batches are
full. 4x is then ~2,600 req/s, within hey's reach and below the front's ceiling, so the run
tests admission control rather than a saturated front.

Measured, in order, on one server: the unloaded p99 (wrk, closed loop, c=1); capacity
(wrk, closed loop, c=2: one request running, one queued, enough to keep one worker busy
without refusals, whose instant retries would make a closed loop measure the refusals);
the p99 at the same hey concurrency offered half of capacity (the "unloaded p99 at the same
concurrency"); then `factor` x capacity for `seconds`, open loop. hey's CSV output has a
line per answer but leaves out transport errors, so the offered load is split over two hey
processes at the same per-connection rate: one writes the CSV (latency by status), the
other prints its summary (status counts and every error). CPU: utime+stime from /proc of
the server's front process and its workers around the overload run, and hey's own from
its rusage; RSS of the server's process tree sampled every 0.5 s. A probe request every
0.5 s checks that refusals carry `Retry-After` and a JSON body.

Writes its table between the overload markers of benchmarks/BENCHMARKS.md and raw numbers
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from proc_cpu import TICK_US, tree_ticks
from run import BENCH, PYTHON_BIN, free_port, running, train, tree_rss_mib, write_section, wrk

START = "<!-- overload: start (written by benchmarks/overload.py) -->"
END = "<!-- overload: end -->"
HEY_PROCESSES, HEY_CONNECTIONS = 20, 5
"""hey processes, and workers (connections) in each. Each worker keeps its own pace: at 4x
capacity one request every ~80 ms, far longer than an answer takes, so the answers never set
the rate (open loop). hey starts all its workers' tickers at once, so one hey process sends
bursts of all its connections together; 20 processes of 5 started a 20th of a period apart
spread the load into bursts of 5 (one hey of 100 workers sends bursts of 100, which no
queue bound can tell from a standing overload and which measure the burst, not the server)."""
ENV = {"SHIPYARD_WORKERS_PER_MODEL": "1", "SHIPYARD_MAX_BATCH_SIZE": "1"}


@dataclass
class HeyRun:
    """What hey saw: per-status latencies (ms) from the CSV half, counts from both halves."""

    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    cpu_s: float = 0.0

    def count(self, *codes: str) -> int:
        return sum(self.statuses.get(code, 0) for code in codes)

    def p99(self, *codes: str) -> float:
        values = [v for code in codes for v in self.latencies.get(code, [])]
        return float(np.percentile(values, 99)) if values else float("nan")

    def most(self, *codes: str) -> float:
        values = [v for code in codes for v in self.latencies.get(code, [])]
        return max(values) if values else float("nan")


@dataclass
class Result:
    unloaded_c1_p99_ms: float
    capacity_rps: float
    capacity_refused: int
    same_concurrency_p99_ms: float
    offered_rps: float
    goodput_rps: float
    accepted: int
    accepted_p99_ms: float
    refused: int
    refused_p99_ms: float
    refused_max_ms: float
    other_failures: int
    front_cores: float
    front_us_per_request: float
    workers_cores: float
    hey_us_per_request: float
    rss_before_mib: float
    rss_peak_mib: float
    rss_after_mib: float
    probes: int
    probes_refused: int
    probes_refused_well_formed: int


Probe = tuple[int, bool]
"""A probe request's status, and whether a refusal came with Retry-After and a JSON body."""


def hey(url: str, body: Path, rate: float, seconds: int, work: Path, tag: str,
        watch: int | None = None) -> tuple[HeyRun, list[float], list[Probe]]:  # fmt: skip
    """Offer `rate` req/s open loop for `seconds` over HEY_CONNECTIONS connections; while it
    runs, sample the RSS of `watch`'s tree and probe the server (status, well-formed refusal)."""
    per_worker = rate / (HEY_PROCESSES * HEY_CONNECTIONS)
    command = ["hey", "-z", f"{seconds}s", "-c", str(HEY_CONNECTIONS), "-q", f"{per_worker:.3f}",
               "-m", "POST", "-T", "application/json", "-D", str(body)]  # fmt: skip
    outputs = [work / f"hey-{tag}-{i}.{'csv' if i % 2 else 'txt'}" for i in range(HEY_PROCESSES)]
    rss: list[float] = []
    probes: list[Probe] = []
    runs = []
    for output in outputs:
        # Files, not pipes: hey writes everything at the end. Odd ones write a CSV (latency
        # by status, no transport errors), even ones their summary (every error counted).
        with output.open("w") as sink:
            csv = ["-o", "csv"] if output.suffix == ".csv" else []
            runs.append(subprocess.Popen([*command, *csv, url], stdout=sink))
        time.sleep(1 / per_worker / HEY_PROCESSES)  # staggering the processes' tickers
    cpu, running_ = 0.0, {run.pid: run for run in runs}
    with httpx.Client(timeout=10) as client:
        while running_:
            for pid in list(running_):
                # Reaping hey ourselves gives its exact utime+stime in the rusage.
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    running_.pop(pid).returncode = os.waitstatus_to_exitcode(status)
                    cpu += usage.ru_utime + usage.ru_stime
            if not running_:
                break
            if watch is not None:
                rss.append(tree_rss_mib(watch))
                answer = client.post(url, content=body.read_bytes(),
                                     headers={"content-type": "application/json"})  # fmt: skip
                try:
                    said = answer.json() if answer.status_code in (429, 503) else {}
                except ValueError:
                    said = {}
                well_formed = bool(answer.headers.get("retry-after")) and "error" in said
                probes.append((answer.status_code, well_formed))
            time.sleep(0.5)  # sampling while the load runs, not synchronising
    result = HeyRun(seconds=seconds, cpu_s=cpu)
    for output in outputs:
        text = output.read_text()
        if output.suffix == ".csv":
            for line in text.splitlines()[1:]:
                fields = line.split(",")
                if len(fields) >= 8:
                    result.latencies.setdefault(fields[6], []).append(float(fields[0]) * 1000)
                    result.statuses[fields[6]] = result.statuses.get(fields[6], 0) + 1
            continue
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text):
            result.statuses[code] = result.statuses.get(code, 0) + int(count)
        errors = text.partition("Error distribution:")[2]
        result.errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", errors, re.MULTILINE))
    return result, rss, probes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    work = BENCH / "results" / time.strftime("overload-%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    path = train(work)["heavy"]
    body = (work / "body.json").read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v2/models/heavy/infer"
    command = [str(PYTHON_BIN / "shipyard"), "serve", str(path), "--port", str(port),
               "--grpc-port", "-1"]  # fmt: skip
    env = {**ENV, "SHIPYARD_HOME": tempfile.mkdtemp(prefix="shipyard-overload-")}
    with running(command, url, body, env, BENCH, work / "server.log") as server:
        _, _, unloaded_p99, _ = wrk(url, work / "post.lua", 1, 3)
        capacity = wrk_goodput(url, work / "post.lua", 2, 5)
        print(f"unloaded p99 (c=1) {unloaded_p99:.2f} ms; capacity {capacity[0]:,.0f} req/s "
              f"({capacity[1]} refused at c=2)", flush=True)  # fmt: skip
        calm, _, _ = hey(url, work / "body.json", capacity[0] / 2, 5, work, "half")
        print(
            f"at half capacity over {HEY_CONNECTIONS} connections: p99 "
            f"{calm.p99('200'):.2f} ms, statuses {calm.statuses}, errors {calm.errors}"
        )
        rss_before = tree_rss_mib(server.pid)
        before, started = tree_ticks(server.pid), time.monotonic()
        load, rss, probes = hey(url, work / "body.json", args.factor * capacity[0], args.seconds,
                                work, "overload", watch=server.pid)  # fmt: skip
        after, elapsed = tree_ticks(server.pid), time.monotonic() - started
        rss_after = tree_rss_mib(server.pid)
    answered = sum(load.statuses.values())
    front_s = (after.root - before.root) * TICK_US / 1e6
    workers_s = (after.rest - before.rest) * TICK_US / 1e6
    refusals = [p for p in probes if p[0] in (429, 503)]
    result = Result(
        unloaded_c1_p99_ms=unloaded_p99, capacity_rps=capacity[0], capacity_refused=capacity[1],
        same_concurrency_p99_ms=calm.p99("200"),
        offered_rps=(answered + load.errors) / args.seconds,
        goodput_rps=load.count("200") / args.seconds, accepted=load.count("200"),
        accepted_p99_ms=load.p99("200"), refused=load.count("429", "503"),
        refused_p99_ms=load.p99("429", "503"), refused_max_ms=load.most("429", "503"),
        other_failures=answered - load.count("200", "429", "503") + load.errors,
        front_cores=front_s / elapsed, front_us_per_request=front_s * 1e6 / max(answered, 1),
        workers_cores=workers_s / elapsed,
        hey_us_per_request=load.cpu_s * 1e6 / max(answered, 1),
        rss_before_mib=rss_before, rss_peak_mib=max([rss_before, *rss]), rss_after_mib=rss_after,
        probes=len(probes), probes_refused=len(refusals),
        probes_refused_well_formed=sum(1 for p in refusals if p[1]),
    )  # fmt: skip
    (work / "overload.json").write_text(json.dumps(asdict(result), indent=1))
    for name, value in asdict(result).items():
        print(f"{name:28} {value:,.2f}" if isinstance(value, float) else f"{name:28} {value:,}")
    write_section(START, END, markdown(result, args, work))
    print(f"wrote the overload section of {BENCH / 'BENCHMARKS.md'}")


def wrk_goodput(url: str, script: Path, concurrency: int, seconds: int) -> tuple[float, int]:
    """(2xx answers per second, non-2xx answers) of a closed-loop wrk run."""
    rps, _, _, failed = wrk(url, script, concurrency, seconds)
    requests = rps * seconds
    return (requests - failed) / seconds, failed


def markdown(r: Result, args: argparse.Namespace, work: Path) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    rss_growth = r.rss_after_mib - r.rss_before_mib
    return [
        "## Overload (issue 17): `heavy`, one worker, one row per predict, "
        f"{args.factor:g}x capacity open loop",
        "",
        f"Made by `.venv/bin/python benchmarks/overload.py --factor {args.factor:g} --seconds "
        f"{args.seconds}` (`make overload`) on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores shared by hey and the server. The server runs "
        "`shipyard serve heavy.joblib` with `SHIPYARD_WORKERS_PER_MODEL=1 "
        "SHIPYARD_MAX_BATCH_SIZE=1` and every other setting at its default (admission: "
        "`SHIPYARD_MAX_QUEUE_BATCHES=6`); the script's docstring says why.",
        "",
        "| unloaded p99 ms (wrk c=1) | p99 ms at half capacity, same hey connections | "
        "capacity req/s (wrk c=2, 2xx) | offered req/s | goodput req/s | accepted p99 ms | "
        "refused (503) | refused p99 / max ms | other failures | front cores / µs per request "
        "| workers cores | hey µs per request | RSS before / peak / after MiB |",
        "| " + "---: | " * 13,
        f"| {r.unloaded_c1_p99_ms:.2f} | {r.same_concurrency_p99_ms:.2f} | "
        f"{r.capacity_rps:,.0f} | {r.offered_rps:,.0f} | {r.goodput_rps:,.0f} | "
        f"{r.accepted_p99_ms:.2f} | {r.refused:,} | {r.refused_p99_ms:.2f} / "
        f"{r.refused_max_ms:.2f} | {r.other_failures} | {r.front_cores:.2f} / "
        f"{r.front_us_per_request:,.0f} | {r.workers_cores:.2f} | {r.hey_us_per_request:,.0f} | "
        f"{r.rss_before_mib:.0f} / {r.rss_peak_mib:.0f} / {r.rss_after_mib:.0f} |",
        "",
        "| target | result | |",
        "| --- | --- | --- |",
        f"| offered ≥ {args.factor:g}x capacity | {r.offered_rps / r.capacity_rps:.1f}x | "
        f"{verdict(r.offered_rps >= 0.95 * args.factor * r.capacity_rps)} |",
        f"| goodput ≥ 90% of capacity | {r.goodput_rps / r.capacity_rps:.0%} | "
        f"{verdict(r.goodput_rps >= 0.9 * r.capacity_rps)} |",
        f"| accepted p99 ≤ 2x unloaded p99 at the same concurrency | {r.accepted_p99_ms:.2f} vs "
        f"{r.same_concurrency_p99_ms:.2f} ms ({r.accepted_p99_ms / r.same_concurrency_p99_ms:.2f}x"
        f"; {r.accepted_p99_ms / r.unloaded_c1_p99_ms:.2f}x the wrk c=1 p99) | "
        f"{verdict(r.accepted_p99_ms <= 2 * r.same_concurrency_p99_ms)} |",
        f"| refusals p99 < 10 ms, 503 with Retry-After and a JSON body | {r.refused_p99_ms:.2f} ms;"
        f" {r.probes_refused_well_formed} of {r.probes_refused} refused probes well formed | "
        f"{verdict(r.refused_p99_ms < 10 and r.probes_refused_well_formed == r.probes_refused)}"
        " |",
        f"| RSS flat | {rss_growth:+.0f} MiB over the run | {verdict(abs(rss_growth) < 20)} |",
        f"| zero other failures | {r.other_failures} | {verdict(r.other_failures == 0)} |",
        "",
        f"Raw numbers: `benchmarks/results/{work.name}/overload.json` (not committed).",
    ]


if __name__ == "__main__":
    main()
