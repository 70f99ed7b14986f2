"""`shipyard build`: a Docker build context for a one-model image, and that image's
entrypoint, `shipyard serve-image`, which checks the artifact against its digest before
it serves a single request.

The context holds the model's files exactly as registered, `shipyard-model.json` (name,
version, digest, flavor, signature and the artifact's file list) and a Dockerfile whose
ENTRYPOINT pins the digest. The file list hashes to the digest with the artifact store's
own rule (artifacts/store.py), so a changed byte, a missing or an extra file, or an
edited manifest is caught at start, before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, ValidationError

from shipyard.errors import IntegrityError, InvalidInput

if TYPE_CHECKING:
    from shipyard.artifacts.store import Manifest
    from shipyard.registry.records import ModelVersion
    from shipyard.registry.service import Registry
    from shipyard.signature import Signature

MANIFEST_NAME = "shipyard-model.json"
ARTIFACT_DIR = "model"
"""Where the model's files sit in a context, next to the manifest."""
IMAGE_MODEL_DIR = "/opt/shipyard/model"
"""Where the image holds the context's manifest and model folder."""
RUNTIME_USER = "10001:10001"
"""The unprivileged user of the base image (Dockerfile at the repository root)."""
EXTRAS_BY_FLAVOR = {
    "sklearn": "sklearn",
    "skops": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnx",
    "mlflow": "mlflow",
    "torchscript": "torch",
}
"""The pip extra (pyproject.toml) whose libraries load a flavor; absent: none needed."""
HEALTHCHECK = (
    "import os, sys, urllib.request; url = os.environ.get('SHIPYARD_HEALTHCHECK_URL', "
    "'http://127.0.0.1:8000/v2/health/ready'); "
    "sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"
)


class ArtifactFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    size: int


class ImageManifest(BaseModel):
    """What a build context carries about its model: `shipyard-model.json`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    digest: str
    """The registry's artifact digest: sha256 of the store manifest of `kind` and `files`."""
    flavor: str
    flavor_details: dict[str, Any]
    unsafe_format: bool
    signature: Signature | None
    description: str
    kind: Literal["file", "dir"]
    root_name: str
    """The model file's name, or the folder's (its files are listed relative to it)."""
    files: list[ArtifactFile]
    shipyard_version: str

    def store_manifest(self) -> Manifest:
        from shipyard.artifacts.store import Manifest, ManifestEntry

        entries = tuple(ManifestEntry(f.path, f.sha256, f.size) for f in self.files)
        return Manifest(self.kind, entries)

    @property
    def model_path(self) -> PurePosixPath:
        """The model file or folder, relative to the context."""
        return PurePosixPath(ARTIFACT_DIR, self.root_name)


def _manifest_model() -> type[ImageManifest]:
    """ImageManifest, complete: its Signature (numpy, pyarrow) is imported on first use
    so that `shipyard --help` stays instant."""
    if not ImageManifest.__pydantic_complete__:
        from shipyard.signature import Signature

        ImageManifest.model_rebuild(_types_namespace={"Signature": Signature})
    return ImageManifest


def _bare_digest(digest: str) -> str:
    return digest.removeprefix("sha256:").lower()


def verify_context(folder: Path, digest: str) -> ImageManifest:
    """The manifest of the build context in `folder`, once its files are proved to be
    the artifact `digest`; IntegrityError saying what differs otherwise."""
    from shipyard.artifacts.store import hash_file

    expected = _bare_digest(digest)
    where = folder / MANIFEST_NAME
    try:
        manifest = _manifest_model().model_validate_json(where.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(f"{where} is missing: not a `shipyard build` context") from None
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise IntegrityError(f"{where} is not a valid model manifest: {problem}") from None
    if manifest.digest != expected:
        raise IntegrityError(
            f"{MANIFEST_NAME} names artifact sha256:{manifest.digest}, but this image is "
            f"pinned to sha256:{expected}; refusing to start"
        )
    listed = hashlib.sha256(manifest.store_manifest().to_bytes()).hexdigest()
    if listed != expected:
        raise IntegrityError(
            f"the file list in {MANIFEST_NAME} hashes to sha256:{listed}, not the pinned "
            f"sha256:{expected}: it was edited; refusing to start"
        )
    base = folder / ARTIFACT_DIR
    prefix = "" if manifest.kind == "file" else f"{manifest.root_name}/"
    found = {p.relative_to(base).as_posix(): p for p in base.rglob("*") if not p.is_dir()}
    for file in manifest.files:
        path = found.pop(prefix + file.path, None)
        if path is None:
            raise IntegrityError(f"artifact file {file.path!r} is missing; refusing to start")
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"artifact file {file.path!r} is not a regular file")
        actual = hash_file(path).sha256
        if actual != file.sha256:
            raise IntegrityError(
                f"artifact file {file.path!r} is corrupted or tampered with: it hashes to "
                f"sha256:{actual}, not sha256:{file.sha256}; refusing to start"
            )
    if found:
        raise IntegrityError(
            f"unexpected file {sorted(found)[0]!r} next to the artifact (sha256:{expected} "
            f"lists {len(manifest.files)} files); refusing to start"
        )
    return manifest


