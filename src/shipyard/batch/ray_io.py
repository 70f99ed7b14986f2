"""Ray Data's two ends of a batch job: the input as blocks whose rows know where they
came from, and output parts whose names sort in input order.

Reading goes through `Source.chunks`, the local executor's own reader, so CSV typing
(every column as text, empty = missing) and JSON Lines parsing are the same on both
executors. Ray's stock readers cannot say where in its file a row was, and a row's
position is what `row_number` is made of when the job has no id column.

Imported only when a job runs on Ray: importing Ray Data takes seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from pyarrow.fs import FSSpecHandler, PyFileSystem
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import BlockBasedFileDatasink, FilenameProvider

from shipyard.batch.files import Sink, Source, encode

FILE_COLUMN = "__shipyard_file"
"""Which input file a row came from (its index in `Source.files`)."""
ROW_COLUMN = "__shipyard_row"
"""The row's position in its file, from 0."""
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


class InputDatasource(Datasource):  # type: ignore[misc]
    """The input files, a contiguous run of them per read task, every row tagged with
    its file and its position in that file."""

    def __init__(self, source: Source, chunk_rows: int) -> None:
        super().__init__()
        self.source = source
        self.chunk_rows = chunk_rows

    def get_name(self) -> str:
        return f"Shipyard{self.source.format.capitalize()}"

    def estimate_inmemory_data_size(self) -> int | None:
        return self.source.total_bytes or None  # bytes on disk: all Ray needs is a scale

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        files = self.source.files
        tasks = []
        for group in np.array_split(np.arange(len(files)), min(max(parallelism, 1), len(files))):
            indices = [int(i) for i in group]
            metadata = BlockMetadata(
                num_rows=None,
                size_bytes=sum(files[i].size for i in indices),
                exec_stats=None,
                input_files=[files[i].path for i in indices],
            )
            read = partial(read_files, self.source, indices, self.chunk_rows)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


def read_files(source: Source, indices: list[int], chunk_rows: int) -> Iterator[pa.Table]:
    """The files one read task owns, in order, as tables of at most `chunk_rows` rows."""
    for index in indices:
        one_file = dataclasses.replace(source, files=[source.files[index]])
        position = 0
        for table in one_file.chunks(chunk_rows):
            count = table.num_rows
            yield table.append_column(
                FILE_COLUMN, pa.array(np.full(count, index, dtype=np.int32))
            ).append_column(ROW_COLUMN, pa.array(np.arange(position, position + count)))
            position += count


class PartNames(FilenameProvider):  # type: ignore[misc]
    """`part-<write task>-<block>.<ext>`: write tasks are numbered in the order their
    input arrives, which is input order when the dataset preserves order, so the names
    sort in input order. Ray 2.60 merges a task's blocks into one file (the block index
    is always 0). Two numbers keep these apart from the local executor's
    `part-<chunk>.<ext>`, which a resume reads as "chunk done"."""

    def __init__(self, extension: str) -> None:
        super().__init__(file_format=extension)

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06d}-{0:06d}.{self.file_format}"


class PartsDatasink(BlockBasedFileDatasink):  # type: ignore[misc]
    """Parts encoded by `files.encode`, byte for byte what the local executor writes."""

    def __init__(self, sink: Sink) -> None:
        extension = EXTENSIONS[sink.format]
        super().__init__(
            sink.root,
            filesystem=PyFileSystem(FSSpecHandler(sink.fs)),
            filename_provider=PartNames(extension),
            file_format=extension,
        )
        self.format = sink.format

    def write_block_to_file(self, block: BlockAccessor, file: Any) -> None:
        file.write(encode(block.to_arrow(), self.format))
