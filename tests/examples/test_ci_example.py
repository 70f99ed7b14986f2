"""examples/ci/github-actions.yml, run here: its own `run:` steps, in order, on a local registry.

The steps are read from the workflow file, so the example and this test cannot drift
apart. The runner is imitated only as far as the steps need: a checkout of examples/ci
in a scratch workspace, bash with `-eo pipefail`, the job's `env:` (its `${{ }}`
expressions replaced by hand below: no SHIPYARD_URL, so the CLI works on a local
SHIPYARD_HOME), and `$GITHUB_ENV` carried from one step to the next. Expected gates are
named by hand from examples/ci/promotion.yaml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.server import shipyard_command

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ci"
SETUP_STEPS = {"Install"}
"""`run:` steps that only prepare the runner: this environment is already prepared."""
JOB_ENV = {
    "SHIPYARD_URL": None,  # None: left out; the CLI then opens SHIPYARD_HOME itself
    "SHIPYARD_API_KEY": None,
    "MODEL_QUALITY": "good",
}
"""The job's `${{ }}` values, as the test sets them (a run may override MODEL_QUALITY)."""
STEP_TIMEOUT = 120


@dataclass
class Step:
    name: str
    returncode: int
    output: str


class Runner:
    """The workflow's one job, run step by step in `workspace` like a GitHub runner would."""

    def __init__(self, tmp_path: Path) -> None:
        self.workflow: dict[str, Any] = yaml.safe_load((EXAMPLE / "github-actions.yml").read_text())
        (self.job,) = self.workflow["jobs"].values()
        self.workspace = tmp_path / "workspace"
        shutil.copytree(EXAMPLE, self.workspace / "examples" / "ci")  # actions/checkout
        self.home = tmp_path / "shipyard-home"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        # `shipyard` and `python` as the workflow calls them: this interpreter, whose
        # environment has shipyard installed (the skipped Install step's work).
        for name, command in (("shipyard", shipyard_command()), ("python", [sys.executable])):
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nexec {" ".join(command)} "$@"\n')
            shim.chmod(0o755)

    def run_steps(self, quality: str) -> list[Step]:
        """Every `run:` step but the setup ones, in order, stopping at the first failure."""
        github_env = self.workspace / f"github-env-{quality}"
        github_env.touch()
        env = self._environment({"MODEL_QUALITY": quality}, github_env)
        done: list[Step] = []
        for step in self.job["steps"]:
            if "run" not in step or step.get("name") in SETUP_STEPS:
                continue
            script = self.workspace / "step.sh"
            script.write_text(step["run"])
            finished = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                cwd=self.workspace,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            done.append(Step(step["name"], finished.returncode, finished.stdout))
            if finished.returncode != 0:
                break
            env.update(_read_github_env(github_env))
        return done

    def setup_run_steps(self) -> set[str]:
        return {s.get("name", "") for s in self.job["steps"]
                if "run" in s and s.get("name") in SETUP_STEPS}  # fmt: skip

    def artifact_paths(self) -> list[Path]:
        return [self.workspace / step["with"]["path"] for step in self.job["steps"]
                if str(step.get("uses", "")).startswith("actions/upload-artifact")]  # fmt: skip

    def shipyard(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*shipyard_command(), *args], cwd=self.workspace,
            env=self._environment({}, self.workspace / "unused-github-env"),
            capture_output=True, text=True, timeout=STEP_TIMEOUT, check=False,
        )  # fmt: skip

    def _environment(self, overrides: dict[str, str], github_env: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SHIPYARD_", "GITHUB_"))}  # fmt: skip
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            SHIPYARD_HOME=str(self.home),
            GITHUB_ENV=str(github_env),
            GITHUB_WORKSPACE=str(self.workspace),
            GITHUB_SHA="4f6c0a5d2b1e9c8a7f3e2d1c0b9a8f7e6d5c4b3a",
            GITHUB_RUN_ID="1001",
            CI="true",
        )
        for key, value in self.job.get("env", {}).items():
            value = str(value)
            if "${{" in value:
                assert key in JOB_ENV, f"the test does not know what to give {key}: {value}"
                given = overrides.get(key, JOB_ENV[key])
                if given is None:
                    continue
                value = given
            env[key] = value
        return env


def _read_github_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines a step appended to $GITHUB_ENV (the one form the workflow uses)."""
    pairs = (line.partition("=") for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, _, value in pairs}


def _gate_rows(output: str) -> dict[str, str]:
    """Gate name -> pass/FAIL, from the first line of each row of the printed gate table."""
    rows: dict[str, str] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 6 and cells[4] in ("pass", "FAIL") and cells[1]:
            # Several rows per metric with per_slice: any failing one makes the gate FAIL.
            rows[cells[1]] = "FAIL" if "FAIL" in (cells[4], rows.get(cells[1])) else "pass"
    return rows


def _production_version(runner: Runner) -> int:
    shown = runner.shipyard("models", "show", "churn@production", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return int(json.loads(shown.stdout)["version"])


@pytest.mark.timeout(300)
def test_the_workflow_promotes_a_good_model_and_stops_a_worse_one(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    assert runner.setup_run_steps() == SETUP_STEPS  # renamed or removed: say so here
    expected = ["Train", "Register", "Evaluate", "Promote"]

    # First run: no champion yet; the good model passes every gate and takes the alias.
    first = runner.run_steps("good")
    assert [(s.name, s.returncode) for s in first] == [(n, 0) for n in expected], first[-1].output
    promoted = first[-1].output
    gates = _gate_rows(promoted)
    assert gates and set(gates.values()) == {"pass"}, promoted
    assert {"metrics.accuracy", "metrics.roc_auc", "signature", "data_checks"} <= set(gates)
    per_plan = {f"metrics.accuracy[plan={plan}]" for plan in ("basic", "pro", "enterprise")}
    assert per_plan <= set(gates), gates  # per_slice: one gate per plan, named
    assert _production_version(runner) == 1
    for artifact in runner.artifact_paths():
        assert artifact.is_file(), f"the workflow uploads {artifact.name}, never written"
        assert "<svg" in artifact.read_text()

    # Second run: a worse model (it never learned from tenure) is registered and
    # evaluated, then the promote step fails the job and names the gates that stopped it.
    second = runner.run_steps("bad")
    assert [(s.name, s.returncode) for s in second] == [(n, 0) for n in expected[:-1]] + [
        ("Promote", 1)
    ], second[-1].output
    refused = second[-1].output
    gates = _gate_rows(refused)
    # From promotion.yaml: roc_auc min 0.85 and at most 0.01 below the champion's; a model
    # blind to the strongest feature misses both. The data and the signature did not change.
    assert gates["metrics.roc_auc"] == "FAIL", refused
    assert gates["metrics.accuracy"] == "FAIL", refused
    assert gates["signature"] == "pass" and gates["data_checks"] == "pass", refused
    assert "failed" in refused
    assert _production_version(runner) == 1  # the champion keeps the alias
