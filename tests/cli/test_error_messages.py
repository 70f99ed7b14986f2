"""What the command line says when something is wrong: the file, the row and the column,
in plain words, with no exception class names and no tracebacks (issue 22)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import write_example_csv, write_sklearn_model
from tests.server import RunningServer, run_clean_cli, running_server

run_cli = run_clean_cli


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    folder = tmp_path_factory.mktemp("errors")
    home = {"SHIPYARD_HOME": str(folder / "home")}
    model, example = write_sklearn_model(folder), write_example_csv(folder)
    registered = run_cli(home, folder, "models", "register", str(model), "--name", "fraud",
                         "--signature-from", str(example))  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    with running_server(home) as server:
        yield server, folder


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    return done.stderr.strip()


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("0.1,,0.3,0.4", "holes.csv, row 2 (line 3), column 'f1' is empty: the model's input "
         "'f1' (FP64) needs a number there"),
        ("0.1,abc,0.3,0.4", "holes.csv, row 2 (line 3), column 'f1' holds 'abc': the model's "
         "input 'f1' (FP64) needs a number there"),
    ],
)  # fmt: skip
def test_predict_names_the_row_and_column_of_a_bad_cell(
    served: tuple[RunningServer, Path], rows: str, expected: str
) -> None:
    server, folder = served
    holes = folder / "holes.csv"
    holes.write_text(f"f0,f1,f2,f3\n1,2,3,4\n{rows}\n")
    message = _refused(
        run_cli({"SHIPYARD_URL": server.url}, folder, "predict", "fraud", "--input", str(holes))
    )
    assert message == f"error: {expected}"


def test_predict_lists_the_extensions_it_reads(served: tuple[RunningServer, Path]) -> None:
    server, folder = served
    (folder / "rows.txt").write_text("f0,f1,f2,f3\n1,2,3,4\n")
    message = _refused(
        run_cli({"SHIPYARD_URL": server.url}, folder, "predict", "fraud", "--input", "rows.txt")
    )
    assert message == (
        "error: --input rows.txt: predict reads .csv, .parquet (.pq) or .json (a list of "
        "records), not .txt"
    )
    missing = run_cli({"SHIPYARD_URL": server.url}, folder, "predict", "fraud", "-i", "no.csv")
    assert _refused(missing) == "error: --input no.csv: no such file"


@pytest.mark.parametrize("given", ["model.joblib", "./model.joblib", "models/m.onnx"])
def test_serve_a_missing_file_says_no_such_file_or_model(tmp_path: Path, given: str) -> None:
    message = _refused(run_cli({"SHIPYARD_HOME": str(tmp_path / "h")}, tmp_path, "serve", given))
    assert message.startswith(f"error: no such file or model: {given!r} (there is no file at ")


def test_serve_an_unknown_model_name_says_where_it_looked(
    served: tuple[RunningServer, Path],
) -> None:
    _, folder = served
    message = _refused(
        run_cli({"SHIPYARD_HOME": str(folder / "home")}, folder, "serve", "fruad", "--port", "0")
    )
    assert message == (
        "error: no such file or model: 'fruad': no file of that name here, and the registry "
        f"in {folder / 'home'} has no such model version"
    )


def test_a_typo_in_a_deployment_name_says_it_does_not_exist(
    served: tuple[RunningServer, Path],
) -> None:
    server, folder = served
    done = run_cli({"SHIPYARD_URL": server.url}, folder, "rollout", "status", "fruad-api")
    assert _refused(done) == "error: deployment 'fruad-api' does not exist"


def test_usage_errors_carry_no_class_names(tmp_path: Path) -> None:
    done = run_cli({}, tmp_path, "models", "show")
    assert done.returncode == 2
    assert "Missing argument 'ref'" in done.stderr
    assert "MissingParameter" not in done.stderr and "UsageError" not in done.stderr
    bad = run_cli({}, tmp_path, "batch", "list", "--limit", "many")
    assert bad.returncode == 2
    assert "Invalid value for '--limit'" in bad.stderr
    assert "BadParameter" not in bad.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["models", "register"], ["batch", "run"], ["export"], ["edge", "sync"], ["serve"]],
)
def test_help_fits_80_columns(tmp_path: Path, command: list[str]) -> None:
    done = run_cli({}, tmp_path, *command, "--help", columns=80)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert not any(c in done.stdout for c in "╭│╰")  # plain text, no boxes


def test_serve_exits_when_its_model_cannot_load(tmp_path: Path) -> None:
    """A default model that fails to load ends the process with the reason; it used to
    log "Application startup failed. Exiting." and hang, kept alive by the prediction
    log's thread."""
    model = tmp_path / "broken.py"
    model.write_text(
        "class Broken:\n"
        "    def load(self):\n"
        "        raise RuntimeError('weights missing')\n"
        "    def predict(self, inputs):\n"
        "        return inputs\n"
    )
    home = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_SPARE_WORKERS": "0"}
    registered = run_cli(home, tmp_path, "models", "register", str(model), "--name", "broken")
    assert registered.returncode == 0, registered.stderr
    done = run_cli(home, tmp_path, "serve", "broken", "--port", "0", "--grpc-port", "-1")
    assert done.returncode != 0
    assert "broken:1" in done.stdout + done.stderr
