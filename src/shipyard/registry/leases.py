"""Leases: which replica runs a singleton loop (the rollout controller, the drift
scheduler), and until when. Each loop has its own lease name, so different replicas
may hold different loops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.registry.db import write_session
from shipyard.registry.tables import LeaseRow


class LeaseRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def hold(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew `name` for `holder` unless someone else holds it unexpired.

        The row is locked while deciding (FOR UPDATE on PostgreSQL, the write lock
        on SQLite), and two first-ever takers collide on the primary key: one wins.
        """
        now = datetime.now(UTC)
        try:
            with write_session(self._sessions) as session:
                row = session.get(LeaseRow, name, with_for_update=True)
                if row is not None and row.holder != holder and row.expires_at > now:
                    return False
                expires = now + timedelta(seconds=seconds)
                if row is None:
                    session.add(LeaseRow(name=name, holder=holder, expires_at=expires))
                else:
                    row.holder, row.expires_at = holder, expires
                return True
        except sa.exc.IntegrityError:
            return False  # someone took it first
