"""Control-plane REST routes for models, versions, aliases and tags."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from shipyard.api.errors import describe_problems
from shipyard.api.state import control_plane
from shipyard.config import UnpackLimits
from shipyard.errors import InvalidInput, PayloadTooLarge, ShipyardError
from shipyard.registry import records
from shipyard.registry.audit import current_actor
from shipyard.registry.refs import ModelRef, check_model_name, parse_version_or_alias
from shipyard.registry.service import Registry
from shipyard.security.gate import OPEN

router = APIRouter(prefix="/api", tags=["registry"])


class TagValue(BaseModel):
    value: str


class AliasTarget(BaseModel):
    version: int


def _registry(request: Request) -> Registry:
    return control_plane(request).registry


def version_ref(name: str, version: str) -> ModelRef:
    parsed = parse_version_or_alias(version)
    if isinstance(parsed, int):
        return ModelRef(check_model_name(name), version=parsed)
    return ModelRef(check_model_name(name), alias=parsed)


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/models")
def list_models(
    request: Request,
    prefix: str | None = None,
    tag: Annotated[str | None, Query(description="`key` or `key=value`")] = None,
    alias: str | None = None,
    include_archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str | None = None,
) -> records.ModelPage:
    return _registry(request).models.list_models(
        prefix=prefix,
        tag=tag,
        alias=alias,
        include_archived=include_archived,
        limit=limit,
        page_token=page_token,
    )


@router.get("/models/{name}")
def get_model(request: Request, name: str) -> records.Model:
    return _registry(request).models.get_model(name)


@router.post("/models/{name}/archive")
def archive_model(request: Request, name: str) -> records.Model:
    return _registry(request).models.archive_model(name)


@router.put("/models/{name}/tags/{key}")
def set_model_tag(request: Request, name: str, key: str, body: TagValue) -> records.Model:
    return _registry(request).models.set_model_tag(name, key, body.value)


@router.delete("/models/{name}/tags/{key}")
def delete_model_tag(request: Request, name: str, key: str) -> records.Model:
    return _registry(request).models.delete_model_tag(name, key)


@router.get("/models/{name}/versions")
def list_versions(
    request: Request,
    name: str,
    include_archived: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str | None = None,
) -> records.VersionPage:
    return _registry(request).models.list_versions(
        name, include_archived=include_archived, limit=limit, page_token=page_token
    )


@router.post("/models/{name}/versions", status_code=201)
def register_version(
    request: Request,
    name: str,
    artifact: Annotated[UploadFile, File(description="The model file, or a .tar of a folder.")],
    options: Annotated[str, Form(description="RegistrationOptions as JSON.")] = "{}",
    folder: Annotated[bool, Form(description="The artifact is a tar of a model folder.")] = False,
    example: Annotated[UploadFile | None, File(description="Example .csv or .parquet.")] = None,
) -> records.ModelVersion:
    try:
        given = json.loads(options)
        if not isinstance(given, dict):
            raise InvalidInput("invalid options: a JSON object is needed")
        parsed = records.RegistrationOptions.model_validate({**given, "name": name})
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"invalid options: not JSON ({exc.msg} at {exc.pos})") from None
    except ValidationError as exc:  # where and what, never the values given
        raise InvalidInput(f"invalid options: {describe_problems(exc.errors())}") from None
    actor = current_actor()
    if actor.role and actor.name != OPEN.name:
        # An authenticated caller is who registered it, whatever the options claim.
        parsed = parsed.model_copy(update={"created_by": actor.name})
    with tempfile.TemporaryDirectory(prefix="shipyard-upload-") as scratch:
        unpack = control_plane(request).unpack
        try:
            model_path = _receive_artifact(artifact, Path(scratch), folder, unpack)
            example_path = receive_file(example, Path(scratch) / "example") if example else None
            registered = _registry(request).register(model_path, parsed, example_path)
        except ShipyardError as exc:
            raise without_scratch(exc, Path(scratch)) from None
    for alias in registered.aliases:
        control_plane(request).jobs.on_alias(registered.model, alias, registered.version)
    return registered


def without_scratch(exc: ShipyardError, scratch: Path) -> ShipyardError:
    """The same error with the server's scratch folders cut out of its words: the caller
    knows their files by name (`model.joblib`), and the server's paths are not theirs."""
    message = exc.message
    for folder in sorted(scratch.rglob("*"), key=lambda p: -len(str(p))):
        if folder.is_dir():
            message = message.replace(f"{folder}/", "")
    exc.message = message.replace(f"{scratch}/", "").replace(str(scratch), "the upload")
    exc.args = (exc.message,)
    return exc


