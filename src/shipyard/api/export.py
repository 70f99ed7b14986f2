"""Control-plane REST route that exports a version to ONNX (packaging/service.py).

Synchronous: converting and scoring a model on its gate rows takes seconds, and the
caller wants the derived version or the failing rows in the answer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import ValidationError

from shipyard.api.errors import describe_problems
from shipyard.api.models import receive_file, version_ref
from shipyard.api.state import control_plane
from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.packaging.service import ExportOptions, ExportResult, export_version
from shipyard.registry.audit import current_actor

router = APIRouter(prefix="/api", tags=["packaging"])


@router.post("/models/{name}/versions/{version}/export", status_code=201)
def export(
    request: Request,
    name: str,
    version: str,
    options: Annotated[str, Form(description="ExportOptions as JSON.")] = "{}",
    data: Annotated[
        UploadFile | None,
        File(description="Gate rows (.csv or .parquet); default: the version's reference sample."),
    ] = None,
) -> ExportResult:
    try:
        parsed = ExportOptions.model_validate(json.loads(options))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"invalid options: not JSON ({exc.msg} at {exc.pos})") from None
    except ValidationError as exc:
        raise InvalidInput(f"invalid options: {describe_problems(exc.errors())}") from None
    registry = control_plane(request).registry
    with tempfile.TemporaryDirectory(prefix="shipyard-export-upload-") as scratch:
        rows = receive_file(data, Path(scratch)) if data is not None else None
        return export_version(
            registry, version_ref(name, version), parsed, Settings().isolation_limits,
            data=rows, created_by=current_actor().name,
        )  # fmt: skip
