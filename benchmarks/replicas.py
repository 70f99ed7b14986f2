"""Replicas behind a load balancer: 1 → 2 → 3 `shipyard server` replicas on one PostgreSQL,
behind HAProxy, on this machine; req/s, p99 and CPU per request per replica, so that the
capacity of N replicas on N machines can be projected.

Usage (from the repository root; needs wrk, haproxy and PostgreSQL's server binaries, all
Debian packages):
    .venv/bin/python benchmarks/replicas.py [--duration 5] [--concurrency 64]

Every replica is started as the tests start one (tests/server.py: one model worker, no
spare interpreter), with its own SHIPYARD_HOME and the shared registry and artifact folder;
HAProxy is the tests' harness (tests/fleet/balancer.py: round robin, health checks on
/v2/health/ready). CPU is utime+stime from /proc around the measured wrk run: each replica's
process tree (front and worker) divided by the requests HAProxy says that replica answered,
and HAProxy's own divided by all of them.
Writes its section of benchmarks/BENCHMARKS.md and raw numbers to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]
from proc_cpu import TICK_US, tree_ticks  # noqa: E402
from run import BENCH, train, write_section, wrk_result  # noqa: E402
from tests.fleet.balancer import (  # noqa: E402
    Balancer,
    Member,
    ReplicaSpec,
    address,
    running_haproxy,
    start_replicas,
)
from tests.postgres import running_postgres  # noqa: E402
from tests.server import RunningServer  # noqa: E402

from shipyard.config import Settings  # noqa: E402
from shipyard.registry.records import RegistrationOptions  # noqa: E402
from shipyard.registry.service import Registry  # noqa: E402

START = "<!-- replicas: start -->"
END = "<!-- replicas: end -->"
MODEL = "light"
MOST = 3


@dataclass
class Step:
    replicas: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    replica_us_per_request: list[float]  # each replica: its tree's CPU / what it answered
    replica_share: list[float]  # each replica's part of the answers
    fleet_us_per_request: float  # every replica's CPU / every answer
    haproxy_us_per_request: float
    generator_us_per_request: float


def ticks(pid: int) -> int:
    tree = tree_ticks(pid)
    return tree.root + tree.rest


def measure(balancer: Balancer, names: list[str], servers: list[RunningServer],
            script: Path, concurrency: int, duration: int) -> Step:  # fmt: skip
    """One warmed-up closed-loop wrk run through the balancer."""
    url = f"{balancer.url}/v2/models/{MODEL}/infer"
    command = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script), url]
    subprocess.run([*command, "-d1s"], capture_output=True, check=True)  # warm-up
    pids = [s.process.pid for s in servers] + [balancer.process.pid]
    answered_before = {n: s.responses_2xx for n, s in balancer.stats().items()}
    before = [ticks(pid) for pid in pids]
    with subprocess.Popen([*command, f"-d{duration}s"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as generator:  # fmt: skip
        out = generator.stdout.read() if generator.stdout else ""
        _, status, usage = os.wait4(generator.pid, 0)  # wrk's own CPU, every thread
        generator.returncode = os.waitstatus_to_exitcode(status)
    after = [ticks(pid) for pid in pids]
    answered = {n: s.responses_2xx - answered_before[n] for n, s in balancer.stats().items()}
    if generator.returncode != 0:
        raise subprocess.CalledProcessError(generator.returncode, generator.args, out)
    requests, rps, p50, p99, failed = wrk_result(out)
    used = [(a - b) * TICK_US for a, b in zip(after, before, strict=True)]
    total = max(sum(answered[n] for n in names), 1)
    return Step(
        replicas=len(names), requests_per_s=rps, p50_ms=p50, p99_ms=p99, failed=failed,
        replica_us_per_request=[u / max(answered[n], 1) for u, n in zip(used, names, strict=False)],
        replica_share=[answered[n] / total for n in names],
        fleet_us_per_request=sum(used[:-1]) / total,
        haproxy_us_per_request=used[-1] / max(requests, 1),
        generator_us_per_request=(usage.ru_utime + usage.ru_stime) * 1e6 / max(requests, 1),
    )  # fmt: skip


def warm(servers: list[RunningServer], body: bytes) -> None:
    for server in servers:
        answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, timeout=60,
                            headers={"content-type": "application/json"})  # fmt: skip
        answer.raise_for_status()


def markdown(steps: list[Step], args: argparse.Namespace, work: Path) -> list[str]:
    cores = os.cpu_count() or 1
    command = (
        f".venv/bin/python benchmarks/replicas.py --duration {args.duration} "
        f"--concurrency {args.concurrency}"
    )
    lines = [
        "## Replicas behind a load balancer (issue 18)",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}, {cores} cores shared by wrk "
        "(1 thread), HAProxy, PostgreSQL, every replica and whatever else ran. 1, 2 and 3 "
        "`shipyard server` replicas (one model worker each, no spare interpreter) on one "
        "PostgreSQL and one artifact folder, behind HAProxy (round robin, health checks on "
        f"`/v2/health/ready`); wrk at c={args.concurrency} for {args.duration} s after a 1 s "
        "warm-up, one-row V2 JSON requests to the `light` model of benchmarks/run.py (a "
        "logistic regression on 20 features). CPU: utime+stime from /proc around the "
        "measured run; *per replica*: each replica's process tree (front and worker) over the "
        "requests HAProxy says it answered; *fleet*: every replica's CPU over every answer; "
        "HAProxy's and wrk's over wrk's requests.",
        "",
        "| replicas | req/s | p50 ms | p99 ms | failed | CPU µs/req per replica | "
        "share of requests | fleet CPU µs/req | HAProxy µs/req | wrk µs/req |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for s in steps:
        per = " / ".join(f"{u:,.0f}" for u in s.replica_us_per_request)
        share = " / ".join(f"{x:.0%}" for x in s.replica_share)
        lines.append(
            f"| {s.replicas} | {s.requests_per_s:,.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | "
            f"{s.failed} | {per} | {share} | {s.fleet_us_per_request:,.0f} | "
            f"{s.haproxy_us_per_request:,.0f} | {s.generator_us_per_request:,.0f} |"
        )
    # The cost of a request when replicas compete for the same cores least: one replica.
    cost = steps[0].fleet_us_per_request
    worst = max(s.fleet_us_per_request for s in steps)
    balancer_cost = max(s.haproxy_us_per_request for s in steps)
    lines += [
        "",
        "Throughput stays flat (or falls) with more replicas here: they share the same "
        f"{cores} cores with each other and the load generator, so adding one adds processes, "
        "not CPU. What moves to other machines is the CPU per request.",
        "",
        f"**Projection** for N replicas on N machines of C cores each: capacity ≈ N x C x "
        f"10⁶ / {cost:,.0f} req/s (the fleet's CPU per request with one replica; "
        f"{worst:,.0f} µs, the most measured above, gives the low end). "
        f"Assumes the replicas are the only bottleneck: PostgreSQL is not on the request path "
        "of a registered model (a replica reads the registry on load and polls it for "
        "changes, not per request), the balancer has cores to spare (HAProxy used "
        f"{balancer_cost:,.0f} µs per request here, so one HAProxy core passes about "
        f"{1e6 / max(balancer_cost, 1):,.0f} req/s), the network is not saturated, and a "
        "replica on its own machine runs enough workers to use its cores (one per core) at "
        "the same CPU per request.",
        "",
        "| replicas (machines) | C = 2 | C = 4 | C = 8 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for n in (1, 2, 3, 10):
        cells = " | ".join(
            f"{n * c * 1e6 / worst:,.0f} to {n * c * 1e6 / cost:,.0f}" for c in (2, 4, 8)
        )
        lines.append(f"| {n} | {cells} |")
    lines += ["", f"Raw numbers: `{work.relative_to(BENCH.parent)}/` (not committed)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = BENCH / "results" / f"replicas-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    model = train(work)[MODEL]
    body = (work / "body.json").read_bytes()
    steps: list[Step] = []
    with ExitStack() as stack:
        database_url = stack.enter_context(running_postgres())
        shared = Path(tempfile.mkdtemp(prefix="shipyard-replicas-"))
        artifacts = shared / "artifacts"
        registry = Registry.open(Settings(home=shared / "registrar", database_url=database_url,
                                          artifact_root=str(artifacts)))  # fmt: skip
        registry.register(model, RegistrationOptions(name=MODEL))
        registry.close()
        env = {"SHIPYARD_DATABASE_URL": database_url, "SHIPYARD_ARTIFACT_ROOT": str(artifacts)}
        names = [f"r{i}" for i in range(MOST)]
        specs = [ReplicaSpec({**env, "SHIPYARD_HOME": str(shared / n)}) for n in names]
        servers = start_replicas(stack, specs)
        warm(servers, body)
        for count in range(1, MOST + 1):
            members = [Member(n, *address(s)) for n, s in zip(names[:count], servers, strict=False)]
            with running_haproxy(members) as balancer:
                balancer.wait_for(names[:count], "UP")
                step = measure(balancer, names[:count], servers[:count], work / "post.lua",
                               args.concurrency, args.duration)  # fmt: skip
            steps.append(step)
            print(f"{count} replica(s): {step.requests_per_s:,.0f} req/s p99 {step.p99_ms:.1f} ms "
                  f"failed {step.failed} CPU µs/req per replica "
                  f"{[round(u) for u in step.replica_us_per_request]} fleet "
                  f"{step.fleet_us_per_request:,.0f} HAProxy {step.haproxy_us_per_request:,.0f}",
                  flush=True)  # fmt: skip
    (work / "steps.json").write_text(json.dumps([asdict(s) for s in steps], indent=1))
    write_section(START, END, markdown(steps, args, work))


if __name__ == "__main__":
    main()