def _safe_name(upload: UploadFile, fallback: str) -> str:
    name = Path(upload.filename or fallback).name
    return name if name not in ("", ".", "..") else fallback


def receive_file(upload: UploadFile, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _safe_name(upload, "upload")
    with target.open("wb") as out:
        shutil.copyfileobj(upload.file, out, length=1 << 20)
    return target


def _receive_artifact(
    upload: UploadFile, scratch: Path, folder: bool, limits: UnpackLimits
) -> Path:
    received = receive_file(upload, scratch / "upload")
    if not folder:
        return received
    # Named as the user's folder (the client sends "NAME.tar"), so errors about it say
    # "badfolder is not a model…", not the server's scratch name.
    name = received.name.removesuffix(".tar") or "model"
    unpacked = scratch / "model" / (name if name not in ("upload", "example") else "model")
    try:
        with tarfile.open(received) as archive:
            archive.extractall(unpacked, filter=_UnpackBudget(limits))
    except tarfile.FilterError as exc:  # its text names the server's scratch folder
        member, why = exc.tarinfo.name[:200], type(exc).__name__
        raise InvalidInput(f"artifact member {member!r} is refused ({why})") from None
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInput(
            f"artifact is not a readable tar archive ({type(exc).__name__})"
        ) from None
    return unpacked


class _UnpackBudget:
    """A tar extraction filter: tarfile's "data" filter (no absolute paths, no links out
    of the tree, no devices) within a budget of entries and bytes. Called with each
    member's header before the member is written, so an archive that unpacks to more
    (a gzip bomb: kilobytes holding gigabytes of zeros) is refused without writing it."""

    def __init__(self, limits: UnpackLimits) -> None:
        self.limits = limits
        self.entries = 0
        self.size = 0

    def __call__(self, member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise PayloadTooLarge(
                f"the archive holds more than {self.limits.max_files} entries "
                "(SHIPYARD_MAX_ARCHIVE_FILES)"
            )
        self.size += member.size
        if self.size > self.limits.max_bytes:
            raise PayloadTooLarge(
                f"the archive unpacks to more than {self.limits.max_bytes} bytes "
                "(SHIPYARD_MAX_UNPACKED_BYTES)"
            )
        return tarfile.data_filter(member, path)


@router.get("/models/{name}/versions/{version}")
def get_version(request: Request, name: str, version: str) -> records.ModelVersion:
    """A version by number, or by alias (`latest` is the newest live version)."""
    return _registry(request).models.get_version(version_ref(name, version))


@router.post("/models/{name}/versions/{version}/archive")
def archive_version(request: Request, name: str, version: str) -> records.ModelVersion:
    return _registry(request).models.archive_version(version_ref(name, version))


@router.put("/models/{name}/versions/{version}/tags/{key}")
def set_version_tag(
    request: Request, name: str, version: str, key: str, body: TagValue
) -> records.ModelVersion:
    return _registry(request).models.set_version_tag(version_ref(name, version), key, body.value)


@router.delete("/models/{name}/versions/{version}/tags/{key}")
def delete_version_tag(request: Request, name: str, version: str, key: str) -> records.ModelVersion:
    return _registry(request).models.delete_version_tag(version_ref(name, version), key)


@router.put("/models/{name}/aliases/{alias}")
def set_alias(request: Request, name: str, alias: str, body: AliasTarget) -> records.Alias:
    return control_plane(request).jobs.set_alias(name, alias, body.version)


@router.delete("/models/{name}/aliases/{alias}", status_code=204)
def delete_alias(request: Request, name: str, alias: str) -> Response:
    _registry(request).models.delete_alias(name, alias)
    return Response(status_code=204)
