"""Shipyard's serving speed at two git revisions, side by side in one run on one machine.

Usage (from the repository root, after `make install-dev`; needs `wrk`):
    .venv/bin/python benchmarks/compare_commits.py [--base f92264e] [--rounds 3]
        [--duration 10] [--concurrency 64]

"before" is `--base`, checked out in a temporary git worktree and served by the same
interpreter and packages with PYTHONPATH=<worktree>/src (it comes before the editable
install's .pth, and the spawned model workers inherit it); "after" is this working tree.
Both run `shipyard serve MODEL --port P --grpc-port -1` with a fresh SHIPYARD_HOME, one
server at a time, and take turns round after round (before, after, then after, before, ...)
so that drift of the shared machine hits both sides alike.

Each measurement starts a fresh server, warms it up with 1 s of wrk, then runs wrk for
`--duration` seconds and reads the CPU time (utime + stime from /proc) of the server's
process tree right before and right after that run: CPU per request is far steadier than
req/s on a shared machine. The table (medians over rounds, and the min-max spread) goes
into benchmarks/BENCHMARKS.md between the compare_commits markers; raw numbers and server
logs go to benchmarks/results/compare-<time>/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proc_cpu import TICK_US, cpu_ticks, process_tree
from run import BENCH, PYTHON_BIN, free_port, running, train, write_section

ROOT = BENCH.parent
START = "<!-- compare_commits: start -->"
END = "<!-- compare_commits: end -->"
SIDES = ("before", "after")


@dataclass
class Side:
    name: str
    revision: str
    src: Path
    env: dict[str, str]


@dataclass
class Measurement:
    model: str
    concurrency: int
    side: str
    round: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    front_us_per_request: float
    worker_us_per_request: float

    @property
    def total_us_per_request(self) -> float:
        return self.front_us_per_request + self.worker_us_per_request


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="shipyard-before-"))
    git("worktree", "add", "--detach", str(folder), revision)
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
            check=False,
            capture_output=True,
        )


def check_imports(side: Side) -> None:
    """Fail unless this side's interpreter imports shipyard from the side's own sources."""
    found = subprocess.run(
        [str(PYTHON_BIN / "python"), "-c", "import shipyard; print(shipyard.__file__)"],
        env={**os.environ, **side.env},
        cwd=BENCH,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(side.src.resolve()):
        raise RuntimeError(f"{side.name}: shipyard imported from {found}, not {side.src}")
    print(f"{side.name}: {side.revision} imports shipyard from {found}", flush=True)


def check_environment(pids: list[int], side: Side) -> None:
    """Every process of the server (front and workers) runs with this side's PYTHONPATH."""
    expected = side.env.get("PYTHONPATH")
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        if env.get("PYTHONPATH") != expected:
            raise RuntimeError(f"{side.name}: pid {pid} has PYTHONPATH={env.get('PYTHONPATH')}")


def measure(
    url: str, script: Path, concurrency: int, duration: int, server: int, side: Side
) -> tuple[dict[str, float], float, float]:
    """One warmed-up wrk run: its summary, and front and worker CPU µs over the run.

    run.py's wrk() does warm-up and measured run in one call; CPU has to be read between
    the two, so this runs the same wrk commands with the same summary script itself.
    """
    command = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script), url]
    subprocess.run([*command, "-d1s"], capture_output=True, check=True)  # warm-up
    pids = process_tree(server)
    check_environment(pids, side)
    before = cpu_ticks(pids)
    out = subprocess.run(
        [*command, f"-d{duration}s"], capture_output=True, text=True, check=True
    ).stdout
    pids = process_tree(server)
    after = cpu_ticks(pids)
    used = {pid: ticks - before.get(pid, 0) for pid, ticks in after.items()}
    front = used.pop(server, 0) * TICK_US
    workers = sum(used.values()) * TICK_US
    summary: dict[str, float] = json.loads(
        out[out.index("RESULT ") + len("RESULT ") :].splitlines()[0]
    )
    return summary, front, workers


def run_one(
    side: Side, model: str, path: Path, levels: list[int], duration: int, round_: int, work: Path
) -> list[Measurement]:
    port = free_port()
    home = tempfile.mkdtemp(prefix="shipyard-bench-")
    command = [
        str(PYTHON_BIN / "shipyard"),
        "serve",
        str(path),
        "--port",
        str(port),
        "--grpc-port",
        "-1",
    ]
    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    body = (work / "body.json").read_bytes()
    log = work / f"{model}-{side.name}-{round_}.log"
    results = []
    with running(command, url, body, {"SHIPYARD_HOME": home, **side.env}, BENCH, log) as server:
        for concurrency in levels:
            summary, front, workers = measure(
                url, work / "post.lua", concurrency, duration, server.pid, side
            )
            requests = int(summary["requests"])
            failed = sum(int(summary[k]) for k in ("status", "connect", "read", "write", "timeout"))
            m = Measurement(
                model,
                concurrency,
                side.name,
                round_,
                requests,
                requests / (summary["duration_us"] / 1e6),
                summary["p50_us"] / 1000,
                summary["p99_us"] / 1000,
                failed,
                front / max(requests, 1),
                workers / max(requests, 1),
            )
            results.append(m)
            print(
                f"round {round_} {model:5} {side.name:6} c={concurrency:<3} "
                f"{m.requests_per_s:7.0f} req/s  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  "
                f"non-2xx {failed}  CPU/req front {m.front_us_per_request:5.0f} µs  "
                f"workers {m.worker_us_per_request:5.0f} µs",
                flush=True,
            )
    return results


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def overlap(a: list[float], b: list[float]) -> bool:
    return max(min(a), min(b)) <= min(max(a), max(b))


