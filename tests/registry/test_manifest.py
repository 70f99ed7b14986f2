"""Deployment manifests: targets checked alike for routes and shadows, stored as applied."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shipyard.errors import Conflict, InvalidInput
from shipyard.registry.manifest import DeploymentManifest, parse_manifest
from shipyard.registry.records import DeploymentRevision
from shipyard.registry.service import Registry
from shipyard.registry.tables import DeploymentRevisionRow

HEAD = "name: a\nmodel: m\n"
BAD_ALIAS = (
    "invalid alias '9x': start with a letter or '_', then letters, digits, "
    "'.', '_' or '-' (at most 100)"
)


def _refusal(text: str) -> str:
    with pytest.raises(InvalidInput) as refused:
        parse_manifest(text)
    return refused.value.message


def test_a_shadow_without_a_target_is_refused() -> None:
    assert _refusal(HEAD + "routes: [{version: 1}]\nshadow: {fraction: 0.5}\n") == (
        "manifest: shadow: Value error, a shadow names either a version or an alias"
    )


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("{version: 0}", ".version: Input should be greater than or equal to 1"),
        ("{alias: 9x}", f".alias: Value error, {BAD_ALIAS}"),
        ("{version: 2, alias: b}", ": Value error, a {noun} names either a version or an alias"),
    ],
)
def test_a_bad_target_is_refused_for_a_route_and_a_shadow(target: str, problem: str) -> None:
    route = _refusal(HEAD + f"routes: [{target}]\n")
    assert route == "manifest: routes.0" + problem.format(noun="route")
    shadow = _refusal(HEAD + f"routes: [{{version: 1}}]\nshadow: {target}\n")
    assert shadow == "manifest: shadow" + problem.format(noun="shadow")


def test_routes_and_shadows_name_their_target() -> None:
    manifest = parse_manifest(
        HEAD + "routes: [{version: 3, weight: 9}, {alias: champion}]\n"
        "shadow: {alias: challenger, fraction: 0.1}\n"
    )
    assert [r.target for r in manifest.routes] == ["3", "champion"]
    assert manifest.shadow is not None and manifest.shadow.target == "challenger"


MANIFEST = """
name: fraud-api
model: fraud
routes:
  - version: 1
    weight: 70
  - alias: challenger
    weight: 30
shadow: {version: 5, fraction: 0.1}
serving: {workers: 2, cache: true}
rollout: {gates: {max_p95_ratio: 3}}
"""
STORED = {
    "name": "fraud-api",
    "model": "fraud",
    "description": "",
    "routes": [{"version": 1, "weight": 70.0}, {"alias": "challenger", "weight": 30.0}],
    "shadow": {"version": 5, "fraction": 0.1},
    "serving": {"workers": 2, "cache": True},
    "rollout": {
        "steps": [5, 25, 50, 100],
        "bake_seconds": 300,
        "min_requests": 100,
        "gates": {"max_p95_ratio": 3.0},
    },
}


def test_revisions_carry_a_parsed_manifest_stored_and_shown_as_before(
    registry: Registry,
) -> None:
    registry.deployments.apply(parse_manifest(MANIFEST))
    with registry.sessions() as session:
        (stored,) = session.scalars(sa.select(DeploymentRevisionRow.manifest)).all()
    assert stored == STORED  # unset fields left out, as ever
    live = registry.deployments.get("fraud-api")
    assert isinstance(live.manifest, DeploymentManifest)
    assert live.manifest.routes[1].alias == "challenger"
    shown = live.model_dump(mode="json")["manifest"]
    assert shown == STORED
    assert DeploymentRevision.model_validate_json(live.model_dump_json()) == live
    assert registry.deployments.apply(parse_manifest(MANIFEST)).changed is False


def test_a_stored_revision_that_no_longer_validates_is_named(registry: Registry) -> None:
    registry.deployments.apply(parse_manifest(HEAD + "routes: [{version: 1}]\n"))
    with registry.sessions() as session, session.begin():
        # What an older release accepted: a shadow with no target.
        old = {"name": "a", "model": "m", "routes": [{"version": 1}], "shadow": {"fraction": 0.5}}
        session.execute(sa.update(DeploymentRevisionRow).values(manifest=old))
    with pytest.raises(Conflict) as refused:
        registry.deployments.find("a")
    assert refused.value.message.startswith(
        "revision 1 of deployment 'a' is no longer a valid manifest ("
    )
    assert refused.value.message.endswith("); apply a corrected manifest or roll back")


def test_a_manifest_scaling_section_folds_into_its_serving_options() -> None:
    manifest = parse_manifest(
        "name: api\nmodel: fraud\nroutes: [{version: 1}]\n"
        "serving: {max_batch_size: 8}\n"
        "scaling: {min_workers: 1, max_workers: 3, scale_to_zero_after: 600}\n"
    )
    options = manifest.serving_options
    assert options is not None and options.scaling is not None
    assert (options.max_batch_size, options.scaling.max_workers) == (8, 3)
    assert options.scaling.scale_to_zero_after == 600


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("serving: {workers: 2}\nscaling: {max_workers: 3}\n", "serving.workers fixes"),
        ("scaling: {min_workers: 4, max_workers: 3}\n", "min_workers (4) is above max_workers"),
        ("scaling: {max_workers: 0}\n", "scaling.max_workers: Input should be greater"),
    ],
)
def test_a_scaling_section_that_cannot_work_is_refused(extra: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_manifest("name: api\nmodel: fraud\nroutes: [{version: 1}]\n" + extra)
    assert problem in refused.value.message
