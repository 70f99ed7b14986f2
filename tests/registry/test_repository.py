"""The registry's database operations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from shipyard.errors import Conflict, InvalidInput, NotFound
from shipyard.registry.records import Lineage
from shipyard.registry.refs import ModelRef
from shipyard.registry.repository import ModelRepository, NewVersion
from shipyard.registry.service import Registry
from shipyard.signature import Signature, TensorSpec


def new_version(digest_char: str = "a", **kwargs: object) -> NewVersion:
    return NewVersion(
        flavor="sklearn", artifact_digest=digest_char * 64, artifact_size=10, **kwargs
    )  # type: ignore[arg-type]


@pytest.fixture
def models(registry: Registry) -> ModelRepository:
    return registry.models


def test_versions_number_from_one_per_model(models: ModelRepository) -> None:
    assert models.create_version("fraud", new_version()).version == 1
    assert models.create_version("fraud", new_version("b")).version == 2
    assert models.create_version("churn", new_version()).version == 1
    assert [v.version for v in models.list_versions("fraud").versions] == [1, 2]


def test_version_keeps_lineage_signature_and_metadata(models: ModelRepository) -> None:
    signature = Signature(
        inputs=[TensorSpec(name="age", datatype="INT64", shape=[-1])],
        outputs=[TensorSpec(name="predict", datatype="FP64", shape=[-1])],
    )
    lineage = Lineage(
        source_uri="file:///tmp/m.joblib",
        code_commit="abc123",
        data_uri="s3://bucket/train.parquet",
        data_hash="sha256:ff",
        params={"C": "0.5"},
        metrics={"auc": 0.91},
    )
    created = models.create_version(
        "fraud",
        new_version(
            signature=signature,
            lineage=lineage,
            description="first",
            created_by="ana",
            tags={"team": "risk"},
        ),
    )
    fetched = models.get_version(ModelRef("fraud", version=1))
    assert fetched == created
    assert fetched.signature == signature
    assert fetched.lineage == lineage
    assert fetched.created_by == "ana"
    assert fetched.tags == {"team": "risk"}
    assert fetched.created_at.tzinfo is not None


def test_aliases_move_and_resolve(models: ModelRepository) -> None:
    models.create_version("fraud", new_version())
    models.create_version("fraud", new_version("b"))
    models.set_alias("fraud", "production", 1)
    assert models.get_version(ModelRef("fraud", alias="production")).version == 1
    models.set_alias("fraud", "production", 2)
    assert models.get_version(ModelRef("fraud", alias="production")).version == 2
    assert models.get_version(ModelRef("fraud", version=2)).aliases == ["production"]
    assert models.get_model("fraud").aliases == {"production": 2}
    models.delete_alias("fraud", "production")
    with pytest.raises(NotFound, match="no alias 'production'"):
        models.get_version(ModelRef("fraud", alias="production"))


def test_latest_skips_archived_versions(models: ModelRepository) -> None:
    models.create_version("fraud", new_version())
    models.create_version("fraud", new_version("b"))
    models.archive_version(ModelRef("fraud", version=2))
    assert models.get_version(ModelRef("fraud")).version == 1
    assert models.get_version(ModelRef("fraud", alias="latest")).version == 1
    assert models.get_model("fraud").latest_version == 1
    assert [v.version for v in models.list_versions("fraud").versions] == [1]
    everything = models.list_versions("fraud", include_archived=True).versions
    assert [(v.version, v.archived) for v in everything] == [(1, False), (2, True)]


def test_archived_version_refuses_alias_and_aliased_version_refuses_archive(
    models: ModelRepository,
) -> None:
    models.create_version("fraud", new_version())
    models.create_version("fraud", new_version("b"))
    models.set_alias("fraud", "production", 1)
    with pytest.raises(Conflict, match="aliased as production"):
        models.archive_version(ModelRef("fraud", version=1))
    models.archive_version(ModelRef("fraud", version=2))
    with pytest.raises(Conflict, match="archived"):
        models.set_alias("fraud", "staging", 2)


def test_archived_model_takes_no_new_versions(models: ModelRepository) -> None:
    models.create_version("fraud", new_version(aliases=["production"]))
    with pytest.raises(Conflict, match=r"still has aliases \(production\)"):
        models.archive_model("fraud")
    models.delete_alias("fraud", "production")
    models.archive_model("fraud")
    with pytest.raises(Conflict, match="archived"):
        models.create_version("fraud", new_version("b"))
    assert models.list_models().models == []
    assert [m.name for m in models.list_models(include_archived=True).models] == ["fraud"]


def test_unknown_names_are_not_found(models: ModelRepository) -> None:
    with pytest.raises(NotFound, match="model 'ghost' not found"):
        models.get_model("ghost")
    models.create_version("fraud", new_version())
    with pytest.raises(NotFound, match="no version 7"):
        models.get_version(ModelRef("fraud", version=7))


@pytest.mark.parametrize("bad", ["", "has space", "-lead", "a/b", "x" * 201])
def test_bad_model_names_are_refused(models: ModelRepository, bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid model name"):
        models.create_version(bad, new_version())


def test_latest_is_reserved_and_numeric_aliases_refused(models: ModelRepository) -> None:
    models.create_version("fraud", new_version())
    with pytest.raises(InvalidInput, match="reserved"):
        models.set_alias("fraud", "latest", 1)
    with pytest.raises(InvalidInput, match="invalid alias"):
        models.set_alias("fraud", "3", 1)


def test_list_filters_by_prefix_tag_and_alias(models: ModelRepository) -> None:
    models.create_version("fraud-eu", new_version(tags={"team": "risk"}))
    models.create_version("fraud-us", new_version())
    models.create_version("churn", new_version())
    models.set_model_tag("churn", "team", "growth")
    models.set_alias("fraud-us", "production", 1)

    def names(**filters: object) -> list[str]:
        return [m.name for m in models.list_models(**filters).models]  # type: ignore[arg-type]

    assert names() == ["churn", "fraud-eu", "fraud-us"]
    assert names(prefix="fraud") == ["fraud-eu", "fraud-us"]
    assert names(prefix="fraud_") == []  # '_' is literal, not a LIKE wildcard
    assert names(tag="team") == ["churn", "fraud-eu"]
    assert names(tag="team=risk") == ["fraud-eu"]
    assert names(alias="production") == ["fraud-us"]
    assert names(prefix="fraud", alias="production") == ["fraud-us"]


def test_list_paginates_without_overlap(models: ModelRepository) -> None:
    for index in range(7):
        models.create_version(f"m{index}", new_version())
    seen: list[str] = []
    token = None
    while True:
        page = models.list_models(limit=3, page_token=token)
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if token is None:
            break
    assert seen == [f"m{index}" for index in range(7)]

    for _ in range(4):
        models.create_version("many", new_version())
    first = models.list_versions("many", limit=3)
    rest = models.list_versions("many", limit=3, page_token=first.next_page_token)
    assert [v.version for v in first.versions + rest.versions] == [1, 2, 3, 4]
    assert rest.next_page_token is None


def test_tags_on_models_and_versions(models: ModelRepository) -> None:
    models.create_version("fraud", new_version())
    assert models.set_model_tag("fraud", "owner", "ana").tags == {"owner": "ana"}
    assert models.set_model_tag("fraud", "owner", "bo").tags == {"owner": "bo"}
    ref = ModelRef("fraud", version=1)
    assert models.set_version_tag(ref, "validated", "yes").tags == {"validated": "yes"}
    assert models.delete_version_tag(ref, "validated").tags == {}
    with pytest.raises(NotFound):
        models.delete_model_tag("fraud", "nope")


def test_a_refused_registration_consumes_no_number(models: ModelRepository) -> None:
    models.create_version("fraud", new_version())
    with pytest.raises(InvalidInput):
        models.create_version("fraud", new_version("b", aliases=["latest"]))
    assert models.create_version("fraud", new_version("c")).version == 2
