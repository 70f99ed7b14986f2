#!/usr/bin/env python3
"""A small mutation run over the decisions that matter most (`make mutate`).

Each mutant is a realistic one-line bug in security policy, routing, batching,
validation, the cache key, the batch and stream writers, the version counter or the
rollout's gates. For each, the script copies the tracked tree to a scratch folder, checks
that the tests meant to catch it pass, puts the bug in, runs them again, and counts the
mutant killed when they fail. The score is killed / all. Run by hand (minutes), not by
`make test`; the working tree is never touched.

Why our own script rather than mutmut or cosmic-ray: those generate thousands of
operator-level mutants over whole modules, which on this 2-core machine and a suite that
starts real servers would take hours; the point here is the named, realistic bugs an
audit found surviving (issue 23), each with the tests meant to catch it.

    .venv/bin/python scripts/mutate.py [--only ID ...] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    bug: str


MUTANTS = (
    Mutant(
        "policy-predictor-steers-rollouts",
        "src/shipyard/security/policy.py",
        '("POST", "/api/deployments/{name}/rollout/{action}"): P.DEPLOY,',
        '("POST", "/api/deployments/{name}/rollout/{action}"): P.INFER,',
        ("tests/security/test_permissions_table.py",),
        "rollout actions allowed to the predictor role",
    ),
    Mutant(
        "policy-viewer-deploys",
        "src/shipyard/security/policy.py",
        '"viewer": frozenset({Permission.READ, Permission.BUNDLE}),',
        '"viewer": frozenset({Permission.READ, Permission.BUNDLE, Permission.DEPLOY}),',
        ("tests/security/test_permissions_table.py",),
        "the viewer role granted DEPLOY",
    ),
    Mutant(
        "batch-resume-rescores",
        "src/shipyard/batch/local.py",
        "if task.index in done:",
        "if task.index in done and False:",
        ("tests/batch/test_exactly_once.py",),
        "resume scores every chunk again instead of skipping finished parts",
    ),
    Mutant(
        "batch-part-not-atomic",
        "src/shipyard/batch/files.py",
        "        if not self.local:\n            with self.fs.open(path",
        "        if True:\n            with self.fs.open(path",
        ("tests/batch/test_exactly_once.py",),
        "output parts written straight to their final name (no temporary file + rename)",
    ),
    Mutant(
        "stream-ack-without-result",
        "src/shipyard/batch/stream.py",
        "transaction = self._source.pipeline(transaction=True)",
        "transaction = self._source.pipeline(transaction=False)",
        ("tests/batch/test_stream_sink_atomic.py",),
        "a stream's results and acknowledgement sent without MULTI/EXEC",
    ),
    Mutant(
        "sticky-input-random",
        "src/shipyard/routing/arms.py",
        "            return first if isinstance(first, bytes) else str(first).encode()",
        "            return None",
        ("tests/routing/test_sticky_input.py",),
        "input-keyed sticky routing silently random",
    ),
    Mutant(
        "lossy-casts",
        "src/shipyard/serving/validation.py",
        'casting="safe"',
        'casting="same_kind"',
        ("tests/serving/test_lossy_casts.py", "tests/serving/test_validation.py"),
        "lossy casts accepted (INT64 -> INT8, FP64 -> FP32)",
    ),
    Mutant(
        "cache-key-by-name",
        "src/shipyard/serving/dataplane.py",
        "key = cache_key(loaded.key, inputs, wanted)",
        "key = cache_key(loaded.record.model, inputs, wanted)",
        ("tests/serving/test_cache_versions.py",),
        "two versions of a model share cached answers",
    ),
    Mutant(
        "take-batch-off-by-one",
        "src/shipyard/serving/batching.py",
        "rows + item_rows <= max_rows",
        "rows + item_rows <= max_rows + 1",
        ("tests/serving/test_take_batch.py",),
        "a batch may hold one row more than max_batch_size",
    ),
    Mutant(
        "version-counter-not-atomic",
        "src/shipyard/registry/repository.py",
        ".values(last_version=ModelRow.last_version + 1, updated_at=utcnow())",
        ".values(last_version=session.scalar(sa.select(ModelRow.last_version)"
        ".where(ModelRow.id == model_id)) + 1, updated_at=utcnow())",
        ("tests/registry/test_version_counter.py",),
        "the version counter read, then written (a race between registrations)",
    ),
    Mutant(
        "rollout-judged-early",
        "src/shipyard/routing/rollouts.py",
        "return baked >= rollout.bake_seconds and candidate.requests >= rollout.min_requests",
        "return baked >= rollout.bake_seconds or candidate.requests >= rollout.min_requests",
        ("tests/routing/test_bake_wait.py",),
        "a rollout step judged before its bake time or its minimum requests",
    ),
)


def tracked_copy(destination: Path) -> None:
    """The tracked files (and untracked ones git does not ignore) of the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run(mutant: Mutant, scratch: Path) -> tuple[str, float]:
    """'killed', 'survived' or 'invalid' (the text to change is not there once)."""
    path = scratch / mutant.file
    original = path.read_text()
    if original.count(mutant.find) != 1:
        return "invalid", 0.0
    missing = [t for t in mutant.tests if not (scratch / t).exists()]
    if missing:
        return f"invalid (no {missing[0]})", 0.0
    # Without the bug the tests must pass, or a "kill" would mean nothing.
    if not _passes(mutant.tests, scratch):
        return "invalid (the tests fail without the bug)", 0.0
    path.write_text(original.replace(mutant.find, mutant.replace))
    started = time.monotonic()
    try:
        outcome = "survived" if _passes(mutant.tests, scratch) else "killed"
    except subprocess.TimeoutExpired:
        outcome = "killed (timeout)"
    finally:
        path.write_text(original)
    return outcome, time.monotonic() - started


def _passes(tests: tuple[str, ...], scratch: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=scratch,
        # The scratch copy's sources, ahead of the editable install's.
        env={**os.environ, "PYTHONPATH": str(scratch / "src") + os.pathsep + str(scratch)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    options = parser.parse_args()
    chosen = [m for m in MUTANTS if not options.only or m.id in options.only]
    scratch = Path(tempfile.mkdtemp(prefix="shipyard-mutate-"))
    try:
        tracked_copy(scratch)
        killed = 0
        print("| mutant | bug | tests | outcome | seconds |\n| --- | --- | --- | --- | --- |")
        for mutant in chosen:
            outcome, seconds = run(mutant, scratch)
            killed += outcome.startswith("killed")
            tests = ", ".join(Path(t).name for t in mutant.tests)
            print(f"| {mutant.id} | {mutant.bug} | {tests} | {outcome} | {seconds:.1f} |",
                  flush=True)  # fmt: skip
        print(f"\nscore: {killed} of {len(chosen)} mutants killed")
        return 0 if killed == len(chosen) else 1
    finally:
        if options.keep:
            print(f"scratch copy kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
