"""The Ray executor on a real local Ray instance, started once for the module.

Its output must be the table the local executor writes: the whole input scored in
one piece in this process, then encoded and decoded as the output format.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shipyard.batch.files import Sink, decode, encode, open_source, read_output
from shipyard.batch.model import Scorer
from shipyard.batch.ray_executor import (
    RayOutcome,
    _on_this_node,
    _ship,
    cpus_per_actor,
    run_on_ray,
)
from shipyard.errors import Conflict, InvalidInput, MissingExtra
from shipyard.runtimes.base import VersionSpec
from shipyard.runtimes.detect import inspect_model
from tests.fixtures import FEATURES, write_sklearn_model

ray = pytest.importorskip("ray")

# Ray 2.60's DataContext warns about deprecated settings of its own when it is created.

EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
FILE_ROWS = (37, 50, 13)  # uneven, each bigger than a chunk
CHUNK_ROWS = 16


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray for the module; run_on_ray uses it and leaves it running."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 << 20,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> VersionSpec:
    path = write_sklearn_model(tmp_path_factory.mktemp("model"))
    inspected = inspect_model(path)
    return VersionSpec(
        model="m",
        version=1,
        flavor=inspected.flavor,
        path=str(path),
        signature=inspected.signature,
        details=inspected.details,
    )


def _input_files(folder: Path, fmt: str, *, ids: bool = False, bad_row: int | None = None) -> Path:
    """Files of FILE_ROWS rows of f0..f3, after an `id` column if `ids` (zero-padded
    text); `bad_row` gets "abc" as its f0, which only a text format can carry."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    first = 0
    for number, rows in enumerate(FILE_ROWS):
        features = rng.normal(size=(rows, len(FEATURES)))
        table = pa.table({name: features[:, j] for j, name in enumerate(FEATURES)})
        if bad_row is not None and first <= bad_row < first + rows:
            f0 = table["f0"].cast(pa.string()).to_pylist()
            f0[bad_row - first] = "abc"
            table = table.set_column(0, "f0", pa.array(f0))
        if ids:
            table = table.add_column(0, "id", pa.array([f"{first + i:05d}" for i in range(rows)]))
        path = folder / f"in-{number:03d}.{EXTENSIONS[fmt]}"
        if fmt == "parquet":
            pq.write_table(table, path, row_group_size=10)
        else:
            path.write_bytes(encode(table, fmt))
        first += rows
    return folder


def _expected(spec: VersionSpec, input_uri: str, id_columns: list[str], fmt: str) -> pa.Table:
    """Scored in one piece here, then through the output format as a part would be."""
    whole = pa.concat_tables(open_source(input_uri).chunks(10**9))
    scored = Scorer(spec).score(whole, id_columns, 0)
    return decode(encode(scored.output, fmt), fmt)


def _run(
    spec: VersionSpec, input_uri: str, output: Path, fmt: str, **options: object
) -> RayOutcome:
    settings: dict[str, object] = {
        "id_columns": [],
        "chunk_rows": CHUNK_ROWS,
        "workers": 2,
        "outputs": None,
        "fail_on_error": False,
        "address": None,
        **options,
    }
    return run_on_ray(
        spec,
        open_source(input_uri),
        Sink.open(str(output), fmt),
        **settings,  # type: ignore[arg-type]
    )


@pytest.mark.usefixtures("ray_instance")
def test_parquet_without_id_column_numbers_rows_across_files(
    spec: VersionSpec, tmp_path: Path
) -> None:
    """row_number runs on across files; a rerun clears what a stopped run left."""
    source = _input_files(tmp_path / "in", "parquet")
    output = tmp_path / "out"
    (output / "_errors").mkdir(parents=True)
    (output / "part-999999-000000000000.parquet").write_bytes(b"left by a killed run")
    (output / "_errors" / "part-999999-000000000000.jsonl").write_bytes(b"{}\n")
    progress: list[tuple[int, int]] = []

    outcome = _run(
        spec,
        str(source),
        output,
        "parquet",
        resuming=True,
        on_progress=lambda rows, rejected: progress.append((rows, rejected)),
    )

    expected = _expected(spec, str(source), [], "parquet")
    assert read_output(str(output), "parquet").equals(expected)
    assert expected.column_names[0] == "row_number"
    assert expected["row_number"].to_pylist() == list(range(sum(FILE_ROWS)))
    assert outcome.rows == sum(FILE_ROWS)
    assert outcome.rejected == 0
    assert outcome.parts == len(list(output.glob("part-*.parquet"))) > len(FILE_ROWS)
    assert not (output / "_errors").exists()
    assert progress[-1] == (outcome.rows, 0)
    assert [rows for rows, _ in progress] == sorted(rows for rows, _ in progress)


