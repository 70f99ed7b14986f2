"""The audit trail: who changed what, when, from where, before and after.

Events are written in the same transaction as the change they describe, so a
change without its event (or an event without its change) cannot happen. The
acting identity travels in a context variable: the server sets it per request
from the authenticated key, the CLI leaves the local user.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.registry import records
from shipyard.registry.tables import AuditRow


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    role: str = ""
    source: str = "cli"


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("actor", default=None)
_fallback = Actor("unknown")


def current_actor() -> Actor:
    return _current.get() or _fallback


def set_default_actor(actor: Actor) -> None:
    """Who acts when no request set anyone (the CLI's local user)."""
    global _fallback
    _fallback = actor


@contextmanager
def acting_as(actor: Actor) -> Iterator[None]:
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)


def record_event(
    session: Session,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    actor = current_actor()
    session.add(
        AuditRow(
            actor=actor.name,
            role=actor.role,
            source=actor.source,
            action=action,
            target=target,
            before=before,
            after=after,
        )
    )


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, action: str, target: str, **after: Any) -> None:
        """An event with no registry change beside it (e.g. a refused login)."""
        with self._sessions() as session, session.begin():
            record_event(session, action, target, after=after or None)

    def events(self, since: datetime | None = None, limit: int = 100) -> list[records.AuditEvent]:
        query = sa.select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        with self._sessions() as session:
            rows = session.scalars(query).all()
        return [
            records.AuditEvent(
                id=row.id,
                at=row.at,
                actor=row.actor,
                role=row.role,
                source=row.source,
                action=row.action,
                target=row.target,
                before=row.before,
                after=row.after,
            )
            for row in reversed(rows)
        ]
