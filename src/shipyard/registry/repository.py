"""Registry operations on the database: models, versions, aliases, tags.

Versions are immutable once created: no method here changes a version's
artifact, signature or lineage. Archive replaces delete.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shipyard.errors import Conflict, InvalidInput, NotFound
from shipyard.registry import records
from shipyard.registry.audit import record_event
from shipyard.registry.db import write_session
from shipyard.registry.refs import (
    LATEST,
    ModelRef,
    check_alias,
    check_model_name,
    check_tag_key,
)
from shipyard.registry.tables import (
    AliasRow,
    ModelRow,
    ModelTagRow,
    VersionRow,
    VersionTagRow,
    utcnow,
)
from shipyard.signature import Signature

DEFAULT_ALIAS = "production"
"""The alias a bare model name serves."""

MAX_PAGE_SIZE = 1000


@dataclass
class NewVersion:
    """Everything a new version is made of; the artifact is already stored."""

    flavor: str
    artifact_digest: str
    artifact_size: int
    flavor_details: dict[str, Any] = field(default_factory=dict)
    unsafe_format: bool = False
    signature: Signature | None = None
    reference_sample: records.ReferenceSample | None = None
    lineage: records.Lineage = field(default_factory=records.Lineage)
    environment: records.Environment | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    aliases: list[str] = field(default_factory=list)
    """Aliases moved to the new version in the same transaction."""


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid page_token {token!r}") from exc


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


class ModelRepository:
    """Reads and writes the registry tables."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # ---- models -----------------------------------------------------------

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
        """Models by name, filtered by name prefix, tag (`key` or `key=value`) and alias.

        The tag filter matches tags on the model or on any of its live versions.
        """
        query = sa.select(ModelRow).order_by(ModelRow.name).limit(_check_limit(limit) + 1)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(ModelRow.name.like(f"{escaped}%", escape="\\"))
        if tag:
            # A tag matches on the model itself or on any of its live versions.
            key, has_value, value = tag.partition("=")
            on_model = ModelTagRow.key == key
            on_version = VersionTagRow.key == key
            if has_value:
                on_model = on_model & (ModelTagRow.value == value)
                on_version = on_version & (VersionTagRow.value == value)
            tagged_versions = (
                sa.select(VersionRow.model_id)
                .join(VersionTagRow, VersionTagRow.version_id == VersionRow.id)
                .where(on_version & VersionRow.archived_at.is_(None))
            )
            query = query.where(
                ModelRow.id.in_(sa.select(ModelTagRow.model_id).where(on_model))
                | ModelRow.id.in_(tagged_versions)
            )
        if alias:
            query = query.where(
                ModelRow.id.in_(sa.select(AliasRow.model_id).where(AliasRow.alias == alias))
            )
        if not include_archived:
            query = query.where(ModelRow.archived_at.is_(None))
        if page_token:
            query = query.where(ModelRow.name > _decode_token(page_token))
        query = query.options(
            selectinload(ModelRow.aliases).selectinload(AliasRow.version),
            selectinload(ModelRow.tags),
        )
        with self._sessions() as session:
            rows = list(session.scalars(query))
            more = len(rows) > limit
            rows = rows[:limit]
            latest = self._latest_versions(session, [row.id for row in rows])
            models = [self._model_record(row, latest.get(row.id)) for row in rows]
        token = _encode_token(rows[-1].name) if more else None
        return records.ModelPage(models=models, next_page_token=token)

    def get_model(self, name: str) -> records.Model:
        with self._sessions() as session:
            row = self._model_row(session, name)
            latest = self._latest_versions(session, [row.id])
            return self._model_record(row, latest.get(row.id))

    def archive_model(self, name: str) -> records.Model:
        with write_session(self._sessions) as session:
            row = self._model_row(session, name)
            if row.aliases:
                held = ", ".join(sorted(a.alias for a in row.aliases))
                raise Conflict(
                    f"model {name!r} still has aliases ({held}); delete them before archiving"
                )
            if row.archived_at is None:
                row.archived_at = row.updated_at = utcnow()
            record_event(session, "model.archive", name, after={"archived": True})
        return self.get_model(name)

    def set_model_tag(self, name: str, key: str, value: str) -> records.Model:
        check_tag_key(key)
        with write_session(self._sessions) as session:
            row = self._model_row(session, name)
            old = session.get(ModelTagRow, (row.id, key))
            before = {key: old.value} if old is not None else None
            session.merge(ModelTagRow(model_id=row.id, key=key, value=value))
            row.updated_at = utcnow()
            record_event(session, "model.tag.set", name, before=before, after={key: value})
        return self.get_model(name)

    def delete_model_tag(self, name: str, key: str) -> records.Model:
        with write_session(self._sessions) as session:
            row = self._model_row(session, name)
            deleted = session.execute(
                sa.delete(ModelTagRow).where(
                    (ModelTagRow.model_id == row.id) & (ModelTagRow.key == key)
                )
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"model {name!r} has no tag {key!r}")
            record_event(session, "model.tag.delete", name, before={"key": key})
        return self.get_model(name)

    # ---- versions ---------------------------------------------------------

    def create_version(self, name: str, new: NewVersion) -> records.ModelVersion:
        """Add the next version of `name` (creating the model if needed).

        The number comes from bumping `models.last_version` inside the same
        transaction that inserts the version: the row lock (PostgreSQL) or the
        database write lock (SQLite, BEGIN IMMEDIATE) serialises concurrent
        registrations, and a rollback undoes the bump, so numbers never gap.
        """
        check_model_name(name)
        for key in new.tags:
            check_tag_key(key)
        for alias in new.aliases:
            check_alias(alias, assigning=True)
        with write_session(self._sessions) as session:
            model_id = self._ensure_model(session, name, new.description)
            number = session.execute(
                sa.update(ModelRow)
                .where(ModelRow.id == model_id)
                .values(last_version=ModelRow.last_version + 1, updated_at=utcnow())
                .returning(ModelRow.last_version),
                execution_options={"synchronize_session": False},
            ).scalar_one()
            row = VersionRow(
                model_id=model_id,
                version=number,
                flavor=new.flavor,
                flavor_details=new.flavor_details,
                artifact_digest=new.artifact_digest,
                artifact_size=new.artifact_size,
                unsafe_format=new.unsafe_format,
                signature=new.signature.model_dump() if new.signature else None,
                reference_sample_digest=(
                    new.reference_sample.digest if new.reference_sample else None
                ),
                reference_sample_rows=new.reference_sample.rows if new.reference_sample else None,
                source_uri=new.lineage.source_uri,
                code_commit=new.lineage.code_commit,
                data_uri=new.lineage.data_uri,
                data_hash=new.lineage.data_hash,
                params=new.lineage.params,
                metrics=new.lineage.metrics,
                derived_from=new.lineage.derived_from,
                derivation=new.lineage.derivation or None,
                environment=new.environment.model_dump() if new.environment else None,
                description=new.description,
                created_by=new.created_by,
            )
            session.add(row)
            session.flush()
            session.add_all(
                VersionTagRow(version_id=row.id, key=k, value=v) for k, v in new.tags.items()
            )
            for alias in new.aliases:
                self._point_alias(session, model_id, alias, row.id)
            record_event(
                session,
                "version.register",
                f"{name}:{number}",
                after={
                    "flavor": new.flavor,
                    "digest": new.artifact_digest,
                    "unsafe_format": new.unsafe_format,
                    "aliases": list(new.aliases),
                    **(
                        {"derived_from": new.lineage.derived_from}
                        if new.lineage.derived_from
                        else {}
                    ),
                },
            )
        return self.get_version(ModelRef(name, version=number))

    def _ensure_model(self, session: Session, name: str, description: str) -> int:
        insert = _insert_ignoring_duplicates(session).values(
            name=name,
            description=description,
            last_version=0,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.execute(insert)
        row = self._model_row(session, name)
        if row.archived_at is not None:
            raise Conflict(f"model {name!r} is archived; it takes no new versions")
        return row.id

    def list_versions(
        self,
        name: str,
        *,
        include_archived: bool = False,
        limit: int = 100,
        page_token: str | None = None,
    ) -> records.VersionPage:
        with self._sessions() as session:
            model = self._model_row(session, name)
            query = (
                sa.select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version)
                .limit(_check_limit(limit) + 1)
                .options(selectinload(VersionRow.tags))
            )
            if not include_archived:
                query = query.where(VersionRow.archived_at.is_(None))
            if page_token:
                after = _decode_token(page_token)
                if not (after.isascii() and after.isdigit()) or len(after) > 10:
                    raise InvalidInput(f"invalid page_token {page_token!r}")
                query = query.where(VersionRow.version > int(after))
            rows = list(session.scalars(query))
            more = len(rows) > limit
            rows = rows[:limit]
            aliases = self._aliases_by_version(session, model.id)
            versions = [self._version_record(name, row, aliases) for row in rows]
        token = _encode_token(str(rows[-1].version)) if more else None
        return records.VersionPage(versions=versions, next_page_token=token)

    def get_version(self, ref: ModelRef) -> records.ModelVersion:
        """The version a reference names: by number, by alias, or the latest."""
        with self._sessions() as session:
            model = self._model_row(session, ref.name)
            row = self._version_row(session, model, ref)
            return self._version_record(ref.name, row, self._aliases_by_version(session, model.id))

    def serving_version(self, ref: ModelRef) -> records.ModelVersion:
        """What a reference serves: a bare name means its `production` alias, else the latest."""
        if ref.is_model:
            try:
                return self.get_version(ModelRef(ref.name, alias=DEFAULT_ALIAS))
            except NotFound:
                pass
        return self.get_version(ref)

    def find_version_by_digest(self, name: str, digest: str) -> records.ModelVersion | None:
        """The newest live version of `name` whose artifact has this digest, if any."""
        with self._sessions() as session:
            query = (
                sa.select(VersionRow.version)
                .join(ModelRow)
                .where(
                    (ModelRow.name == name)
                    & (VersionRow.artifact_digest == digest)
                    & VersionRow.archived_at.is_(None)
                )
                .order_by(VersionRow.version.desc())
                .limit(1)
            )
            number = session.scalar(query)
        return None if number is None else self.get_version(ModelRef(name, version=number))

    def archive_version(self, ref: ModelRef) -> records.ModelVersion:
        with write_session(self._sessions) as session:
            model = self._model_row(session, ref.name)
            row = self._version_row(session, model, ref)
            holders = [a.alias for a in model.aliases if a.version_id == row.id]
            if holders:
                raise Conflict(
                    f"{ref.name}:{row.version} is aliased as {', '.join(holders)}; "
                    "move or delete the alias before archiving"
                )
            if row.archived_at is None:
                row.archived_at = utcnow()
                model.updated_at = utcnow()
            number = row.version
            record_event(session, "version.archive", f"{ref.name}:{number}")
        return self.get_version(ModelRef(ref.name, version=number))

    def set_version_tag(self, ref: ModelRef, key: str, value: str) -> records.ModelVersion:
        check_tag_key(key)
        with write_session(self._sessions) as session:
            row = self._version_row(session, self._model_row(session, ref.name), ref)
            old = session.get(VersionTagRow, (row.id, key))
            before = {key: old.value} if old is not None else None
            session.merge(VersionTagRow(version_id=row.id, key=key, value=value))
            number = row.version
            target = f"{ref.name}:{number}"
            record_event(session, "version.tag.set", target, before=before, after={key: value})
        return self.get_version(ModelRef(ref.name, version=number))

    def delete_version_tag(self, ref: ModelRef, key: str) -> records.ModelVersion:
        with write_session(self._sessions) as session:
            row = self._version_row(session, self._model_row(session, ref.name), ref)
            deleted = session.execute(
                sa.delete(VersionTagRow).where(
                    (VersionTagRow.version_id == row.id) & (VersionTagRow.key == key)
                )
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"{ref} has no tag {key!r}")
            number = row.version
            record_event(session, "version.tag.delete", f"{ref.name}:{number}", before={"key": key})
        return self.get_version(ModelRef(ref.name, version=number))

    # ---- aliases ----------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> records.Alias:
        check_alias(alias, assigning=True)
        with write_session(self._sessions) as session:
            model = self._model_row(session, name)
            row = self._version_row(session, model, ModelRef(name, version=version))
            if row.archived_at is not None:
                raise Conflict(f"{name}:{version} is archived; an alias cannot point at it")
            old = next((a.version.version for a in model.aliases if a.alias == alias), None)
            self._point_alias(session, model.id, alias, row.id)
            model.updated_at = utcnow()
            record_event(
                session,
                "alias.set",
                f"{name}@{alias}",
                before={"version": old} if old is not None else None,
                after={"version": version},
            )
        return records.Alias(model=name, alias=alias, version=version)

    @staticmethod
    def _point_alias(session: Session, model_id: int, alias: str, version_id: int) -> None:
        existing = session.scalar(
            sa.select(AliasRow).where((AliasRow.model_id == model_id) & (AliasRow.alias == alias))
        )
        if existing is None:
            session.add(AliasRow(model_id=model_id, alias=alias, version_id=version_id))
        else:
            existing.version_id = version_id
            existing.updated_at = utcnow()

    def delete_alias(self, name: str, alias: str) -> None:
        with write_session(self._sessions) as session:
            model = self._model_row(session, name)
            old = next((a.version.version for a in model.aliases if a.alias == alias), None)
            deleted = session.execute(
                sa.delete(AliasRow).where(
                    (AliasRow.model_id == model.id) & (AliasRow.alias == alias)
                )
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            record_event(session, "alias.delete", f"{name}@{alias}", before={"version": old})

    # ---- helpers ----------------------------------------------------------

    @staticmethod
    def _model_row(session: Session, name: str) -> ModelRow:
        row = session.scalar(
            sa.select(ModelRow)
            .where(ModelRow.name == name)
            .options(selectinload(ModelRow.aliases), selectinload(ModelRow.tags))
        )
        if row is None:
            raise NotFound(f"model {name!r} not found")
        return row

    @staticmethod
    def _version_row(session: Session, model: ModelRow, ref: ModelRef) -> VersionRow:
        query = sa.select(VersionRow).where(VersionRow.model_id == model.id)
        if ref.version is not None:
            query = query.where(VersionRow.version == ref.version)
        elif ref.alias is not None and ref.alias != LATEST:
            alias = next((a for a in model.aliases if a.alias == ref.alias), None)
            if alias is None:
                raise NotFound(f"model {model.name!r} has no alias {ref.alias!r}")
            query = query.where(VersionRow.id == alias.version_id)
        else:
            query = (
                query.where(VersionRow.archived_at.is_(None))
                .order_by(VersionRow.version.desc())
                .limit(1)
            )
        row = session.scalar(query.options(selectinload(VersionRow.tags)))
        if row is None:
            if ref.version is not None:
                raise NotFound(f"model {model.name!r} has no version {ref.version}")
            raise NotFound(f"model {model.name!r} has no live versions")
        return row

    @staticmethod
    def _latest_versions(session: Session, model_ids: Iterable[int]) -> dict[int, int]:
        query = (
            sa.select(VersionRow.model_id, sa.func.max(VersionRow.version))
            .where(VersionRow.model_id.in_(list(model_ids)) & VersionRow.archived_at.is_(None))
            .group_by(VersionRow.model_id)
        )
        return {model_id: number for model_id, number in session.execute(query)}

    @staticmethod
    def _aliases_by_version(session: Session, model_id: int) -> dict[int, list[str]]:
        by_version: dict[int, list[str]] = {}
        query = (
            sa.select(AliasRow.version_id, AliasRow.alias)
            .where(AliasRow.model_id == model_id)
            .order_by(AliasRow.alias)
        )
        for version_id, alias in session.execute(query):
            by_version.setdefault(version_id, []).append(alias)
        return by_version

    @staticmethod
    def _model_record(row: ModelRow, latest: int | None) -> records.Model:
        return records.Model(
            name=row.name,
            description=row.description,
            latest_version=latest,
            version_count=row.last_version,
            aliases={a.alias: a.version.version for a in row.aliases},
            tags={t.key: t.value for t in row.tags},
            created_at=row.created_at,
            updated_at=row.updated_at,
            archived=row.archived_at is not None,
        )

    @staticmethod
    def _version_record(
        name: str, row: VersionRow, aliases: dict[int, list[str]]
    ) -> records.ModelVersion:
        sample = None
        if row.reference_sample_digest is not None:
            sample = records.ReferenceSample(
                digest=row.reference_sample_digest, rows=row.reference_sample_rows or 0
            )
        return records.ModelVersion(
            model=name,
            version=row.version,
            flavor=row.flavor,
            flavor_details=row.flavor_details,
            artifact=records.ArtifactInfo(digest=row.artifact_digest, size=row.artifact_size),
            unsafe_format=row.unsafe_format,
            signature=Signature.model_validate(row.signature) if row.signature else None,
            reference_sample=sample,
            lineage=records.Lineage(
                source_uri=row.source_uri,
                code_commit=row.code_commit,
                data_uri=row.data_uri,
                data_hash=row.data_hash,
                params=row.params,
                metrics=row.metrics,
                derived_from=row.derived_from,
                derivation=row.derivation or {},
            ),
            environment=(
                records.Environment.model_validate(row.environment) if row.environment else None
            ),
            description=row.description,
            aliases=aliases.get(row.id, []),
            tags={t.key: t.value for t in row.tags},
            created_by=row.created_by,
            created_at=row.created_at,
            archived=row.archived_at is not None,
        )


def _insert_ignoring_duplicates(session: Session) -> Any:
    """INSERT … ON CONFLICT DO NOTHING for the models table, in the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(ModelRow).on_conflict_do_nothing(index_elements=["name"])
    if dialect == "sqlite":
        return sqlite.insert(ModelRow).on_conflict_do_nothing(index_elements=["name"])
    raise InvalidInput(f"unsupported registry database {dialect!r}: use SQLite or PostgreSQL")
