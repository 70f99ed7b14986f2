"""The registry's change counter: has anything changed since a server last looked?

Every audited change bumps one row's sequence in the change's own transaction
(record_event calls `bump`). A server keeps what it read from the registry (what a
model name serves, a deployment's live revision) with the sequence it read first,
and reads a name again only once the sequence moved: one single-row query per poll
for the whole process instead of one query per name. The database, not memory, says
when to look again, so replicas and HTTP front processes sharing it see each other's
changes.
"""

from __future__ import annotations

import math
import threading
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.registry.tables import ChangeRow

_ROW = ChangeRow.id == 1
"""The counter's one row (inserted by migration 0007)."""


def bump(session: Session) -> None:
    """Count a change, in the transaction making it. On PostgreSQL the row lock this
    takes orders the bumps, so a sequence read never counts a change still uncommitted."""
    session.execute(sa.update(ChangeRow).where(_ROW).values(sequence=ChangeRow.sequence + 1))


class ChangeCounter:
    """Reads the change sequence, at most once per `max_age` for all its callers together."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._sequence = 0
        self._read_at = -math.inf

    def cached(self, max_age: float) -> int | None:
        """The sequence if it was read under `max_age` seconds ago (no query), else None."""
        if time.monotonic() - self._read_at < max_age:
            return self._sequence
        return None

    def current(self, max_age: float = 0.0) -> int:
        """The sequence as read under `max_age` seconds ago, querying only if it was not;
        concurrent callers share one query. Blocking: call it from a thread."""
        sequence = self.cached(max_age)
        if sequence is not None:
            return sequence
        with self._lock:
            sequence = self.cached(max_age)  # read by another caller while this one waited
            if sequence is not None:
                return sequence
            started = time.monotonic()  # the read's age counts from before the query
            with self._sessions() as session:
                sequence = session.scalar(sa.select(ChangeRow.sequence).where(_ROW)) or 0
            self._sequence, self._read_at = sequence, started
            return sequence