def dockerfile(manifest: ImageManifest, base_image: str) -> str:
    """The Dockerfile of a one-model image: the base image plus the verified artifact."""
    extra = EXTRAS_BY_FLAVOR.get(manifest.flavor)
    needs = f'with EXTRAS including "{extra}"' if extra else "(any EXTRAS)"
    entrypoint = [
        "shipyard", "serve-image", IMAGE_MODEL_DIR, "--digest", manifest.digest,
        "--host", "0.0.0.0",
    ]  # fmt: skip
    return f"""\
# {manifest.name}:{manifest.version} ({manifest.flavor}), a one-model image: `shipyard build` wrote
# this. Rebuild rather than edit: the ENTRYPOINT pins the artifact's digest and
# refuses to start on any other bytes.
# BASE_IMAGE: the repository's Dockerfile built {needs}.
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
LABEL ai.shipyard.model.name="{manifest.name}" \\
      ai.shipyard.model.version="{manifest.version}" \\
      ai.shipyard.model.flavor="{manifest.flavor}" \\
      ai.shipyard.model.digest="sha256:{manifest.digest}"
# Owned by root, read-only to the server's user.
COPY {MANIFEST_NAME} {IMAGE_MODEL_DIR}/{MANIFEST_NAME}
COPY {ARTIFACT_DIR}/ {IMAGE_MODEL_DIR}/{ARTIFACT_DIR}/
USER {RUNTIME_USER}
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\
    CMD {json.dumps(["python", "-c", HEALTHCHECK])}
ENTRYPOINT {json.dumps(entrypoint)}
"""


def readme(manifest: ImageManifest) -> str:
    tag = f"{manifest.name.lower()}:{manifest.version}"
    return f"""\
# {manifest.name}:{manifest.version}

Build context of a one-model Shipyard image: flavor {manifest.flavor}, artifact
sha256:{manifest.digest}.

    docker build -t {tag} .
    docker run -p 8000:8000 -p 8001:8001 --read-only --tmpfs /tmp {tag} --insecure

Leave out --insecure once the server has API keys (SHIPYARD_DATABASE_URL, or a /data
volume where `shipyard keys create` ran). At start the image checks every file against
the digest and refuses to serve anything else.
"""


