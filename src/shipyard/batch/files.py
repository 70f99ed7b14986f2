"""Where batch input comes from and where output goes: fsspec paths, read in fixed chunks.

An input is one file or a folder of parts (read in name order), local or any fsspec
URI. It is read as a stream of fixed-size chunks: chunk k is always rows
[k·N, (k+1)·N) of the input, whatever the file boundaries, so a resumed job knows
which chunks it already wrote. Output is a folder of parts, one per chunk
(`part-000007.parquet`); a part appears whole or not at all, so "part k exists"
is the record that chunk k is done.
"""

from __future__ import annotations

import csv
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from shipyard.errors import Conflict, InvalidInput

FORMATS = ("parquet", "csv", "jsonl")
_SUFFIX_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}
_PART = re.compile(r"^part-(\d{6,})\.(parquet|csv|jsonl)$")
_READ_BLOCK_BYTES = 4 << 20
SUCCESS_MARKER = "_SUCCESS"


def format_of(path: str) -> str | None:
    return _SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int


class _CountingReader(io.RawIOBase):
    """A file that reports how many bytes were read, for progress on CSV and JSON Lines."""

    def __init__(self, raw: Any, on_read: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.on_read(len(data))
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


@dataclass(frozen=True)
class Segment:
    """Rows [start, start + rows) of one input file."""

    path: str
    start: int
    rows: int


@dataclass
class Source:
    """The input of a job: its files, their format, and a fixed-chunk reader."""

    fs: Any
    uri: str
    files: list[InputFile]
    format: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def total_rows(self) -> int | None:
        """Known up front for Parquet (from file footers); None for text formats."""
        if self.format != "parquet":
            return None
        return sum(int(self._parquet(file.path).metadata.num_rows) for file in self.files)

    def plan(self, rows: int) -> Iterator[list[Segment]]:
        """Parquet only: chunks as file segments, planned from footers without reading data.

        Workers read their own segments, so data never passes through the main process
        (no second decode, no pickling through a pipe). A chunk is whole row groups, at
        least `rows` of them: Parquet decodes a row group as a unit, so splitting one
        between chunks would decode it once per chunk.
        """
        pending: list[Segment] = []
        count = 0
        for file in self.files:
            metadata = self._parquet(file.path).metadata
            for group in range(metadata.num_row_groups):
                size = metadata.row_group(group).num_rows
                last = pending[-1] if pending else None
                if last is not None and last.path == file.path:
                    pending[-1] = Segment(file.path, last.start, last.rows + size)
                else:
                    start = sum(metadata.row_group(g).num_rows for g in range(group))
                    pending.append(Segment(file.path, start, size))
                count += size
                if count >= rows:
                    yield pending
                    pending, count = [], 0
        if count:
            yield pending

    def read_segments(self, segments: list[Segment]) -> pa.Table:
        """The row groups each segment covers, read and decoded in the calling process."""
        tables = []
        for segment in segments:
            parquet = self._parquet(segment.path)
            metadata = parquet.metadata
            groups: list[int] = []
            first = offset = 0
            end = segment.start + segment.rows
            for group in range(metadata.num_row_groups):
                size = metadata.row_group(group).num_rows
                if offset < end and offset + size > segment.start:
                    if not groups:
                        first = offset
                    groups.append(group)
                offset += size
            table = parquet.read_row_groups(groups)
            tables.append(table.slice(segment.start - first, segment.rows))
        return _concat(tables)

    def _parquet(self, path: str) -> Any:
        """A local file through Arrow's own reader (memory-mapped), others through fsspec."""
        import pyarrow.parquet as pq

        if _is_local(self.fs):
            return pq.ParquetFile(path, memory_map=True)
        return pq.ParquetFile(self.fs.open(path, "rb"))

    def chunks(
        self, rows: int, on_bytes: Callable[[int], None] = lambda _: None
    ) -> Iterator[pa.Table]:
        """The input as consecutive tables of exactly `rows` rows (the last may be shorter)."""
        pending: list[pa.Table] = []
        count = 0
        for batch in self._batches(on_bytes):
            while batch.num_rows:
                take = min(rows - count, batch.num_rows)
                pending.append(batch.slice(0, take))
                count += take
                batch = batch.slice(take)
                if count == rows:
                    yield _concat(pending)
                    pending, count = [], 0
        if count:
            yield _concat(pending)

    def _batches(self, on_bytes: Callable[[int], None]) -> Iterator[pa.Table]:
        for file in self.files:
            try:
                yield from self._file_batches(file, on_bytes)
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"cannot read {file.path} as {self.format}: {exc}") from None

    def _file_batches(self, file: InputFile, on_bytes: Callable[[int], None]) -> Iterator[pa.Table]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open(file.path, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=64 * 1024):
                    yield pa.Table.from_batches([batch])
            return
        with self.fs.open(file.path, "rb") as raw, _CountingReader(raw, on_bytes) as counted:
            stream = io.BufferedReader(counted, buffer_size=1 << 20)
            if self.format == "csv":
                reader = _open_csv(stream, self.fs, file.path)
            else:
                import pyarrow.json as pj

                reader = pj.open_json(
                    stream, read_options=pj.ReadOptions(block_size=_READ_BLOCK_BYTES)
                )
            for batch in reader:
                yield pa.Table.from_batches([batch])


