"""What watching costs: Shipyard's one-row throughput with each monitoring feature on,
against the same server before monitoring existed, in one run on one machine.

Usage (from the repository root, after `make install-dev`; needs `wrk`):
    .venv/bin/python benchmarks/monitoring_overhead.py [--baseline d7ea261] [--duration 5]

`--baseline` names the commit to compare with: it is checked out in a temporary git
worktree and run with the same interpreter and packages (PYTHONPATH puts its sources
first). Writes its table into benchmarks/BENCHMARKS.md between the monitoring markers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, PYTHON_BIN, ROOT, free_port, running, train, write_section, wrk

START = "<!-- monitoring overhead: written by monitoring_overhead.py -->"
END = "<!-- end of monitoring overhead -->"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and discards spans (a collector's cheapest case)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()


@contextmanager
def baseline_tree(rev: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="shipyard-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
                       check=False, capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="d7ea261", help="commit before monitoring")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", default="1,64")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    work = BENCH / "results" / ("monitoring-" + time.strftime("%Y%m%d-%H%M%S"))
    work.mkdir(parents=True)
    path = train(work)["light"]
    body = (work / "body.json").read_bytes()
    rows: list[tuple[str, int, float, float, float, int]] = []
    with baseline_tree(args.baseline) as old, otlp_sink() as sink:
        configurations: list[tuple[str, dict[str, str]]] = [
            (f"before monitoring ({args.baseline})", {"PYTHONPATH": str(old / "src")}),
            ("monitoring, defaults (metrics, JSON access log)", {}),
            ("access log off", {"SHIPYARD_ACCESS_LOG": "false"}),
            ("+ prediction log, every request", {"SHIPYARD_PREDICTION_LOG_SAMPLE": "1"}),
            ("+ OTLP traces, every request", {"SHIPYARD_OTLP_ENDPOINT": sink}),
        ]
        for label, env in configurations:
            port = free_port()
            home = tempfile.mkdtemp(prefix="shipyard-bench-")
            command = [str(PYTHON_BIN / "python"), "-m", "shipyard.cli.main", "serve", str(path),
                       "--port", str(port), "--grpc-port", "-1"]  # fmt: skip
            url = f"http://127.0.0.1:{port}/v2/models/light/infer"
            log = work / f"{len(rows)}.log"
            with running(command, url, body, {"SHIPYARD_HOME": home, **env}, work, log):
                for concurrency in levels:
                    rps, p50, p99, failed = wrk(url, work / "post.lua", concurrency, args.duration)
                    rows.append((label, concurrency, rps, p50, p99, failed))
                    print(f"{label:50} c={concurrency:<3} {rps:8.0f} req/s  p50 {p50:.2f} ms  "
                          f"p99 {p99:.2f} ms  failed {failed}", flush=True)  # fmt: skip
    write_table(rows, args)


def write_table(rows: list[tuple[str, int, float, float, float, int]], args: Any) -> None:
    lines = [
        "## Monitoring overhead (light, one-row requests)",
        "",
        f"Made by `.venv/bin/python benchmarks/monitoring_overhead.py --baseline {args.baseline} "
        f"--duration {args.duration} --concurrency {args.concurrency}` on "
        f"{time.strftime('%Y-%m-%d')}: the light model and wrk as above, 2 cores shared by wrk "
        "and the server, one configuration after another. Compare rows within this table: "
        "machines differ from day to day.",
        "",
        "| configuration | concurrency | req/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {label} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {failed} |"
            for label, c, rps, p50, p99, failed in rows
        ),
    ]
    write_section(START, END, lines)


if __name__ == "__main__":
    main()
