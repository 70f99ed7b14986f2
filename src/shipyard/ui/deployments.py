"""Console pages: a deployment's live revision, traffic split, history with diffs,
shadow agreement, workers and live charts; applying an edited manifest and starting a
rollout."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from shipyard.api.scaling import serving_documents
from shipyard.errors import InvalidInput, ShipyardError
from shipyard.registry import records
from shipyard.registry.manifest import DeploymentManifest, parse_manifest
from shipyard.registry.service import Registry
from shipyard.routing.rollouts import RolloutService
from shipyard.security.gate import require_scope
from shipyard.ui.common import plane, render
from shipyard.ui.live import traffic

router = APIRouter()

HISTORY_SHOWN = 50
VERSIONS_OFFERED = 100
_COLOURS = ("#0a58ca", "#5a3e9b", "#245b3f", "#7a4b00", "#b42318", "#57606a")


@dataclass(frozen=True)
class Slice:
    """One route's share of the traffic, placed on a 0-100 bar."""

    label: str
    """"v3 90%", or the alias and its share when the alias points nowhere."""
    title: str
    start: float
    share: float
    colour: str


@dataclass(frozen=True)
class HistoryEntry:
    revision: records.DeploymentRevision
    diff: list[str]
    """Unified diff from the revision before (empty for the first)."""


def manifest_yaml(manifest: DeploymentManifest) -> str:
    return yaml.safe_dump(manifest.document(), sort_keys=False)


def split(manifest: DeploymentManifest, aliases: dict[str, int]) -> list[Slice]:
    """The routes' weights as shares of 100, aliases resolved to versions."""
    total = sum(r.weight for r in manifest.routes) or 1.0
    slices, start = [], 0.0
    for index, route in enumerate(manifest.routes):
        share = 100.0 * route.weight / total
        version = route.version if route.version is not None else aliases.get(route.alias or "")
        name = f"v{version}" if version is not None else f"{route.alias}?"
        title = f"{name} ({route.alias}) {share:.3g}%" if route.alias else f"{name} {share:.3g}%"
        slices.append(Slice(f"{name} {share:.3g}%", title, start, share,
                            _COLOURS[index % len(_COLOURS)]))  # fmt: skip
        start += share
    return slices


def _diff(before: records.DeploymentRevision, after: records.DeploymentRevision) -> list[str]:
    return list(difflib.unified_diff(
        manifest_yaml(before.manifest).splitlines(), manifest_yaml(after.manifest).splitlines(),
        fromfile=f"revision {before.revision}", tofile=f"revision {after.revision}", lineterm="",
    ))  # fmt: skip


def history(registry: Registry, name: str) -> list[HistoryEntry]:
    """The newest HISTORY_SHOWN revisions, newest first, each with its diff from the one
    before (one more is read to diff the oldest shown against)."""
    revisions = registry.deployments.history(name)[-(HISTORY_SHOWN + 1) :]
    entries = [HistoryEntry(after, _diff(before, after))
               for before, after in pairwise(revisions)]  # fmt: skip
    if len(revisions) <= HISTORY_SHOWN:
        entries.insert(0, HistoryEntry(revisions[0], []))
    return entries[::-1]


def _page_context(request: Request, name: str) -> dict[str, Any]:
    registry = plane(request).registry
    live = registry.deployments.get(name)
    manifest = live.manifest
    model = registry.models.get_model(manifest.model)
    versions = registry.models.list_versions(manifest.model, limit=VERSIONS_OFFERED).versions
    return {
        "live": live,
        "manifest": manifest,
        "manifest_text": manifest_yaml(manifest),
        "model": model,
        "split": split(manifest, model.aliases),
        "history": history(registry, name),
        "series": traffic(registry, name),
        "versions": sorted((v.version for v in versions), reverse=True),
        "rollout": registry.rollouts.active(name),
    }


@router.get("/deployments/{name}", response_class=HTMLResponse)
async def deployment_page(request: Request, name: str) -> HTMLResponse:
    context = await run_in_threadpool(_page_context, request, name)
    serving = serving_documents(request, context["manifest"].model)  # on the event loop
    return render(request, "deployment.html", serving=serving, **context)


@router.get("/deployments/{name}/live", response_class=HTMLResponse)
async def deployment_live(request: Request, name: str) -> HTMLResponse:
    registry = plane(request).registry
    series = await run_in_threadpool(traffic, registry, name)
    return render(request, "deployment_live.html", series=series)


def _apply(request: Request, name: str, text: str) -> records.ApplyResult:
    manifest = parse_manifest(text, "manifest")
    if manifest.name != name:
        raise InvalidInput(f"the manifest names deployment {manifest.name!r}, not {name!r}: "
                           "apply it on its own page or with `shipyard apply`")  # fmt: skip
    registry = plane(request).registry
    live = registry.deployments.find(name)
    require_scope(manifest.model, *([live.manifest.model] if live else []), action="deploy")
    return registry.deployments.apply(manifest)


@router.post("/deployments/{name}/apply", response_class=HTMLResponse)
async def apply_manifest(
    request: Request, name: str, manifest: Annotated[str, Form()]
) -> HTMLResponse:
    """Make the edited manifest live; a refusal is shown in the page (200: htmx swaps
    only 2xx answers)."""
    try:
        result = await run_in_threadpool(_apply, request, name, manifest)
    except ShipyardError as exc:
        return render(request, "deployment_result.html", kind="apply", error=exc.message)
    return render(request, "deployment_result.html", kind="apply", result=result, name=name)


def _start(request: Request, name: str, to: int) -> records.Rollout:
    registry = plane(request).registry
    require_scope(registry.deployments.get(name).manifest.model, action="deploy")
    return RolloutService(registry).start(name, to)


@router.post("/deployments/{name}/rollout", response_class=HTMLResponse)
async def start_rollout(request: Request, name: str, to: Annotated[str, Form()]) -> HTMLResponse:
    try:
        number = int(to)
    except ValueError:
        error = f"the version must be a number, not {to[:40]!r}"
        return render(request, "deployment_result.html", kind="rollout", error=error)
    try:
        rollout = await run_in_threadpool(_start, request, name, number)
    except ShipyardError as exc:
        return render(request, "deployment_result.html", kind="rollout", error=exc.message)
    return render(request, "deployment_result.html", kind="rollout", rollout=rollout, name=name)