def _open_csv(stream: Any, fs: Any, path: str) -> Any:
    import pyarrow.csv as pc

    return pc.open_csv(
        stream,
        read_options=pc.ReadOptions(block_size=_READ_BLOCK_BYTES),
        convert_options=csv_convert_options(fs, path),
    )


def csv_convert_options(fs: Any, path: str) -> Any:
    """Every column read as text and cast later, per chunk: a bad value then costs one row,
    not the job, and an id like 007 keeps its zeros. Empty fields are missing values."""
    import pyarrow.csv as pc

    with fs.open(path, "rt", newline="") as head:
        header = next(csv.reader(head), None)
    if not header:
        raise InvalidInput(f"{path} is empty: a CSV input needs a header row")
    return pc.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=True
    )


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def _concat(tables: list[pa.Table]) -> pa.Table:
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def open_source(uri: str, fmt: str | None = None) -> Source:
    """One file or a folder of parts (names starting with _ or . are skipped), in name order."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise InvalidInput(f"no such input: {uri}")
    if fs.isdir(path):
        entries = [
            e
            for e in fs.ls(path, detail=True)
            if e["type"] == "file" and not os.path.basename(e["name"]).startswith(("_", "."))
        ]
        if fmt is None:
            found = {format_of(e["name"]) for e in entries} - {None}
            if len(found) != 1:
                raise InvalidInput(
                    f"cannot tell the format of the files in {uri}: pass --input-format"
                )
            fmt = found.pop()
        files = [
            InputFile(e["name"], int(e.get("size") or 0))
            for e in sorted(entries, key=lambda e: e["name"])
            if format_of(e["name"]) == fmt
        ]
        if not files:
            raise InvalidInput(f"{uri} holds no {fmt} files")
    else:
        fmt = fmt or format_of(path)
        files = [InputFile(path, int(fs.size(path) or 0))]
    if fmt is None:
        raise InvalidInput(f"cannot tell the format of {uri} from its name: pass --input-format")
    return Source(fs=fs, uri=uri, files=files, format=check_format(fmt))


@dataclass
class Sink:
    """The output folder: one part per chunk, errors beside it, written so a part is atomic.

    On a local disk a part is written under `_tmp/` and renamed into place; an object
    store publishes an object only when its upload completes, so parts go straight there.
    """

    fs: Any
    root: str
    format: str

    @classmethod
    def open(cls, uri: str, fmt: str) -> Sink:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(uri)
        return cls(fs=fs, root=root.rstrip("/"), format=check_format(fmt))

    @property
    def local(self) -> bool:
        return _is_local(self.fs)

    def part_path(self, index: int) -> str:
        return f"{self.root}/part-{index:06d}.{EXTENSIONS[self.format]}"

    def errors_path(self, index: int) -> str:
        return f"{self.root}/_errors/part-{index:06d}.jsonl"

    def prepare(self, resuming: bool) -> None:
        """Make the folder; a new job refuses a folder that already holds parts."""
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise InvalidInput(f"the output {self.root} is a file: give a folder for the parts")
        if not resuming and self.has_parts():
            raise Conflict(
                f"the output folder {self.root} already holds parts: choose another, "
                "or resume the job that wrote them"
            )
        self.fs.makedirs(self.root, exist_ok=True)
        if self.local and self.fs.exists(f"{self.root}/_tmp"):
            self.fs.rm(f"{self.root}/_tmp", recursive=True)  # halves of parts a kill left

    def part_files(self) -> list[str]:
        """Every part in the folder, whichever executor wrote it, in name order (Ray's
        parts are named by their first row, the local executor's by chunk)."""
        if not self.fs.exists(self.root):
            return []
        names = self.fs.ls(self.root, detail=False)
        return sorted(name for name in names if os.path.basename(name).startswith("part-"))

    def has_parts(self) -> bool:
        return bool(self.part_files())

    def done_parts(self) -> set[int]:
        """The chunks the local executor finished: part k exists."""
        matches = (_PART.match(os.path.basename(name)) for name in self.part_files())
        return {int(match.group(1)) for match in matches if match}

    def write(self, index: int, output: pa.Table, errors: pa.Table) -> None:
        """Errors first, then the part: once the part exists, the chunk is done."""
        if errors.num_rows:
            self.put(self.errors_path(index), _jsonl_bytes(errors))
        self.put(self.part_path(index), encode(output, self.format))

    def write_success(self, summary: dict[str, Any]) -> None:
        """Mark the output complete (readers can wait for it, as for Spark's)."""
        self.put(f"{self.root}/{SUCCESS_MARKER}", orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if self.local and self.fs.exists(f"{self.root}/_tmp"):
            self.fs.rm(f"{self.root}/_tmp", recursive=True)

    def put(self, path: str, data: bytes) -> None:
        """Write one file of the output so that it appears whole or not at all."""
        if not self.local:
            with self.fs.open(path, "wb") as out:
                out.write(data)
            return
        folder = os.path.dirname(path)
        temporary = f"{self.root}/_tmp/{os.path.basename(path)}.{uuid.uuid4().hex}"
        os.makedirs(os.path.dirname(temporary), exist_ok=True)
        os.makedirs(folder, exist_ok=True)
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)


def encode(table: pa.Table, fmt: str) -> bytes:
    """A table as the bytes of one part file."""
    buffer = pa.BufferOutputStream()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buffer, use_dictionary=_few_distinct(table))
    elif fmt == "csv":
        import pyarrow.csv as pc

        pc.write_csv(table, buffer)
    else:
        return _jsonl_bytes(table)
    return bytes(buffer.getvalue())


