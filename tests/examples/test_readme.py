"""README.md, run here: the shell blocks of three sections, in order, as a newcomer pastes them.

The blocks are read from the README, so the README and this test cannot drift apart. The
sections are found by their headings (SECTIONS); their ```bash blocks, and their ```python
blocks (fed to `python -`), run in order in one scratch copy of the repository's
examples/, each in its own `bash` with `set -euo pipefail`, like one terminal: what a block
exports (`export SHIPYARD_URL=…`) or unsets is carried into the next one.

What the newcomer has before the first block is made here the way `make serve` makes it
(see the Makefile's `serve` target): examples/train_iris.py writes examples/build/, the
model is registered as `iris@production`, examples/iris-deployment.yaml is applied, and a
real `shipyard server` runs on SHIPYARD_HOME in a temp folder (tests/server.py).
`.venv/bin` in the copy holds `shipyard` and `python` (this interpreter, which has
Shipyard installed) and an `activate` that puts that folder on PATH, so the README's
`source .venv/bin/activate` line runs and means what it means in a clone.

The README is changed only by SUBSTITUTIONS, each of which must still match, so a changed
README shows up here: the fixed ports the README names (8000/8001 of `make serve`, 9000/9001
of `shipyard serve`, Redis's 6379) become free ones, and the canary's 25 s of traffic
becomes TRAFFIC_SECONDS (enough for the first step's 10 s bake and its gate; the rollback
is then awaited below).

The one marker: a block whose first line is `# needs Redis…` runs against a real
redis-server (tests/redis_server.py); when redis-server or redis-cli is missing it is
skipped, except in CI, where that fails. No other line is ever skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.polling import eventually
from tests.redis_server import redis_available, running_redis
from tests.server import running_server, shipyard_command

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTIONS = ["Quickstart", "A canary that rolls itself back", "Scoring files and streams"]
"""The README's `## ` headings whose blocks this test runs, in this order."""
REDIS_MARKER = "# needs Redis"
"""First line of a block that needs a Redis server (the only lines this test may skip)."""
TRAFFIC_SECONDS = 15
BLOCK_TIMEOUT = 180


@dataclass
class Block:
    section: str
    language: str
    text: str


