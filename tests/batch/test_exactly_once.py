"""Exactly-once, proven part by part: a part appears whole or not at all, and a resume
scores only the chunks whose parts are missing, leaving finished parts untouched.

The failure is a real one: the job runs under a file-size quota (`ulimit -f`, as on a
host whose disk fills up) and one chunk's part is bigger than the quota allows, so its
write fails half-way through. Nothing in the code under test is patched.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shipyard.batch.files import SUCCESS_MARKER, read_output
from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.server import shipyard_command

CHUNK_ROWS = 10
CHUNKS = 6
POISONED_CHUNK = 2
QUOTA_BYTES = 12 << 20
"""Above what the registry database and the small parts need, below the poisoned part."""
PAYLOAD_BYTES = 2 << 20
"""Each row of the poisoned chunk asks for this much output: 10 rows, 20 MiB of part."""

PADDED_MODEL = '''
import os

import numpy as np


class Padded:
    """Echoes each row's number with a payload of the size the row asks for, and logs
    which rows each predict call scored (the log is the test's independent witness)."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        rows = values[:, 0].astype(np.int64)
        with open(os.environ["SCORED_LOG"], "a") as log:
            log.write(f"{rows.min()} {rows.max()}\\n")
        payload = np.array(["x" * int(size) for size in values[:, 1]], dtype=object)
        return {"row": rows, "payload": payload}
'''


def _cli(
    home: Path, scored_log: Path, *args: str, quota: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit_file_size() -> None:  # runs in the child before exec; workers inherit it
        if quota is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (quota, quota))

    return subprocess.run(
        [*shipyard_command(), *args],
        env={**os.environ, "SHIPYARD_HOME": str(home), "SCORED_LOG": str(scored_log)},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )


def _scored_chunks(scored_log: Path) -> list[int]:
    """The chunk of every predict call in the log, in call order."""
    chunks = []
    for line in scored_log.read_text().splitlines():
        first, last = (int(n) for n in line.split())
        assert first // CHUNK_ROWS == last // CHUNK_ROWS, f"a call spanned chunks: {line}"
        chunks.append(first // CHUNK_ROWS)
    return chunks


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes if a part is rewritten, even with the same bytes: a rename brings a new
    inode, a write in place a new modification time."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


def _parts(output: Path) -> dict[int, Path]:
    return {int(path.name[5:11]): path for path in sorted(output.glob("part-*"))}


@pytest.fixture
def stopped_job(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """A job stopped by a part that did not fit the quota: (home, output, log, job id)."""
    home = tmp_path / "home"
    model = tmp_path / "model" / "padded.py"
    model.parent.mkdir()
    model.write_text(PADDED_MODEL)
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(model, RegistrationOptions(name="padded"))
    finally:
        registry.close()

    rows = np.arange(CHUNKS * CHUNK_ROWS, dtype=np.float64)
    sizes = np.where(rows // CHUNK_ROWS == POISONED_CHUNK, PAYLOAD_BYTES, 8).astype(np.float64)
    source = tmp_path / "in.parquet"
    # One row group per chunk, so chunk k is exactly rows [10k, 10k + 10).
    pq.write_table(pa.table({"row": rows, "size": sizes}), source, row_group_size=CHUNK_ROWS)

    output = tmp_path / "out"
    scored_log = tmp_path / "scored.log"
    failed = _cli(
        home, scored_log, "batch", "run", "padded", "--input", str(source),
        "--output", str(output), "--format", "jsonl", "--chunk-rows", str(CHUNK_ROWS),
        "--workers", "1", "--retries", "0", quota=QUOTA_BYTES,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert f"chunk {POISONED_CHUNK} " in failed.stderr and "File too large" in failed.stderr
    job_id = failed.stderr.strip().splitlines()[0].split(":")[0]
    return home, output, scored_log, job_id


def test_a_part_whose_write_fails_half_way_does_not_exist_and_is_not_counted(
    stopped_job: tuple[Path, Path, Path, str],
) -> None:
    home, output, scored_log, job_id = stopped_job
    parts = _parts(output)
    assert POISONED_CHUNK not in parts
    assert {0, 1} <= set(parts)  # the chunks before it were written whole
    # The write really began: its half lies in _tmp/, cut at the quota.
    halves = list((output / "_tmp").iterdir())
    assert [h.stat().st_size for h in halves] == [QUOTA_BYTES]
    assert halves[0].name.startswith(f"part-{POISONED_CHUNK:06d}.jsonl.")
    for path in parts.values():
        lines = path.read_text().splitlines()
        assert len(lines) == CHUNK_ROWS  # whole parts only
    assert not (output / SUCCESS_MARKER).exists()

    status = _cli(home, scored_log, "batch", "status", job_id, "--json")
    record = json.loads(status.stdout)
    assert record["state"] == "failed"
    # Only chunks that settled count; a chunk still running when the job stopped may have
    # written its part without being counted, never the other way round.
    assert record["chunks_done"] <= len(parts)
    assert record["rows_done"] == CHUNK_ROWS * record["chunks_done"]


def test_resume_scores_only_the_missing_chunks_and_leaves_finished_parts_untouched(
    stopped_job: tuple[Path, Path, Path, str],
) -> None:
    home, output, scored_log, job_id = stopped_job
    before = {index: _identity(path) for index, path in _parts(output).items()}
    missing = sorted(set(range(CHUNKS)) - set(before))
    assert POISONED_CHUNK in missing
    scored_log.write_text("")  # from here on, the log holds what the resume scored

    resumed = _cli(home, scored_log, "batch", "resume", job_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert (record["state"], record["attempts"]) == ("succeeded", 2)
    assert (record["rows_done"], record["chunks_done"]) == (CHUNKS * CHUNK_ROWS, CHUNKS)

    assert sorted(_scored_chunks(scored_log)) == missing
    after = _parts(output)
    assert sorted(after) == list(range(CHUNKS))
    for index, identity in before.items():
        assert _identity(after[index]) == identity, f"part {index} was written again"

    result = read_output(str(output), "jsonl")
    assert result.column("row").to_pylist() == list(range(CHUNKS * CHUNK_ROWS))
    lengths = [len(p) for p in result.column("payload").to_pylist()]
    expected = [PAYLOAD_BYTES if r // CHUNK_ROWS == POISONED_CHUNK else 8 for r in range(60)]
    assert lengths == expected
    assert (output / SUCCESS_MARKER).exists() and not (output / "_tmp").exists()