def _few_distinct(table: pa.Table, sample: int = 1_000, most: int = 100) -> list[str]:
    """Columns worth dictionary-encoding (class labels). Trying it on unique values (ids,
    row numbers, probabilities) made writing a part 5x slower, for a bigger file."""
    import pyarrow.compute as pc

    head = table.slice(0, sample)
    return [
        name
        for name in table.column_names
        if pc.count_distinct(head.column(name)).as_py() <= min(most, head.num_rows // 10)
    ]


def _jsonl_bytes(table: pa.Table) -> bytes:
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
    return b"".join(orjson.dumps(row, option=option) for row in table.to_pylist())


def read_output(uri: str, fmt: str) -> pa.Table:
    """Every part of an output folder in name order, as one table (tests, small outputs)."""
    sink = Sink.open(uri, fmt)
    names = [name for name in sink.part_files() if name.endswith(f".{EXTENSIONS[fmt]}")]
    tables = []
    for name in names:
        with sink.fs.open(name, "rb") as handle:
            tables.append(decode(handle.read(), fmt))
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def decode(data: bytes, fmt: str) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(data))
    if fmt == "csv":
        import pyarrow.csv as pc

        if not data.strip():
            return pa.table({})
        return pc.read_csv(pa.BufferReader(data))
    rows = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)
