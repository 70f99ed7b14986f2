"""Python SDK: `shipyard.Client(url)` over the control-plane REST API.

`LocalClient` offers the same methods directly on a local home (no server),
which is what the CLI uses when SHIPYARD_URL is not set.
"""

from __future__ import annotations

import ssl
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from shipyard.errors import (
    Conflict,
    EnvironmentUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
    ShipyardError,
)
from shipyard.registry import records
from shipyard.registry.lineage import detect_code_commit, source_uri
from shipyard.registry.refs import ModelRef, parse_ref
from shipyard.signature import datatype_from_numpy

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.monitoring.service import MonitoringService
    from shipyard.packaging.service import ExportOptions, ExportResult
    from shipyard.promotion.service import PromotionService
    from shipyard.registry.service import Registry

RecordT = TypeVar("RecordT", bound=BaseModel)

_ERRORS_BY_STATUS: dict[int, type[ShipyardError]] = {
    400: InvalidInput,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidInput,
    424: EnvironmentUnavailable,
}


SERVER_NEEDED = (
    "scaling changes a running server: set SHIPYARD_URL to its address "
    "(and SHIPYARD_API_KEY to a deployer's key)"
)
"""Why a local client (no SHIPYARD_URL) cannot scale."""


class ServerError(ShipyardError):
    """The server answered with an error this client has no closer class for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


def _version_segment(ref: ModelRef) -> str:
    if ref.version is not None:
        return str(ref.version)
    return ref.alias or "latest"


class Client:
    """Talks to a Shipyard server's control plane.

    What is not given comes from the environment, as for the CLI: the URL from
    SHIPYARD_URL, the key from SHIPYARD_API_KEY, the trusted CAs from SHIPYARD_CA_BUNDLE.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ):
        from shipyard.config import Settings

        settings = Settings()
        url = url or settings.url
        if not url:
            raise InvalidInput("no server URL: pass Client(url) or set SHIPYARD_URL")
        if api_key is None and settings.api_key is not None:
            api_key = settings.api_key.get_secret_value()
        sent = dict(headers or {})
        if api_key and not any(k.lower() == "authorization" for k in sent):
            sent["authorization"] = f"Bearer {api_key}"
        ca_bundle = ca_bundle or settings.ca_bundle
        verify: ssl.SSLContext | bool = True
        if ca_bundle:
            if not Path(ca_bundle).is_file():
                raise InvalidInput(f"CA bundle {ca_bundle} (SHIPYARD_CA_BUNDLE) does not exist")
            verify = ssl.create_default_context(cafile=str(ca_bundle))
        self._http = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, headers=sent, verify=verify
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ShipyardError(f"cannot reach Shipyard at {self._http.base_url}: {exc}") from exc
        if response.is_error:
            self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        try:
            message = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            message = response.text or response.reason_phrase
        if response.status_code == 401:
            message += " (set SHIPYARD_API_KEY to a key from `shipyard keys create`)"
        error_class = _ERRORS_BY_STATUS.get(response.status_code)
        if error_class is not None:
            raise error_class(message)
        raise ServerError(response.status_code, message)

    def _get(self, path: str, record: type[RecordT], **params: Any) -> RecordT:
        clean = {k: v for k, v in params.items() if v is not None}
        return record.model_validate(self._call("GET", path, params=clean).json())

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/health").json()
        return result

    def list_keys(self) -> list[records.ApiKey]:
        return [records.ApiKey.model_validate(k) for k in self._call("GET", "/api/keys").json()]

    def create_key(
        self,
        role: str,
        *,
        name: str = "",
        models: list[str] | None = None,
        expires: str | None = None,
        rate_per_second: float | None = None,
    ) -> tuple[str, records.ApiKey]:
        """A new key: its token (shown once) and its record."""
        body = {
            "role": role,
            "name": name,
            "models": models,
            "expires": expires,
            "rate_per_second": rate_per_second,
        }
        created = self._call("POST", "/api/keys", json=body).json()
        return str(created["key"]), records.ApiKey.model_validate(created["record"])

    def revoke_key(self, key_id: str) -> str | None:
        """Revoke a key; the server's warning when no admin key is left, else None."""
        revoked = self._call("POST", f"/api/keys/{key_id}/revoke").json()
        warning = revoked.get("warning")
        return str(warning) if warning else None

    def audit_events(
        self, *, since: datetime | None = None, limit: int = 100
    ) -> list[records.AuditEvent]:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since.isoformat()
        events = self._call("GET", "/api/audit", params=params).json()
        return [records.AuditEvent.model_validate(e) for e in events]

    def list_models(
        self,
        *,
        prefix: str | None = None,
        tag: str | None = None,
        alias: str | None = None,
        include_archived: bool = False,
        limit: int = 100,
        page_token: str | None = None,
    ) -> records.ModelPage:
        return self._get(
            "/api/models",
            records.ModelPage,
            prefix=prefix,
            tag=tag,
            alias=alias,
            include_archived=include_archived,
            limit=limit,
            page_token=page_token,
        )

    def get_model(self, name: str) -> records.Model:
        return self._get(f"/api/models/{name}", records.Model)

    def list_versions(
        self,
        name: str,
        *,
        include_archived: bool = False,
        limit: int = 100,
        page_token: str | None = None,
    ) -> records.VersionPage:
        return self._get(
            f"/api/models/{name}/versions",
            records.VersionPage,
            include_archived=include_archived,
            limit=limit,
            page_token=page_token,
        )

    def get_version(self, ref: str | ModelRef) -> records.ModelVersion:
        """`NAME` (latest), `NAME:VERSION` or `NAME@ALIAS`."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        return self._get(
            f"/api/models/{ref.name}/versions/{_version_segment(ref)}", records.ModelVersion
        )

    def environment(self, ref: str | ModelRef) -> dict[str, Any]:
        """A version's recorded environment and where it stands on the server's host."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        path = f"/api/models/{ref.name}/versions/{_version_segment(ref)}/environment"
        result: dict[str, Any] = self._call("GET", path).json()
        return result

    def build_environment(self, ref: str | ModelRef, timeout: float = 1800) -> dict[str, Any]:
        """Build a version's environment on the server's host now (424 if the build fails)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        path = f"/api/models/{ref.name}/versions/{_version_segment(ref)}/environment"
        result: dict[str, Any] = self._call("POST", path, timeout=timeout).json()
        return result

    def register(
        self,
        path: str | Path,
        options: records.RegistrationOptions,
        example: str | Path | None = None,
    ) -> records.ModelVersion:
        """Upload a model file or folder (sent as a tar) and register it."""
        path = Path(path)
        if not path.exists():
            raise InvalidInput(f"no such file or folder: {path}")
        options = options.model_copy(deep=True)
        if not options.lineage.source_uri:
            options.lineage.source_uri = source_uri(path)
        if options.lineage.code_commit is None:
            options.lineage.code_commit = detect_code_commit(path)
        with tempfile.TemporaryDirectory(prefix="shipyard-client-") as scratch:
            upload = path
            if path.is_dir():
                upload = Path(scratch) / f"{path.name or 'model'}.tar"
                with tarfile.open(upload, "w") as archive:
                    archive.add(path, arcname=".")
            with ExitStack() as files_open:
                files: dict[str, Any] = {
                    "artifact": (upload.name, files_open.enter_context(upload.open("rb")))
                }
                if example is not None:
                    example_path = Path(example)
                    example_file = files_open.enter_context(example_path.open("rb"))
                    files["example"] = (example_path.name, example_file)
                response = self._call(
                    "POST",
                    f"/api/models/{options.name}/versions",
                    files=files,
                    data={
                        "options": options.model_dump_json(),
                        "folder": str(path.is_dir()).lower(),
                    },
                    timeout=None,
                )
        return records.ModelVersion.model_validate(response.json())

    def set_alias(self, name: str, alias: str, version: int) -> records.Alias:
        response = self._call(
            "PUT", f"/api/models/{name}/aliases/{alias}", json={"version": version}
        )
        return records.Alias.model_validate(response.json())

    def delete_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", f"/api/models/{name}/aliases/{alias}")

    def archive_version(self, ref: str | ModelRef) -> records.ModelVersion:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        response = self._call(
            "POST", f"/api/models/{ref.name}/versions/{_version_segment(ref)}/archive"
        )
        return records.ModelVersion.model_validate(response.json())

    def archive_model(self, name: str) -> records.Model:
        return records.Model.model_validate(
            self._call("POST", f"/api/models/{name}/archive").json()
        )

    def scale_model(
        self,
        name: str,
        version: int | str | None = None,
        *,
        min_workers: int | None = None,
        max_workers: int | None = None,
        target_ongoing_requests: float | None = None,
        target_p95_ms: float | None = None,
        upscale_delay: float | None = None,
        downscale_delay: float | None = None,
        scale_to_zero_after: float | None = None,
    ) -> dict[str, Any]:
        """Set a version's scaling bounds on the server (a number or alias; None: the
        version the name serves; fields left None keep what they were); the version
        serving document comes back: state, bounds, workers desired/ready/starting/
        draining, recent decisions."""
        options = {
            "min_workers": min_workers,
            "max_workers": max_workers,
            "target_ongoing_requests": target_ongoing_requests,
            "target_p95_ms": target_p95_ms,
            "upscale_delay": upscale_delay,
            "downscale_delay": downscale_delay,
            "scale_to_zero_after": scale_to_zero_after,
        }
        body = {key: value for key, value in options.items() if value is not None}
        within = "" if version is None else f"/versions/{version}"
        path = f"/api/models/{name}{within}/scaling"
        # With min_workers >= 1 the answer waits for the version to load.
        result: dict[str, Any] = self._call("POST", path, json=body, timeout=None).json()
        return result

    # ---- edge bundles -----------------------------------------------------

    def bundle_info(self, name: str, segment: str) -> dict[str, Any]:
        """What a device polls for NAME and an alias (or version number): digest,
        signature, key id and manifest of the signed bundle (packaging/bundle.py)."""
        result: dict[str, Any] = self._call("GET", f"/api/models/{name}/bundles/{segment}").json()
        return result

    def download_bundle(self, name: str, segment: str, sink: BinaryIO) -> int:
        """Stream the bundle's zip into `sink`; the bytes written come back. A transfer
        that breaks off raises ShipyardError (what was written is incomplete)."""
        path = f"/api/models/{name}/bundles/{segment}/download"
        written = 0
        try:
            with self._http.stream("GET", path, timeout=None) as response:
                if response.is_error:
                    response.read()
                    self._raise_for(response)
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise ShipyardError(f"download of {path} broke off after {written} bytes: {exc}"
                                ) from exc  # fmt: skip
        return written

    # ---- data plane -------------------------------------------------------

    # ---- deployments ----------------------------------------------------

    def apply(self, manifest_text: str, dry_run: bool = False) -> records.ApplyResult:
        answer = self._call(
            "POST", "/api/deployments", content=manifest_text.encode(),
            params={"dry_run": dry_run}, headers={"content-type": "application/yaml"},
        )  # fmt: skip
        return records.ApplyResult.model_validate(answer.json())

    def list_deployments(self) -> list[records.DeploymentRevision]:
        answer = self._call("GET", "/api/deployments").json()
        return [records.DeploymentRevision.model_validate(d) for d in answer]

    def get_deployment(self, name: str) -> records.DeploymentRevision:
        return self._get(f"/api/deployments/{name}", records.DeploymentRevision)

    def cluster(self) -> dict[str, Any]:
        """The replicas sharing the server's registry (`GET /api/cluster`)."""
        result: dict[str, Any] = self._call("GET", "/api/cluster").json()
        return result

    def deployment_status(self, name: str) -> dict[str, Any]:
        """The live revision's fields plus `serving`: a version serving document for each
        version of its model the server has loaded."""
        result: dict[str, Any] = self._call("GET", f"/api/deployments/{name}").json()
        return result

    def deployment_history(self, name: str) -> list[records.DeploymentRevision]:
        answer = self._call("GET", f"/api/deployments/{name}/history").json()
        return [records.DeploymentRevision.model_validate(d) for d in answer]

    def rollback_deployment(self, name: str, to: int) -> records.DeploymentRevision:
        answer = self._call("POST", f"/api/deployments/{name}/rollback", json={"revision": to})
        return records.DeploymentRevision.model_validate(answer.json())

    def start_rollout(self, name: str, **options: Any) -> records.Rollout:
        answer = self._call("POST", f"/api/deployments/{name}/rollout", json=options)
        return records.Rollout.model_validate(answer.json())

    def rollout_status(self, name: str) -> records.Rollout:
        return self._get(f"/api/deployments/{name}/rollout", records.Rollout)

    def rollout_action(self, name: str, action: str) -> records.Rollout:
        answer = self._call("POST", f"/api/deployments/{name}/rollout/{action}")
        return records.Rollout.model_validate(answer.json())

    # ---- evaluation and promotion ------------------------------------------

    def _wait(self, path: str, record: type[RecordT], busy: str, wait: bool) -> RecordT:
        """Poll a background job's record until its state leaves `busy`."""
        import time

        found = self._get(path, record)
        while wait and found.state == busy:  # type: ignore[attr-defined]
            time.sleep(0.5)  # a remote job's cadence: there is nothing to wait on but polls
            found = self._get(path, record)
        return found

    def evaluate(
        self, ref: str | ModelRef, data: str | Path, label: str, against: str | None = None,
        slice_by: str | None = None, max_rows: int | None = None, wait: bool = True,
    ) -> records.Evaluation:  # fmt: skip
        """Upload a holdout and evaluate a version on the server (against an alias or a
        version; default production)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        fields = {"label": label, "against": against, "slice_by": slice_by,
                  "max_rows": None if max_rows is None else str(max_rows)}  # fmt: skip
        path = Path(data)
        with path.open("rb") as upload:
            answer = self._call(
                "POST", f"/api/models/{ref.name}/versions/{_version_segment(ref)}/evaluations",
                files={"data": (path.name, upload)},
                data={k: v for k, v in fields.items() if v is not None}, timeout=None,
            )  # fmt: skip
        started = records.Evaluation.model_validate(answer.json())
        return self._wait(f"/api/evaluations/{started.id}", records.Evaluation, "running", wait)

    def export(
        self, ref: str | ModelRef, options: ExportOptions, data: str | Path | None = None
    ) -> ExportResult:
        """Export a version to ONNX on the server, gated on `data` (uploaded) or the
        version's reference sample; registers the derived version."""
        from shipyard.packaging.service import ExportResult

        ref = parse_ref(ref) if isinstance(ref, str) else ref
        path = f"/api/models/{ref.name}/versions/{_version_segment(ref)}/export"
        with ExitStack() as opened:
            files = None
            if data is not None:
                files = {"data": (Path(data).name, opened.enter_context(Path(data).open("rb")))}
            answer = self._call(
                "POST", path, files=files, data={"options": options.model_dump_json()},
                timeout=None,
            )  # fmt: skip
        return ExportResult.model_validate(answer.json())

    def replay(
        self, deployment: str, to: str, window: str | None = "24h", limit: int | None = None,
        wait: bool = True,
    ) -> records.Evaluation:  # fmt: skip
        body = {"to": to, "window": window, "limit": limit}
        answer = self._call("POST", f"/api/deployments/{deployment}/replay", json=body)
        started = records.Evaluation.model_validate(answer.json())
        return self._wait(f"/api/evaluations/{started.id}", records.Evaluation, "running", wait)

    def evaluation(self, evaluation_id: int) -> records.Evaluation:
        return self._get(f"/api/evaluations/{evaluation_id}", records.Evaluation)

    def evaluations(self, ref: str | ModelRef) -> list[records.Evaluation]:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        path = f"/api/models/{ref.name}/versions/{_version_segment(ref)}/evaluations"
        return [records.Evaluation.model_validate(e) for e in self._call("GET", path).json()]

    def evaluation_report(self, evaluation_id: int) -> str:
        return self._call("GET", f"/api/evaluations/{evaluation_id}/report").text

    def apply_policy(self, text: str) -> records.PolicyRevision:
        answer = self._call("POST", "/api/policies", data={"policy": text})
        return records.PolicyRevision.model_validate(answer.json())

    def policies(self) -> list[records.PolicyRevision]:
        return [records.PolicyRevision.model_validate(p)
                for p in self._call("GET", "/api/policies").json()]  # fmt: skip

    def promote(
        self, ref: str, policy_text: str, data: str | Path | None = None,
        label: str | None = None, slice_by: str | None = None, wait: bool = True,
    ) -> records.Promotion:  # fmt: skip
        fields = {"candidate": ref, "policy": policy_text, "label": label, "slice_by": slice_by}
        with ExitStack() as opened:
            files = None
            if data is not None:
                path = Path(data)
                files = {"data": (path.name, opened.enter_context(path.open("rb")))}
            given = {k: v for k, v in fields.items() if v is not None}
            answer = self._call("POST", "/api/promotions", files=files, data=given, timeout=None)
        started = records.Promotion.model_validate(answer.json())
        return self._wait(f"/api/promotions/{started.id}", records.Promotion, "evaluating", wait)

    def promotion(self, promotion_id: int) -> records.Promotion:
        return self._get(f"/api/promotions/{promotion_id}", records.Promotion)

    def promotions(self, model: str | None = None) -> list[records.Promotion]:
        params = {"model": model} if model else {}
        answer = self._call("GET", "/api/promotions", params=params)
        return [records.Promotion.model_validate(p) for p in answer.json()]

    def decide(self, promotion_id: int, approve: bool, reason: str = "") -> records.Promotion:
        verb = "approve" if approve else "reject"
        answer = self._call("POST", f"/api/promotions/{promotion_id}/{verb}",
                            json={"reason": reason})  # fmt: skip
        return records.Promotion.model_validate(answer.json())

    # ---- monitoring --------------------------------------------------------

    def send_feedback(self, items: list[dict[str, Any]]) -> dict[str, int]:
        """Ground-truth labels: [{"request_id": ..., "label": ...}, ...]."""
        result: dict[str, int] = self._call("POST", "/api/feedback", json={"items": items}).json()
        return result

    def quality(
        self, deployment: str, window: str = "1h", bucket: str | None = None
    ) -> dict[str, Any]:
        params = {"window": window, **({"bucket": bucket} if bucket else {})}
        result: dict[str, Any] = self._call(
            "GET", f"/api/deployments/{deployment}/quality", params=params
        ).json()
        return result

    def check_drift(
        self, deployment: str, window: str | None = None, version: int | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"window": window, "version": version}.items() if v}
        result: list[dict[str, Any]] = self._call(
            "POST", f"/api/deployments/{deployment}/drift", params=params, timeout=300
        ).json()
        return result

    def drift_history(self, deployment: str, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(
            "GET", f"/api/deployments/{deployment}/drift", params={"limit": limit}
        ).json()
        return result

    def drift_report_html(self, report_id: int) -> str:
        return self._call("GET", f"/api/drift/{report_id}/report").text

    def predictions(self, **filters: Any) -> list[dict[str, Any]]:
        clean = {k: v for k, v in filters.items() if v is not None}
        result: list[dict[str, Any]] = self._call("GET", "/api/predictions", params=clean).json()
        return result

    def export_predictions(self, destination: str | Path, **filters: Any) -> int:
        """Download the matching records as Parquet; returns the rows written."""
        import pyarrow.parquet as pq

        clean = {k: v for k, v in filters.items() if v is not None}
        with (
            self._http.stream("GET", "/api/predictions/export", params=clean) as response,
            Path(destination).open("wb") as sink,
        ):
            if response.is_error:
                response.read()
                self._raise_for(response)
            for chunk in response.iter_bytes():
                sink.write(chunk)
        return int(pq.ParquetFile(destination).metadata.num_rows)

    def cost(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/monitoring/cost").json()
        return result

    @staticmethod
    def _v2_path(ref: ModelRef) -> str:
        if ref.is_model:
            return f"/v2/models/{ref.name}"
        return f"/v2/models/{ref.name}/versions/{_version_segment(ref)}"

    def model_metadata(self, ref: str | ModelRef) -> dict[str, Any]:
        """V2 model metadata: name, versions, platform, inputs, outputs."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        result: dict[str, Any] = self._call("GET", self._v2_path(ref)).json()
        return result

    def infer(
        self, ref: str | ModelRef, inputs: dict[str, np.ndarray]
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Predict over V2 REST: returns the version that answered and its named outputs."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        body = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype_from_numpy(array.dtype),
                    "data": array.reshape(-1).tolist(),
                }
                for name, array in inputs.items()
            ]
        }
        document = self._call("POST", f"{self._v2_path(ref)}/infer", json=body, timeout=None).json()
        outputs = {
            output["name"]: np.array(output["data"]).reshape(output["shape"])
            for output in document["outputs"]
        }
        return str(document["model_version"]), outputs


class LocalClient:
    """The same methods as `Client`, working on a local registry in-process."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @classmethod
    def open(cls, settings: Settings) -> LocalClient:
        from shipyard.registry.audit import Actor, set_default_actor
        from shipyard.registry.service import Registry, default_user

        # The local user owns the database file: everything a role could allow, it may do.
        set_default_actor(Actor(default_user(settings), "admin", source="cli"))
        return cls(Registry.open(settings))

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.registry.close()

    def list_models(self, **filters: Any) -> records.ModelPage:
        return self.registry.models.list_models(**filters)

    def get_model(self, name: str) -> records.Model:
        return self.registry.models.get_model(name)

    def list_versions(self, name: str, **filters: Any) -> records.VersionPage:
        return self.registry.models.list_versions(name, **filters)

    def get_version(self, ref: str | ModelRef) -> records.ModelVersion:
        return self.registry.models.get_version(parse_ref(ref) if isinstance(ref, str) else ref)

    def register(
        self,
        path: str | Path,
        options: records.RegistrationOptions,
        example: str | Path | None = None,
    ) -> records.ModelVersion:
        return self.registry.register(Path(path), options, Path(example) if example else None)

    def set_alias(self, name: str, alias: str, version: int) -> records.Alias:
        return self.registry.models.set_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.registry.models.delete_alias(name, alias)

    def archive_version(self, ref: str | ModelRef) -> records.ModelVersion:
        return self.registry.models.archive_version(parse_ref(ref) if isinstance(ref, str) else ref)

    def archive_model(self, name: str) -> records.Model:
        return self.registry.models.archive_model(name)

    def scale_model(
        self, name: str, version: int | str | None = None, **options: Any
    ) -> dict[str, Any]:
        raise Conflict(SERVER_NEEDED)

    # ---- deployments ----------------------------------------------------

    def apply(self, manifest_text: str, dry_run: bool = False) -> records.ApplyResult:
        from shipyard.registry.manifest import parse_manifest

        return self.registry.deployments.apply(parse_manifest(manifest_text), dry_run=dry_run)

    def list_deployments(self) -> list[records.DeploymentRevision]:
        return self.registry.deployments.list()

    def get_deployment(self, name: str) -> records.DeploymentRevision:
        return self.registry.deployments.get(name)

    def cluster(self) -> dict[str, Any]:
        """As Client's, read from the registry's membership table."""
        from shipyard.scaling.membership import MEMBERSHIP_WINDOW_SECONDS

        members = self.registry.fleet.members(MEMBERSHIP_WINDOW_SECONDS)
        return {
            "window_seconds": MEMBERSHIP_WINDOW_SECONDS,
            "replicas": [
                {**asdict(m), "started_at": m.started_at.isoformat(),
                 "heartbeat_at": m.heartbeat_at.isoformat()}
                for m in members
            ],
        }  # fmt: skip

    def deployment_status(self, name: str) -> dict[str, Any]:
        """As Client's; nothing is loaded without a server, so `serving` is empty."""
        return {**self.get_deployment(name).model_dump(mode="json"), "serving": []}

    def deployment_history(self, name: str) -> list[records.DeploymentRevision]:
        return self.registry.deployments.history(name)

    def rollback_deployment(self, name: str, to: int) -> records.DeploymentRevision:
        return self.registry.deployments.rollback(name, to)

    def start_rollout(self, name: str, **options: Any) -> records.Rollout:
        from shipyard.routing.rollouts import RolloutService

        return RolloutService(self.registry).start(name, **options)

    def rollout_status(self, name: str) -> records.Rollout:
        return self.registry.rollouts.latest(name)

    def rollout_action(self, name: str, action: str) -> records.Rollout:
        from shipyard.routing.rollouts import RolloutService

        return RolloutService(self.registry).act(name, action)

    # ---- evaluation and promotion ------------------------------------------

    @cached_property
    def _promotion(self) -> PromotionService:
        from shipyard.promotion.service import PromotionService

        return PromotionService(self.registry, self._monitoring.store)

    def evaluate(
        self, ref: str | ModelRef, data: str | Path, label: str, against: str | None = None,
        slice_by: str | None = None, max_rows: int | None = None, wait: bool = True,
    ) -> records.Evaluation:  # fmt: skip
        from shipyard.promotion.service import EvaluationOrder

        ref = parse_ref(ref) if isinstance(ref, str) else ref
        order = EvaluationOrder(str(data), label, slice_by, max_rows)
        return self._promotion.evaluate(ref, order, against or "production")

    def export(
        self, ref: str | ModelRef, options: ExportOptions, data: str | Path | None = None
    ) -> ExportResult:
        from shipyard.config import Settings
        from shipyard.packaging.service import export_version
        from shipyard.registry.audit import current_actor

        ref = parse_ref(ref) if isinstance(ref, str) else ref
        return export_version(
            self.registry, ref, options, Settings().isolation_limits,
            data=Path(data) if data is not None else None, created_by=current_actor().name,
        )  # fmt: skip

    def replay(
        self, deployment: str, to: str, window: str | None = "24h", limit: int | None = None,
        wait: bool = True,
    ) -> records.Evaluation:  # fmt: skip
        return self._promotion.replay(deployment, parse_ref(to), window, limit)

    def evaluation(self, evaluation_id: int) -> records.Evaluation:
        return self.registry.evaluations.get(evaluation_id)

    def evaluations(self, ref: str | ModelRef) -> list[records.Evaluation]:
        found = self.get_version(ref)
        return self.registry.evaluations.recent(found.model, found.version)

    def evaluation_report(self, evaluation_id: int) -> str:
        return self.registry.evaluations.report(evaluation_id)

    def apply_policy(self, text: str) -> records.PolicyRevision:
        from shipyard.promotion.policy import parse_policy

        policy = parse_policy(text)
        return self.registry.policies.apply(policy.name, policy.document())

    def policies(self) -> list[records.PolicyRevision]:
        return self.registry.policies.latest_all()

    def promote(
        self, ref: str, policy_text: str, data: str | Path | None = None,
        label: str | None = None, slice_by: str | None = None, wait: bool = True,
    ) -> records.Promotion:  # fmt: skip
        from shipyard.promotion.policy import parse_policy
        from shipyard.promotion.service import EvaluationOrder

        policy = parse_policy(policy_text)
        order = None
        if data is not None:
            label = label or (policy.data.label if policy.data else None)
            if label is None:
                raise InvalidInput("--label: name the column that holds the true values")
            slice_by = slice_by or (policy.data.slice_by if policy.data else None)
            order = EvaluationOrder(str(data), label, slice_by)
        return self._promotion.promote(parse_ref(ref), policy, order)

    def promotion(self, promotion_id: int) -> records.Promotion:
        return self.registry.promotions.get(promotion_id)

    def promotions(self, model: str | None = None) -> list[records.Promotion]:
        return self.registry.promotions.recent(model)

    def decide(self, promotion_id: int, approve: bool, reason: str = "") -> records.Promotion:
        return self._promotion.decide(promotion_id, approve, reason)

    # ---- monitoring --------------------------------------------------------

    @cached_property
    def _monitoring(self) -> MonitoringService:
        from shipyard.monitoring.service import MonitoringService

        return MonitoringService(self.registry)

    def send_feedback(self, items: list[dict[str, Any]]) -> dict[str, int]:
        from shipyard.monitoring.store import FeedbackItem
        from shipyard.registry.audit import current_actor

        labels = [FeedbackItem.model_validate(item) for item in items]
        return dict(self._monitoring.feedback(labels, current_actor().name).model_dump())

    def quality(
        self, deployment: str, window: str = "1h", bucket: str | None = None
    ) -> dict[str, Any]:
        from shipyard.durations import duration_seconds

        result: dict[str, Any] = self._monitoring.quality(
            deployment,
            duration_seconds(window, "window"),
            duration_seconds(bucket, "bucket") if bucket else None,
        )
        return result

    def check_drift(
        self, deployment: str, window: str | None = None, version: int | None = None
    ) -> list[dict[str, Any]]:
        from shipyard.durations import duration_seconds

        seconds = duration_seconds(window, "window") if window else None
        reports = self._monitoring.check_drift(deployment, seconds, version)
        return [report.model_dump() for report in reports]

    def drift_history(self, deployment: str, limit: int = 20) -> list[dict[str, Any]]:
        return [r.model_dump() for r in self._monitoring.drift_history(deployment, limit)]

    def drift_report_html(self, report_id: int) -> str:
        return str(self._monitoring.drift_html(report_id))

    def predictions(self, **filters: Any) -> list[dict[str, Any]]:
        where, limit, after_id = _prediction_filter(filters)
        return [r.model_dump() for r in self._monitoring.predictions(where, limit, after_id)]

    def export_predictions(self, destination: str | Path, **filters: Any) -> int:
        where, _, _ = _prediction_filter(filters)
        return int(self._monitoring.export(where, str(destination)))

    def cost(self) -> list[dict[str, Any]]:
        raise Conflict("cost is measured by a running server: set SHIPYARD_URL")


def _prediction_filter(filters: dict[str, Any]) -> tuple[Any, int, int | None]:
    from datetime import datetime

    from shipyard.monitoring.store import PredictionFilter

    def stamp(value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.timestamp()
        return datetime.fromisoformat(str(value)).timestamp()

    where = PredictionFilter(
        deployment=filters.get("deployment"),
        model=filters.get("model"),
        version=filters.get("version"),
        since=stamp(filters.get("since")),
        until=stamp(filters.get("until")),
    )
    return where, int(filters.get("limit", 100)), filters.get("after_id")
