"""The web console's weight and speed with 50 models and 1,000 versions (issue 20's target:
a page under 200 KB and under 100 ms server time).

Usage (from the repository root):
    .venv/bin/python benchmarks/console.py [--requests 30]

A fresh registry gets 50 models of 20 versions each (rows written through the registry's
own repository, with a placeholder artifact digest: no page loads an artifact), 5
deployments with 5 revisions each, then `shipyard server` (open, loopback) serves it.
Each page is fetched `--requests` times, one at a time: the time is the client's, on
loopback, so it bounds the server's from above; CPU is the server's utime+stime from
/proc over the same requests, per request. Page weight is the HTML plus every asset it
loads (the stylesheet and htmx; both cached by a browser after the first page).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.proc_cpu import TICK_US, cpu_ticks, process_tree
from tests.server import running_server

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import Lineage
from shipyard.registry.repository import NewVersion
from shipyard.registry.service import Registry
from shipyard.signature import Signature, TensorSpec

MODELS, VERSIONS, DEPLOYMENTS, REVISIONS = 50, 20, 5, 5
PAGES = [
    "/ui",
    "/ui/fragments/overview",
    "/ui/models/model-07",
    "/ui/deployments/api-2",
    "/ui/deployments/api-2/live",
    "/ui/jobs",
]
_ASSET = re.compile(r'(?:src|href)="(/ui/static/[^"]+)"')


def populate(home: Path) -> None:
    registry = Registry.open(Settings(home=home))
    signature = Signature(
        inputs=[TensorSpec(name=f"f{i}", datatype="FP64") for i in range(8)],
        outputs=[TensorSpec(name="predict", datatype="INT64")],
    )
    try:
        for m in range(MODELS):
            for v in range(VERSIONS):
                registry.models.create_version(
                    f"model-{m:02d}",
                    NewVersion(
                        flavor="sklearn",
                        artifact_digest=f"{m:02d}{v:02d}".ljust(64, "0"),
                        artifact_size=1024,
                        signature=signature,
                        lineage=Lineage(params={"C": str(v)}, metrics={"auc": 0.8 + v / 100}),
                        aliases=["production"] if v == VERSIONS - 2 else [],
                    ),
                )
        for d in range(DEPLOYMENTS):
            for r in range(REVISIONS):
                text = (
                    f"name: api-{d}\nmodel: model-{d:02d}\ndescription: rev {r}\n"
                    "routes: [{alias: production}]\n"
                )
                registry.deployments.apply(parse_manifest(text))
    finally:
        registry.close()


def measure(url: str, pid: int, requests: int) -> list[tuple[str, int, float, float, float]]:
    rows = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for page in PAGES:
            client.get(page)  # warm: templates compiled, caches filled
            tree = process_tree(pid)
            before = sum(cpu_ticks(tree).values())
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                answer = client.get(page)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, (page, answer.status_code)
            cpu_us = (sum(cpu_ticks(tree).values()) - before) * TICK_US / requests
            assets = sum(len(client.get(a).content) for a in set(_ASSET.findall(answer.text)))
            weight = len(answer.content) + assets
            rows.append(
                (
                    page,
                    weight,
                    statistics.median(times),
                    sorted(times)[int(0.95 * (len(times) - 1))],
                    cpu_us,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipyard-console-bench-") as scratch:
        home = Path(scratch) / "home"
        started = time.perf_counter()
        populate(home)
        print(
            f"registry: {MODELS} models x {VERSIONS} versions, {DEPLOYMENTS} deployments "
            f"({time.perf_counter() - started:.0f} s to write)"
        )
        with running_server({"SHIPYARD_HOME": str(home)}) as server:
            rows = measure(server.url, server.process.pid, arguments.requests)
    print("| page | weight (KB, with assets) | median ms | p95 ms | server CPU µs/request |")
    print("| --- | --- | --- | --- | --- |")
    for page, weight, median, p95, cpu in rows:
        print(f"| `{page}` | {weight / 1024:.0f} | {median:.1f} | {p95:.1f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
