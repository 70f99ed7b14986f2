"""Batch jobs end to end: real files, real worker processes, the real `shipyard` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from shipyard.batch.files import SUCCESS_MARKER, encode, read_output
from shipyard.batch.jobs import JobStore
from shipyard.batch.options import JobOptions
from shipyard.batch.runner import JobRequest, create_job, run_job
from shipyard.config import Settings
from shipyard.errors import Conflict, InvalidInput
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import FEATURES, write_example_csv, write_sklearn_model
from tests.server import shipyard_command

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def registry(home: Path, tmp_path: Path) -> Iterator[Registry]:
    """A registry on the default SQLite file with model `m` (f0..f3 columns) registered."""
    opened = Registry.open(Settings(home=home))
    model = write_sklearn_model(tmp_path / "model")
    example = write_example_csv(tmp_path / "model")
    opened.register(model, RegistrationOptions(name="m"), example)
    yield opened
    opened.close()


def _model(tmp_path: Path) -> object:
    return joblib.load(tmp_path / "model" / "model.joblib")


def _input_table(rows: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(FEATURES)))
    ids = [f"id-{i:05d}" for i in rng.permutation(rows)]  # ids not in sorted order
    return pa.table({"id": ids, **{name: features[:, j] for j, name in enumerate(FEATURES)}})


def _write_parts(table: pa.Table, folder: Path, fmt: str, parts: int) -> Path:
    """The table split over `parts` files of unequal size, named so name order = row order."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    bounds[1] = max(1, bounds[1] - 7)  # uneven on purpose
    for i in range(parts):
        piece = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        path = folder / f"in-{i:03d}.{EXTENSIONS[fmt]}"
        if fmt == "parquet":
            pq.write_table(piece, path, row_group_size=25)
        else:
            path.write_bytes(encode(piece, fmt))
    return folder


def _expected(tmp_path: Path, table: pa.Table) -> np.ndarray:
    features = np.column_stack([table.column(n).to_numpy() for n in FEATURES])
    return np.asarray(_model(tmp_path).predict(features))  # type: ignore[attr-defined]


def _run(registry: Registry, **request: object) -> str:
    options = request.pop("options", JobOptions(chunk_rows=70, workers=2))
    job = create_job(
        registry,
        JobRequest(
            model_ref=str(request.pop("model_ref", "m")),
            input_uri=str(request.pop("input_uri")),
            output_uri=str(request.pop("output_uri")),
            input_format=request.pop("input_format", None),  # type: ignore[arg-type]
            output_format=request.pop("output_format", None),  # type: ignore[arg-type]
            options=options,  # type: ignore[arg-type]
        ),
        created_by="tester",
    )
    run_job(registry, job.id)
    return job.id


@pytest.mark.parametrize(
    ("in_format", "out_format"),
    [
        ("parquet", "parquet"),
        ("csv", "csv"),
        ("jsonl", "jsonl"),
        ("csv", "parquet"),
        ("parquet", "jsonl"),
    ],
)
def test_round_trip_keeps_ids_and_order(
    registry: Registry, tmp_path: Path, in_format: str, out_format: str
) -> None:
    table = _input_table(500)
    source = _write_parts(table, tmp_path / "input", in_format, parts=3)
    output = tmp_path / "output"
    job_id = _run(
        registry,
        input_uri=source,
        output_uri=output,
        output_format=out_format,
        options=JobOptions(chunk_rows=70, workers=2, id_columns=["id"]),
    )
    result = read_output(str(output), out_format)
    assert result.column_names == ["id", "predict"]
    assert [str(v) for v in result.column("id").to_pylist()] == table.column("id").to_pylist()
    assert result.column("predict").to_pylist() == _expected(tmp_path, table).tolist()
    parts = len(list(output.glob(f"part-*.{out_format}")))
    # Text is cut every 70 rows; Parquet at row-group boundaries (groups of 25 here).
    assert parts == (8 if in_format != "parquet" else 7)
    assert (output / SUCCESS_MARKER).exists() and not (output / "_tmp").exists()
    job = JobStore(registry.sessions).get(job_id)
    assert (job.state, job.rows_done, job.rows_failed) == ("succeeded", 500, 0)
    assert job.chunks_done == parts
    assert (job.model, job.version, job.input_format, job.output_format) == (
        "m",
        1,
        in_format,
        out_format,
    )


