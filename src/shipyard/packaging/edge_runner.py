"""Score an edge bundle offline with onnxruntime and numpy only.

This file is copied unchanged into every bundle as `run.py`, so a device needs no
Shipyard to use one: `python run.py --input rows.csv` prints the model's answers as
JSON, `python run.py --port 8080` answers `POST /predict`. It imports the standard
library, numpy and (when scoring) onnxruntime, nothing else; `shipyard edge run`
imports the same code. Before scoring it checks every file of the bundle against the
sha256 its manifest records (a tampered bundle is refused); the manifest's own
signature is checked where `cryptography` is at hand (`shipyard edge sync|run`).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MODEL_FILE = "model.onnx"
RUNNER_FILE = "run.py"
SIGNATURE_JSON = "signature.json"
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body the HTTP endpoint reads (413 beyond)."""
_CHUNK = 1 << 20
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class BundleError(Exception):
    """The bundle or the input is not usable; the message says what and where."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digest(folder: Path) -> str:
    """A bundle is named by the sha256 of its manifest.json's exact bytes."""
    return file_sha256(folder / MANIFEST_FILE)


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{folder} holds no {MANIFEST_FILE}: not a bundle") from None
    except ValueError as exc:
        raise BundleError(f"{folder / MANIFEST_FILE} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{folder / MANIFEST_FILE} has no `files` table")
    return manifest


def verify_files(folder: Path) -> dict[str, Any]:
    """The manifest, once every file it lists has its recorded size and sha256 and the
    folder holds nothing else; else BundleError naming the file."""
    manifest = read_manifest(folder)
    listed: dict[str, Any] = manifest["files"]
    expected = {*listed, MANIFEST_FILE, SIGNATURE_FILE}
    present = {p.name for p in folder.iterdir() if p.name != "__pycache__"}
    extra = sorted(present - expected)
    if extra:
        raise BundleError(f"bundle {folder} holds files its manifest does not list: {extra}")
    for name, recorded in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"bundle {folder} is missing {name}")
        if path.stat().st_size != recorded["size"] or file_sha256(path) != recorded["sha256"]:
            raise BundleError(
                f"bundle file {name} in {folder} does not match its manifest's sha256: "
                "tampered with or damaged; refusing to run it"
            )
    return manifest


# ---- input -----------------------------------------------------------------------


class Rows:
    """A batch of numeric rows, and the column names when the input had them."""

    def __init__(self, values: np.ndarray, columns: list[str] | None = None) -> None:
        if values.ndim == 1:
            values = values.reshape(1, -1) if columns else values.reshape(-1, 1)
        self.values = values
        self.columns = columns


def _numbers(cells: list[str]) -> list[float] | None:
    try:
        return [float(cell) for cell in cells]
    except ValueError:
        return None


def rows_from_csv(text: str, where: str) -> Rows:
    lines = [row for row in csv.reader(io.StringIO(text)) if row]
    if not lines:
        raise BundleError(f"{where} holds no rows")
    columns = None if _numbers(lines[0]) is not None else [c.strip() for c in lines[0]]
    body = lines[1:] if columns else lines
    width = len(lines[0])
    values = []
    for number, row in enumerate(body, start=2 if columns else 1):
        parsed = _numbers(row)
        if parsed is None or len(parsed) != width:
            raise BundleError(f"{where} line {number}: expected {width} numbers, got {row[:8]}")
        values.append(parsed)
    if not values:
        raise BundleError(f"{where} holds a header but no rows")
    return Rows(np.asarray(values, dtype=np.float64), columns)


def rows_from_json(document: Any, where: str) -> Rows:
    """`{"inputs": [[...], ...]}`, `{"instances": ...}`, a list of rows, or a list of
    records (objects keyed by column)."""
    if isinstance(document, dict):
        document = document.get("inputs", document.get("instances"))
    if not isinstance(document, list) or not document:
        raise BundleError(f"{where}: expected a non-empty list of rows (or {{'inputs': rows}})")
    if all(isinstance(row, dict) for row in document):
        columns = list(document[0])
        try:
            values = [[float(row[c]) for c in columns] for row in document]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: every record needs numbers for {columns}") from exc
        return Rows(np.asarray(values, dtype=np.float64), columns)
    try:
        return Rows(np.asarray(document, dtype=np.float64))
    except (TypeError, ValueError):
        raise BundleError(f"{where}: rows must be lists of numbers of one length") from None


