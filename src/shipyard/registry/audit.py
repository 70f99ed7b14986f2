"""The audit trail: who changed what, when, from where, before and after.

Events are written in the same transaction as the change they describe, so a
change without its event (or an event without its change) cannot happen. The
acting identity travels in a context variable: the server sets it per request
from the authenticated key, the CLI leaves the local user.

Events nobody changed anything for and that anyone can cause at will (refused
logins) would let a stranger fill the trail: they are counted in memory instead
(`EventTally`) and written off the request path, one event per kind, target,
source and time window, with the count.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.registry import records
from shipyard.registry.changes import bump
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
    bump(session)


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(self, action: str, target: str, **after: Any) -> None:
        """An event with no registry change beside it (e.g. a refused login)."""
        with self._sessions() as session, session.begin():
            record_event(session, action, target, after=after or None)

    def record_all(self, events: list[tuple[Actor, str, str, dict[str, Any]]]) -> None:
        """Events (actor, action, target, after) with no registry change beside them, in
        one transaction."""
        with self._sessions() as session, session.begin():
            for actor, action, target, after in events:
                with acting_as(actor):
                    record_event(session, action, target, after=after)

    def events(self, since: datetime | None = None, limit: int = 100) -> list[records.AuditEvent]:
        """The newest `limit` events at or after `since` (a time without a zone is UTC)."""
        query = sa.select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if since is not None:
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
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


@dataclass(slots=True)
class _Count:
    count: int
    first: float
    last: float


class EventTally:
    """Frequent events counted in memory, written as one event per (action, target,
    source, window) with `after = {"count", "first", "last"}` once the window is over.

    `add` costs a dictionary update and may be called on the event loop; `flush` writes
    and belongs on a background thread. At most `max_groups` groups wait in memory: past
    that, new ones are counted under the target and source `(others)`.
    """

    def __init__(self, log: AuditLog, window_seconds: float = 60.0, max_groups: int = 1000) -> None:
        self._log = log
        self.window_seconds = window_seconds
        self.max_groups = max_groups
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str, str, str], _Count] = {}

    def add(self, action: str, target: str, source: str) -> None:
        now = time.time()
        # Cut to the columns' sizes: a row the database refuses would come back forever.
        key = (int(now // self.window_seconds), action[:100], target[:400], source[:200])
        with self._lock:
            counted = self._counts.get(key)
            if counted is None and len(self._counts) >= self.max_groups:
                key = (key[0], action, "(others)", "(others)")
                counted = self._counts.get(key)
            if counted is None:
                self._counts[key] = _Count(1, now, now)
            else:
                counted.count += 1
                counted.last = now

    def flush(self, everything: bool = False) -> int:
        """Write the groups whose window is over (every group, with `everything`)."""
        current = int(time.time() // self.window_seconds)
        with self._lock:
            due = [k for k in self._counts if everything or k[0] < current]
            groups = [(k, self._counts.pop(k)) for k in due]
        if not groups:
            return 0
        events = [
            (Actor("anonymous", source=source), action, target, {
                "count": counted.count,
                "first": datetime.fromtimestamp(counted.first, UTC).isoformat(),
                "last": datetime.fromtimestamp(counted.last, UTC).isoformat(),
            })
            for (_, action, target, source), counted in groups
        ]  # fmt: skip
        try:
            self._log.record_all(events)
        except Exception:
            with self._lock:  # counted again at the next flush, not lost
                for key, counted in groups:
                    kept = self._counts.setdefault(key, _Count(0, counted.first, counted.last))
                    kept.count += counted.count
            raise
        return len(groups)