def write_context(registry: Registry, version: ModelVersion, output: Path) -> ImageManifest:
    """Copy `version`'s artifact, verified, into a new build context at `output`."""
    from shipyard import __version__

    digest = version.artifact.digest
    stored = registry.artifacts.manifest(digest)
    source = registry.artifacts.materialize(digest)  # verified against the store
    manifest = _manifest_model()(
        name=version.model,
        version=version.version,
        digest=digest,
        flavor=version.flavor,
        flavor_details=version.flavor_details,
        unsafe_format=version.unsafe_format,
        signature=version.signature,
        description=version.description,
        kind="file" if stored.kind == "file" else "dir",
        root_name=source.name if stored.kind == "file" else version.model,
        files=[ArtifactFile(path=e.path, sha256=e.sha256, size=e.size) for e in stored.files],
        shipyard_version=__version__,
    )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InvalidInput(f"--output {output} exists and is not an empty folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        target = building / manifest.model_path
        for entry in stored.files:
            origin = source if manifest.kind == "file" else source / entry.path
            copy = target if manifest.kind == "file" else target / entry.path
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, copy)
        (building / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        verify_context(building, digest)  # the copy is the registered artifact
        for path in building.rglob("*"):  # world-readable: the image runs as another user
            path.chmod(0o755 if path.is_dir() else 0o644)
        building.chmod(0o755)
        if output.exists():
            output.rmdir()
        os.replace(building, output)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def build(
    ref: str = typer.Argument(
        ..., help="NAME[:VERSION|@ALIAS]; a bare name is what it serves (production, else latest)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="New or empty folder to write."),
    base_image: str | None = typer.Option(
        None,
        help="Default BASE_IMAGE of the generated Dockerfile: the repository's Dockerfile "
        "built with the model's extras (default: shipyard:VERSION, this release).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Write a Docker build context for an image that serves one model version.

    Reads the registry in SHIPYARD_HOME (or SHIPYARD_DATABASE_URL and
    SHIPYARD_ARTIFACT_ROOT). Like `mlflow models build-docker`, without running Docker.
    """
    from shipyard import __version__
    from shipyard.cli.models import local_registry
    from shipyard.registry.refs import parse_ref

    registry = local_registry("build")
    try:
        version = registry.models.serving_version(parse_ref(ref))
        manifest = write_context(registry, version, output)
    finally:
        registry.close()
    base = base_image or f"shipyard:{__version__}"
    (output / "Dockerfile").write_text(dockerfile(manifest, base))
    (output / "README.md").write_text(readme(manifest))
    if as_json:
        from shipyard.cli.output import print_json

        print_json(manifest)
        return
    from shipyard.cli.output import print_fields

    extra = EXTRAS_BY_FLAVOR.get(manifest.flavor)
    print_fields(
        f"{manifest.name}:{manifest.version} → {output}",
        [
            ("flavor", manifest.flavor),
            ("digest", f"sha256:{manifest.digest}"),
            ("files", len(manifest.files)),
            ("base image", f"{base} (built with EXTRAS including {extra})" if extra else base),
            ("next", f"docker build -t {manifest.name.lower()}:{manifest.version} {output}"),
        ],
    )


def serve_image(
    context: Path = typer.Argument(
        ..., help="A build context (in the image: /opt/shipyard/model)."
    ),
    digest: str = typer.Option(..., help="sha256 the artifact must have; pinned by the image."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="REST port."),
    grpc_port: int = typer.Option(8001, help="gRPC port (-1 turns gRPC off)."),
    insecure: bool = typer.Option(
        False, help="Allow listening beyond 127.0.0.1 with no API keys (anyone may do anything)."
    ),
) -> None:
    """Verify a build context's artifact against its digest, then serve it (an image's
    entrypoint).

    The model is served as `shipyard serve` serves a file, from a throwaway registry in
    TMPDIR, under its registered name, flavor and signature; API keys come from the
    registry in SHIPYARD_HOME (or SHIPYARD_DATABASE_URL) when there is one.
    """
    import logging

    from shipyard.cli.server import settings_from
    from shipyard.config import Settings
    from shipyard.logs import configure_logging
    from shipyard.registry.refs import ModelRef
    from shipyard.registry.repository import NewVersion
    from shipyard.registry.service import Registry
    from shipyard.server import serve_app

    manifest = verify_context(context, digest)
    settings = settings_from({})
    configure_logging(json_lines=settings.log_format == "json")
    logging.getLogger("shipyard.image").info(
        "artifact of %s:%s verified: sha256:%s (%d files)",
        manifest.name, manifest.version, manifest.digest, len(manifest.files),
    )  # fmt: skip
    trust_settings = settings if Registry.exists(settings) else None
    scratch = Path(tempfile.mkdtemp(prefix="shipyard-image-"))
    try:
        local = Settings(
            home=scratch,
            database_url=f"sqlite:///{scratch / 'registry.db'}",
            artifact_root=str(scratch / "artifacts"),
        )
        registry = Registry.open(local)
        stored = registry.artifacts.put_model(context / manifest.model_path)
        if stored.digest != manifest.digest:  # the store's own hashing agrees, or no start
            raise IntegrityError(
                f"the artifact hashed to sha256:{stored.digest} while being stored, not "
                f"sha256:{manifest.digest}; refusing to start"
            )
        served = registry.models.create_version(
            manifest.name,
            NewVersion(
                flavor=manifest.flavor,
                artifact_digest=stored.digest,
                artifact_size=stored.size,
                flavor_details=manifest.flavor_details,
                unsafe_format=manifest.unsafe_format,
                signature=manifest.signature,
                description=manifest.description,
                tags={"image.source": f"{manifest.name}:{manifest.version}"},
            ),
        )
        serve_app(
            local,
            host=host,
            port=port,
            grpc_port=grpc_port if grpc_port >= 0 else None,
            insecure=insecure,
            registry=registry,
            default_model=ModelRef(manifest.name, version=served.version),
            trust_settings=trust_settings,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