def test_csv_ids_stay_text_and_row_numbers_name_rows_without_ids(
    registry: Registry, tmp_path: Path
) -> None:
    table = _input_table(50).set_column(0, "id", pa.array([f"{i:03d}" for i in range(50)]))
    source = tmp_path / "in.csv"
    pa_csv.write_csv(table, source)
    _run(registry, input_uri=source, output_uri=tmp_path / "with-ids", output_format="csv",
         options=JobOptions(chunk_rows=16, workers=1, id_columns=["id"]))  # fmt: skip
    lines = (tmp_path / "with-ids" / "part-000000.csv").read_text().splitlines()
    assert lines[1].startswith('"000",')  # leading zeros kept: ids are read as text

    pq.write_table(table.drop_columns(["id"]), tmp_path / "in.parquet")
    outputs = ["predict", "predict_proba"]
    _run(registry, input_uri=tmp_path / "in.parquet", output_uri=tmp_path / "numbered",
         options=JobOptions(chunk_rows=16, workers=1, outputs=outputs))  # fmt: skip
    result = read_output(str(tmp_path / "numbered"), "parquet")
    assert result.column_names == ["row_number", "predict", "predict_proba_0", "predict_proba_1"]
    assert result.column("row_number").to_pylist() == list(range(50))
    probabilities = _model(tmp_path).predict_proba(  # type: ignore[attr-defined]
        np.column_stack([table.column(n).to_numpy() for n in FEATURES])
    )
    np.testing.assert_allclose(result.column("predict_proba_1").to_numpy(), probabilities[:, 1])