def report(
    measurements: list[Measurement],
    sides: dict[str, Side],
    args: argparse.Namespace,
    after_note: str,
    work: Path,
) -> list[str]:
    before, after = sides["before"], sides["after"]
    command = (
        f".venv/bin/python benchmarks/compare_commits.py --base {args.base} "
        f"--rounds {args.rounds} --duration {args.duration} --concurrency {args.concurrency}"
    )
    lines = [
        "## Refactoring check: before vs after (issue 14)",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: before = `{before.revision}` "
        f"(git worktree, PYTHONPATH on its src), after = `{after.revision}` (this working tree"
        f"{after_note}). Same interpreter and packages, {os.cpu_count()} cores shared by wrk "
        f"(1 thread) and the server, one server at a time, {args.rounds} round(s) taking turns "
        f"(before, after, then after, before, ...), a fresh server each time, 1 s wrk warm-up, "
        f"then {args.duration} s measured. Values are "
        "medians over rounds; spread is min-max over rounds. CPU µs/req is utime+stime of the "
        "server's processes over the measured run (front = the HTTP process, workers = its "
        "child processes) divided by the requests wrk completed.",
        "",
        "| model | c | side | req/s | req/s spread | p50 ms | p99 ms | non-2xx | "
        "front µs/req | workers µs/req | total µs/req | total spread |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reading = []
    groups = sorted(
        {(m.model, m.concurrency) for m in measurements}, key=lambda g: (g[0] != "light", g[1])
    )
    for model, concurrency in groups:
        by_side = {
            s: [
                m
                for m in measurements
                if (m.model, m.concurrency, m.side) == (model, concurrency, s)
            ]
            for s in SIDES
        }
        for side, ms in by_side.items():
            rps = [m.requests_per_s for m in ms]
            total = [m.total_us_per_request for m in ms]
            lines.append(
                f"| {model} | {concurrency} | {side} `{sides[side].revision}` | "
                f"{statistics.median(rps):,.0f} | {spread(rps)} | "
                f"{statistics.median(m.p50_ms for m in ms):.2f} | "
                f"{statistics.median(m.p99_ms for m in ms):.2f} | {sum(m.non_2xx for m in ms)} | "
                f"{statistics.median(m.front_us_per_request for m in ms):,.0f} | "
                f"{statistics.median(m.worker_us_per_request for m in ms):,.0f} | "
                f"{statistics.median(total):,.0f} | {spread(total)} |"
            )
        parts = []
        for label, key in (("req/s", "requests_per_s"), ("CPU µs/req", "total_us_per_request")):
            old = [getattr(m, key) for m in by_side["before"]]
            new = [getattr(m, key) for m in by_side["after"]]
            change = statistics.median(new) / statistics.median(old) - 1
            verdict = (
                "within the noise (spreads overlap)"
                if overlap(old, new)
                else "more than the noise (spreads do not overlap)"
            )
            parts.append(f"{label} {change:+.1%}, {verdict}")
        reading.append(f"- {model}, c={concurrency}: after vs before medians: {'; '.join(parts)}.")
    lines += [
        "",
        *reading,
        "",
        f"Raw numbers and logs: `benchmarks/results/{work.name}/` (not committed).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="f92264e", help="the 'before' revision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured wrk")
    parser.add_argument("--concurrency", default="64", help="comma-separated wrk connections")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.pop("PYTHONPATH", None)  # the after side runs the editable install as is
    dirty = bool(git("status", "--porcelain", "--", "src"))
    work = BENCH / "results" / ("compare-" + time.strftime("%Y%m%d-%H%M%S"))
    work.mkdir(parents=True)
    paths = train(work)
    measurements: list[Measurement] = []
    with worktree(args.base) as old:
        sides = {
            "before": Side(
                "before",
                git("rev-parse", "--short", args.base),
                old / "src",
                {"PYTHONPATH": str(old / "src")},
            ),
            "after": Side("after", git("rev-parse", "--short", "HEAD"), ROOT / "src", {}),
        }
        for side in sides.values():
            check_imports(side)
        for round_ in range(args.rounds):
            order = SIDES if round_ % 2 == 0 else SIDES[::-1]
            for model, path in paths.items():
                for name in order:
                    measurements += run_one(
                        sides[name], model, path, levels, args.duration, round_, work
                    )
    (work / "measurements.json").write_text(
        json.dumps(
            [{**asdict(m), "total_us_per_request": m.total_us_per_request} for m in measurements],
            indent=1,
        )
    )
    # Others may commit or edit src/ while this runs: say so next to the after revision.
    dirty = dirty or bool(git("status", "--porcelain", "--", "src"))
    head = git("rev-parse", "--short", "HEAD")
    after_note = ", with uncommitted changes in src/" if dirty else ""
    if head != sides["after"].revision:
        after_note += f"; HEAD moved to `{head}` during the run"
    lines = report(measurements, sides, args, after_note, work)
    print("\n".join(lines))
    write_section(START, END, lines)
    print(f"wrote {BENCH / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