@pytest.mark.usefixtures("ray_instance")
def test_csv_with_id_column_sets_rejected_rows_aside(spec: VersionSpec, tmp_path: Path) -> None:
    """Ids stay text on the way in; the row with "abc" ends in _errors/ with why."""
    source = _input_files(tmp_path / "in", "csv", ids=True, bad_row=45)
    output = tmp_path / "out"

    outcome = _run(spec, str(source), output, "csv", id_columns=["id"])

    expected = _expected(spec, str(source), ["id"], "csv")
    assert read_output(str(output), "csv").equals(expected)
    assert expected.num_rows == sum(FILE_ROWS) - 1
    assert (outcome.rows, outcome.rejected) == (sum(FILE_ROWS), 1)
    errors = [decode(path.read_bytes(), "jsonl") for path in (output / "_errors").iterdir()]
    assert [row for table in errors for row in table.to_pylist()] == [
        {"id": "00045", "error": "f0: cannot read 'abc' as double"}
    ]


@pytest.mark.usefixtures("ray_instance")
def test_json_lines_without_id_column(spec: VersionSpec, tmp_path: Path) -> None:
    source = _input_files(tmp_path / "in", "jsonl")
    output = tmp_path / "out"

    outcome = _run(spec, str(source), output, "jsonl", chunk_rows=7)

    assert read_output(str(output), "jsonl").equals(_expected(spec, str(source), [], "jsonl"))
    assert outcome.rows == sum(FILE_ROWS)
    first_line = next(iter(sorted(output.glob("part-*.jsonl")))).read_text().splitlines()[0]
    assert first_line.startswith('{"row_number":0,"predict":')


@pytest.mark.usefixtures("ray_instance")
def test_fail_on_error_stops_the_job_with_the_rejected_row(
    spec: VersionSpec, tmp_path: Path
) -> None:
    source = _input_files(tmp_path / "in", "csv", bad_row=3)

    with pytest.raises(InvalidInput, match=r"'row_number': 3.*--fail-on-error"):
        _run(spec, str(source), tmp_path / "out", "csv", fail_on_error=True, workers=1)


def test_a_new_job_refuses_a_folder_with_parts(spec: VersionSpec, tmp_path: Path) -> None:
    source = _input_files(tmp_path / "in", "parquet")
    output = tmp_path / "out"
    output.mkdir()
    (output / "part-000000-000000000000.parquet").write_bytes(b"an earlier job's")

    with pytest.raises(Conflict, match="already holds parts"):
        _run(spec, str(source), output, "parquet")


@pytest.mark.usefixtures("ray_instance")
def test_a_node_without_the_model_file_unpacks_the_shipped_copy(
    spec: VersionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    shipped = _ship(spec)
    elsewhere = replace(spec, path=str(tmp_path / "not-on-this-node" / "model.joblib"))

    landed = _on_this_node(elsewhere, shipped)

    assert Path(landed.path).read_bytes() == Path(spec.path).read_bytes()
    assert _on_this_node(elsewhere, shipped) == landed  # unpacked once, then reused
    assert _on_this_node(spec, shipped) == spec


@pytest.mark.parametrize(
    ("cluster_cpus", "workers", "share"),
    [
        (16.0, 4, 1.0),  # room for a core each
        (2.0, 2, 0.875),  # a 2-core box: the reader's quarter comes off
        (2.0, 1, 1.0),
        (0.0, 8, 1.0),  # no CPUs reported yet: ask for cores, let the cluster grow
    ],
)
def test_cpus_per_actor(cluster_cpus: float, workers: int, share: float) -> None:
    assert cpus_per_actor(cluster_cpus, workers) == pytest.approx(share)


def test_without_ray_installed_says_which_extra(
    spec: VersionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when absent
    source = _input_files(tmp_path / "in", "parquet")

    with pytest.raises(MissingExtra, match=r"shipyard\[ray\]"):
        _run(spec, str(source), tmp_path / "out", "parquet")