def read_rows(path: Path) -> Rows:
    """Rows from a .csv (with or without a header), a .npy array or a .json document."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return Rows(np.load(path, allow_pickle=False))
        text = path.read_text()
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    if suffix == ".json":
        try:
            return rows_from_json(json.loads(text), str(path))
        except ValueError as exc:
            raise BundleError(f"{path} is not JSON: {exc}") from None
    return rows_from_csv(text, str(path))


# ---- scoring ---------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):  # e.g. a classifier's ZipMap: one {label: probability} per row
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


class BundleModel:
    """The bundle's ONNX graph in an onnxruntime session on the CPU."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        import onnxruntime

        self.manifest = manifest
        self.digest = bundle_digest(folder)
        self.session = onnxruntime.InferenceSession(
            str(folder / MODEL_FILE), providers=["CPUExecutionProvider"]
        )
        self.inputs = self.session.get_inputs()
        self.output_names = [output.name for output in self.session.get_outputs()]

    def _feed(self, rows: Rows) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1:
            spec = self.inputs[0]
            return {spec.name: rows.values.astype(_ORT_DTYPES.get(spec.type, np.float32))}
        names = [spec.name for spec in self.inputs]
        if rows.columns is None or not set(names) <= set(rows.columns):
            raise BundleError(f"the model takes inputs {names}: give columns with those names")
        feed: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            column = rows.values[:, rows.columns.index(spec.name)]
            shaped = column.reshape(-1, 1) if len(spec.shape) == 2 else column
            feed[spec.name] = shaped.astype(_ORT_DTYPES.get(spec.type, np.float32))
        return feed

    def predict(self, rows: Rows) -> dict[str, Any]:
        try:
            answers = self.session.run(self.output_names, self._feed(rows))
        except Exception as exc:  # onnxruntime raises its own classes for bad shapes
            raise BundleError(f"the model refused the input: {exc}") from None
        return {
            "model": self.manifest.get("model"),
            "version": self.manifest.get("version"),
            "digest": self.digest,
            "outputs": {n: _jsonable(a) for n, a in zip(self.output_names, answers, strict=True)},
        }


# ---- serving ---------------------------------------------------------------------


def make_server(model: BundleModel, host: str, port: int) -> ThreadingHTTPServer:
    """`POST /predict` (a JSON document as for --input .json), `GET /health`."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: Any) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/health":
                self._answer(404, {"error": f"no route {self.path}: use POST /predict"})
                return
            manifest = model.manifest
            self._answer(
                200,
                {"status": "ok", "model": manifest.get("model"),
                 "version": manifest.get("version"), "digest": model.digest},
            )  # fmt: skip

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/predict", "/invocations"):
                self._answer(404, {"error": f"no route {self.path}: use POST /predict"})
                return
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(413 if length > 0 else 400, {"error": "a JSON body is needed "
                             f"(at most {MAX_BODY_BYTES} bytes)"})  # fmt: skip
                return
            try:
                rows = rows_from_json(json.loads(self.rfile.read(length)), "body")
                self._answer(200, model.predict(rows))
            except ValueError as exc:
                self._answer(400, {"error": f"body is not JSON: {exc}"})
            except BundleError as exc:
                self._answer(400, {"error": str(exc)})

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def serve(model: BundleModel, host: str, port: int) -> None:
    server = make_server(model, host, port)
    bound_host, bound_port = server.server_address[:2]
    manifest = model.manifest
    print(
        f"serving {manifest.get('model')}:{manifest.get('version')} "
        f"on http://{bound_host!s}:{bound_port}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score this bundle's model offline.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="The bundle folder (default: the folder of this file).")  # fmt: skip
    parser.add_argument("--input", type=Path, help="Rows to score: .csv, .npy or .json.")
    parser.add_argument("--port", type=int, help="Serve POST /predict on this port instead.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on.")
    options = parser.parse_args(argv)
    if (options.input is None) == (options.port is None):
        parser.error("give --input FILE or --port PORT")
    try:
        model = BundleModel(options.bundle, verify_files(options.bundle))
        if options.port is not None:
            serve(model, options.host, options.port)
            return 0
        print(json.dumps(model.predict(read_rows(options.input))))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