def test_rejected_rows_go_to_the_errors_file_with_reasons(
    registry: Registry, tmp_path: Path
) -> None:
    rows = ["id,f0,f1,f2,f3"] + [f"r{i},{i / 10},0.5,-0.5,1" for i in range(40)]
    rows[6] = "r5,abc,0.5,-0.5,1"  # not a number
    rows[12] = "r11,1.0,,-0.5,1"  # missing: NaN, which this model refuses
    rows[33] = "r32,1.0,0.5,-0.5,1e999"  # inf: refused by the model too
    source = tmp_path / "in.csv"
    source.write_text("\n".join(rows) + "\n")
    job_id = _run(registry, input_uri=source, output_uri=tmp_path / "out",
                  options=JobOptions(chunk_rows=16, workers=1, id_columns=["id"]))  # fmt: skip
    output = read_output(str(tmp_path / "out"), "csv")
    errors = [
        json.loads(line)
        for path in sorted((tmp_path / "out" / "_errors").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert [e["id"] for e in errors] == ["r5", "r11", "r32"]
    assert "f0: cannot read 'abc'" in errors[0]["error"]
    assert "NaN" in errors[1]["error"] and "ValueError" in errors[1]["error"]
    assert "infinity" in errors[2]["error"] or "inf" in errors[2]["error"].lower()
    kept = output.column("id").to_pylist()
    assert len(kept) == 37 and not {"r5", "r11", "r32"} & set(kept)
    assert kept == [f"r{i}" for i in range(40) if i not in (5, 11, 32)]
    job = JobStore(registry.sessions).get(job_id)
    assert (job.rows_done, job.rows_failed) == (40, 3)


def test_fail_on_error_fails_the_job_and_says_which_row(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,f0,f1,f2,f3\na,1,2,3,4\nb,1,x,3,4\n")
    job = create_job(
        registry,
        JobRequest(
            "m",
            str(source),
            str(tmp_path / "out"),
            None,
            None,
            JobOptions(workers=1, id_columns=["id"], fail_on_error=True),
        ),
        "tester",
    )
    with pytest.raises(InvalidInput, match="cannot read 'x'"):
        run_job(registry, job.id)
    failed = JobStore(registry.sessions).get(job.id)
    assert failed.state == "failed" and "'id': 'b'" in failed.error


def test_input_that_does_not_fit_the_model_fails_fast_without_retries(
    registry: Registry, tmp_path: Path
) -> None:
    pq.write_table(pa.table({"f0": [1.0], "f1": [2.0]}), tmp_path / "in.parquet")
    job = create_job(
        registry,
        JobRequest(
            "m",
            str(tmp_path / "in.parquet"),
            str(tmp_path / "out"),
            None,
            None,
            JobOptions(workers=1),
        ),
        "tester",
    )
    with pytest.raises(InvalidInput, match="no column 'f2'"):
        run_job(registry, job.id)
    assert JobStore(registry.sessions).get(job.id).state == "failed"


def test_a_new_job_refuses_an_output_folder_that_holds_parts(
    registry: Registry, tmp_path: Path
) -> None:
    pq.write_table(_input_table(10), tmp_path / "in.parquet")
    job_id = _run(registry, input_uri=tmp_path / "in.parquet", output_uri=tmp_path / "out")
    with pytest.raises(Conflict, match="already holds parts"):
        _run(registry, input_uri=tmp_path / "in.parquet", output_uri=tmp_path / "out")
    with pytest.raises(Conflict, match="already succeeded"):
        run_job(registry, job_id)
    with pytest.raises(InvalidInput, match="no such input"):
        _run(registry, input_uri=tmp_path / "missing.parquet", output_uri=tmp_path / "o2")


# -- the real command: kill -9, a worker killed mid-job, status/list/resume ------------


def _cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*shipyard_command(), *args],
        env={**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _start_cli(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*shipyard_command(), *args],
        env={**os.environ, "SHIPYARD_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: kill -9 takes the workers too
    )


def _start_big_job(home: Path, source: Path, output: Path) -> subprocess.Popen[str]:
    """A job of many small chunks (2,000 rows: one row group each) on two workers."""
    return _start_cli(
        home, "batch", "run", "m", "--input", str(source), "--output", str(output),
        "--id-column", "id", "--chunk-rows", "2000", "--workers", "2",
    )  # fmt: skip


def _wait_for_parts(folder: Path, at_least: int, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = len(list(folder.glob("part-*")))
        if found >= at_least:
            return found
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)  # polling the folder, not waiting for a guess
    raise AssertionError(f"{folder} never held {at_least} parts")


def _big_input(tmp_path: Path, rows: int) -> tuple[Path, pa.Table]:
    table = _input_table(rows, seed=11)
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=2000)  # one chunk per row group
    return path, table


def _job_id(process_stderr: str) -> str:
    first = process_stderr.strip().splitlines()[0]
    return first.split(":")[0]


def _assert_exactly_once(output: Path, table: pa.Table, tmp_path: Path) -> None:
    result = read_output(str(output), "parquet")
    assert result.num_rows == table.num_rows  # none lost, none doubled
    assert result.column("id").to_pylist() == table.column("id").to_pylist()
    assert result.column("predict").to_pylist() == _expected(tmp_path, table).tolist()


def test_kill_9_then_resume_gives_exactly_one_output_row_per_input_row(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    source, table = _big_input(tmp_path, 300_000)
    output = tmp_path / "out"
    process = _start_big_job(home, source, output)
    try:
        _wait_for_parts(output, 20, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    parts_at_kill = len(list(output.glob("part-*")))
    assert 20 <= parts_at_kill < 150 and not (output / SUCCESS_MARKER).exists()
    job_id = _job_id(stderr)

    killed = json.loads(_cli(home, "batch", "status", job_id, "--json").stdout)
    assert killed["state"] == "running" and killed["rows_done"] < table.num_rows

    resumed = _cli(home, "batch", "resume", job_id, "--json")
    record = json.loads(resumed.stdout)
    assert record["state"] == "succeeded" and record["attempts"] == 2
    assert record["rows_done"] == table.num_rows and record["chunks_done"] == 150
    _assert_exactly_once(output, table, tmp_path)

    listed = json.loads(_cli(home, "batch", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    again = _cli(home, "batch", "resume", job_id, check=False)
    assert again.returncode == 1 and "already succeeded" in again.stderr


def test_a_worker_killed_mid_job_costs_a_retry_not_rows(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    import psutil

    source, table = _big_input(tmp_path, 200_000)
    output = tmp_path / "out"
    process = _start_big_job(home, source, output)
    try:
        _wait_for_parts(output, 10, process)
        workers = [
            child
            for child in psutil.Process(process.pid).children()
            if "resource_tracker" not in " ".join(child.cmdline())
        ]
        assert len(workers) == 2, "the job runs its chunks in worker processes"
        workers[0].kill()
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "worker process died" in stderr
    _assert_exactly_once(output, table, tmp_path)


def test_fsspec_uris_work_for_input_and_output(registry: Registry, tmp_path: Path) -> None:
    table = _input_table(120)
    source = _write_parts(table, tmp_path / "input", "jsonl", parts=2)
    output = tmp_path / "out"
    _run(registry, input_uri=f"file://{source}", output_uri=f"file://{output}",
         options=JobOptions(chunk_rows=50, workers=1, id_columns=["id"]))  # fmt: skip
    result = read_output(f"file://{output}", "jsonl")
    assert result.column("id").to_pylist() == table.column("id").to_pylist()
    assert result.column("predict").to_pylist() == _expected(tmp_path, table).tolist()


def test_object_store_parts_are_written_in_one_put_and_found_again() -> None:
    """Object stores (memory:// stands in for s3:// here) get each part in one upload."""
    import fsspec

    from shipyard.batch.files import Sink

    sink = Sink.open("memory://bucket/scores", "parquet")
    assert not sink.local
    sink.prepare(resuming=False)
    table = pa.table({"row_number": [0, 1], "predict": [1, 0]})
    errors = pa.table({"row_number": [2], "error": ["f0: missing value"]})
    sink.write(0, table, errors)
    sink.write(1, table, errors.slice(0, 0))
    assert sink.done_parts() == {0, 1}
    memory = fsspec.filesystem("memory")
    assert not memory.exists("/bucket/scores/_tmp")
    assert memory.cat("/bucket/scores/_errors/part-000000.jsonl").count(b"\n") == 1
    assert read_output("memory://bucket/scores", "parquet").num_rows == 4
    with pytest.raises(Conflict):
        sink.prepare(resuming=False)


def test_ray_executor_gives_the_same_output_as_the_local_one(
    registry: Registry, home: Path, tmp_path: Path
) -> None:
    table = _input_table(3000)
    source = _write_parts(table, tmp_path / "input", "csv", parts=3)
    common = ["--input", str(source), "--chunk-rows", "700", "--outputs", "predict,predict_proba"]
    _cli(home, "batch", "run", "m", *common, "--output", str(tmp_path / "local"), "--workers", "2")
    on_ray = _cli(
        home, "batch", "run", "m", *common, "--output", str(tmp_path / "ray"),
        "--executor", "ray", "--workers", "1", "--json",
    )  # fmt: skip
    record = json.loads(on_ray.stdout)
    assert (record["executor"], record["state"], record["rows_done"]) == ("ray", "succeeded", 3000)
    local = read_output(str(tmp_path / "local"), "csv")
    ray = read_output(str(tmp_path / "ray"), "csv")
    assert local.column_names == ["row_number", "predict", "predict_proba_0", "predict_proba_1"]
    assert ray.equals(local)
    assert (tmp_path / "ray" / SUCCESS_MARKER).exists()