def readme_blocks() -> list[Block]:
    """The ```bash and ```python blocks of SECTIONS, in README order."""
    heading = re.compile(r"^## (.+)$", re.MULTILINE)
    fence = re.compile(r"^```(bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    text = README.read_text()
    starts = [(match.start(), match.group(1).strip()) for match in heading.finditer(text)]
    bodies = {
        title: text[start : (starts[i + 1][0] if i + 1 < len(starts) else len(text))]
        for i, (start, title) in enumerate(starts)
    }
    missing = [title for title in SECTIONS if title not in bodies]
    assert not missing, f"README.md has no section(s) {missing}: rename them in SECTIONS too"
    blocks = [
        Block(title, match.group(1), match.group(2))
        for title in SECTIONS
        for match in fence.finditer(bodies[title])
    ]
    for title in SECTIONS:
        assert any(block.section == title for block in blocks), f"no shell block in {title!r}"
    return blocks


def free_port_pair() -> int:
    """A port P with P and P + 1 both free: `shipyard serve --port P` takes P + 1 for gRPC."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports found")


class Substitutions:
    """The README's fixed ports and durations, replaced; each one must still match."""

    def __init__(self, ports: dict[str, int], traffic_seconds: int, skipped: set[str]) -> None:
        self.ports = {fixed: str(port) for fixed, port in ports.items()}
        self.skipped = skipped  # names only skipped blocks use: they need not match
        self.port_pattern = re.compile(r"\b(" + "|".join(self.ports) + r")\b")
        self.traffic_pattern = re.compile(r"(canary/traffic\.py \S+) 25\b")
        self.traffic_seconds = traffic_seconds
        self.used: set[str] = set()

    def apply(self, text: str) -> str:
        def port(match: re.Match[str]) -> str:
            self.used.add(match.group(1))
            return self.ports[match.group(1)]

        def traffic(match: re.Match[str]) -> str:
            self.used.add("traffic")
            return f"{match.group(1)} {self.traffic_seconds}"

        # One pass per pattern over the README's text: a new port is never substituted again.
        return self.port_pattern.sub(port, self.traffic_pattern.sub(traffic, text))

    def unused(self) -> set[str]:
        return {*self.ports, "traffic"} - self.used - self.skipped


class Terminal:
    """One shell session in `workspace`, run block by block; exports carry over."""

    def __init__(self, workspace: Path, env: dict[str, str]) -> None:
        self.workspace = workspace
        self.env = env
        self.state = workspace.parent / "exported.sh"
        self.state.write_text("")
        self.transcript: list[str] = []

    def run(self, block: Block, text: str) -> str:
        script = self.workspace.parent / "block.sh"
        body = text if block.language == "bash" else f"python - <<'README_PY'\n{text}README_PY\n"
        # The state is read before `set -u`, written only when every line succeeded.
        script.write_text(
            f'source "{self.state}"\nset -euo pipefail\n{body}\nexport -p > "{self.state}"\n'
        )
        output_path = self.workspace.parent / "block.out"
        with output_path.open("w") as output:
            process = subprocess.Popen(
                ["bash", "--noprofile", "--norc", str(script)],
                cwd=self.workspace,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: what it left running is ended below
            )
            try:
                returncode = process.wait(timeout=BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                returncode = -1
            finally:
                _kill_group(process.pid)
                process.wait()
        printed = output_path.read_text()
        self.transcript.append(
            f"--- {block.section} ({block.language})\n{text}--- output\n{printed}"
        )
        assert returncode == 0, (
            f"README block in {block.section!r} failed (exit {returncode}"
            f"{', timed out' if returncode == -1 else ''}):\n{text}\n--- its output:\n{printed}"
        )
        return printed

    def shipyard(self, *args: str) -> str:
        """A check of the test's own, in the environment the blocks left (no README line)."""
        exported = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", f'source "{self.state}"; env -0'],
            env=self.env, capture_output=True, check=True,
        )  # fmt: skip
        env = dict(item.split("=", 1) for item in exported.stdout.decode().split("\0") if item)
        done = subprocess.run(
            [*shipyard_command(), *args], cwd=self.workspace, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"shipyard {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout


def _kill_group(group: int) -> None:
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(group, signal.SIGKILL)


def _workspace(tmp_path: Path) -> Path:
    """A copy of the repository's examples/ and a `.venv/bin` that is this interpreter."""
    workspace = tmp_path / "clone"
    shutil.copytree(
        ROOT / "examples", workspace / "examples", ignore=shutil.ignore_patterns("build")
    )
    venv_bin = workspace / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, command in (("shipyard", shipyard_command()), ("python", [sys.executable])):
        shim = venv_bin / name
        shim.write_text(f'#!/bin/sh\nexec {" ".join(command)} "$@"\n')
        shim.chmod(0o755)
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
    return workspace


def _base_environment(workspace: Path, home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHIPYARD_")}
    env.update(
        PATH=f"{workspace / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        SHIPYARD_HOME=str(home),
        # As tests/server.py does for its servers: the suite runs on 2 cores.
        SHIPYARD_WORKERS_PER_MODEL="1",
        SHIPYARD_SPARE_WORKERS="0",
        COLUMNS="80",
    )
    return env


def _make_serve_setup(workspace: Path, env: dict[str, str]) -> None:
    """The Makefile's `serve` recipe up to `shipyard server` (which the test starts itself)."""
    steps = [
        [sys.executable, "examples/train_iris.py", "examples/build"],
        [*shipyard_command(), "models", "register", "examples/build/iris.joblib",
         "--name", "iris", "--signature-from", "examples/build/iris-example.csv",
         "--alias", "production", "--skip-unchanged",
         "--description", "Iris classifier (quickstart example)"],
        [*shipyard_command(), "apply", "-f", "examples/iris-deployment.yaml"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            step, cwd=workspace, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{step}:\n{done.stdout}{done.stderr}"


@pytest.fixture
def redis_port() -> Iterator[int | None]:
    """A real redis-server's port, or None when it (or redis-cli) is missing outside CI."""
    if not (redis_available() and shutil.which("redis-cli")):
        message = "redis-server or redis-cli not found: the README's Redis block is skipped"
        if IN_CI:
            pytest.fail(message + " (CI must run it)")
        yield None
        return
    with running_redis() as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.timeout(600)
def test_the_readme_blocks_run_in_order(tmp_path: Path, redis_port: int | None) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not found: the README's blocks call it")
    blocks = readme_blocks()
    workspace = _workspace(tmp_path)
    env = _base_environment(workspace, tmp_path / "home")
    _make_serve_setup(workspace, env)

    with ExitStack() as stack:
        server = stack.enter_context(running_server(env, cwd=workspace, timeout=120))
        assert server.grpc_target is not None, "the server reported no gRPC port"
        serve_port = free_port_pair()
        ports = {
            "8000": int(server.url.rsplit(":", 1)[1]),
            "8001": int(server.grpc_target.rsplit(":", 1)[1]),
            "9000": serve_port,
            "9001": serve_port + 1,
            "6379": redis_port or 6379,
        }
        substitutions = Substitutions(
            ports, TRAFFIC_SECONDS, skipped={"6379"} if redis_port is None else set()
        )
        terminal = Terminal(workspace, env)
        outputs: dict[str, list[str]] = {title: [] for title in SECTIONS}
        for block in blocks:
            if block.text.startswith(REDIS_MARKER) and redis_port is None:
                continue
            printed = terminal.run(block, substitutions.apply(block.text))
            outputs[block.section].append(printed)
            if block.section == "A canary that rolls itself back":
                _wait_for_rollback(terminal)
        assert not substitutions.unused(), (
            f"README no longer names {sorted(substitutions.unused())}: update SUBSTITUTIONS"
        )

        # Loose checks of what the README says the blocks show.
        quickstart = "\n".join(outputs["Quickstart"])
        assert '"predictions":[0]' in quickstart, quickstart  # 5.1, 3.5, 1.4, 0.2: a setosa
        assert "lineage" in quickstart, quickstart  # `models show` has its lineage section
        fraud = json.loads(terminal.shipyard("models", "show", "fraud:1", "--json"))
        assert fraud["archived"] is True and fraud["aliases"] == [], fraud
        _check_batch_output(workspace, terminal)
        if redis_port is not None:
            assert "predict" in outputs["Scoring files and streams"][-1]


def _wait_for_rollback(terminal: Terminal) -> None:
    """The README's `rollout status` line shows where the rollout stood; it must end rolled back."""

    def rolled_back() -> dict[str, object] | None:
        status: dict[str, object] = json.loads(
            terminal.shipyard("rollout", "status", "iris-api", "--json")
        )
        return status if status["state"] in ("rolled_back", "succeeded", "aborted") else None

    status = eventually(rolled_back, "the canary's rollout to finish", timeout=60)
    assert status["state"] == "rolled_back", status
    assert "error rate" in str(status["reason"]), status


def _check_batch_output(workspace: Path, terminal: Terminal) -> None:
    """One output row per input row, as the README promises: counted from the CSV itself."""
    with (workspace / "examples" / "build" / "iris-example.csv").open() as example:
        input_rows = sum(1 for _ in csv.DictReader(example))
    lines = (workspace / "scores" / "part-000000.jsonl").read_text().splitlines()
    assert len(lines) == input_rows
    first = json.loads(lines[0])
    assert {"predict", "predict_proba_0", "predict_proba_1", "predict_proba_2"} <= set(first)
    jobs = json.loads(terminal.shipyard("batch", "list", "--json"))
    assert [job["state"] for job in jobs] == ["succeeded"], jobs
