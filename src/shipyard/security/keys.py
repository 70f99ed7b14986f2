"""API keys: created once, stored as a salted scrypt hash, revocable, expiring.

A key reads `sy_<id>_<secret>`. The id is public (it names the key in lists,
logs and the audit trail); only scrypt(secret, salt) is stored. scrypt is slow
on purpose, so verifying on every request would cost the hot path far more
than the model: a token is checked once and remembered by a fast digest of the
whole token, and each use is checked against the key table held in memory and
re-read every `REFRESH_SECONDS`, so a revocation or expiry takes effect within
that time. Wrong tokens are remembered too, so guessing costs one scrypt each.
`recall` is the cheap half (memory only) that runs on the event loop; `verify` may
run scrypt, so servers call it off the loop (security/gate.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shipyard.errors import InvalidInput, NotFound
from shipyard.registry import records
from shipyard.registry.audit import record_event
from shipyard.registry.tables import ApiKeyRow

log = logging.getLogger("shipyard.security")
ROLES = ("viewer", "predictor", "deployer", "admin")
PREFIX = "sy"
REFRESH_SECONDS = 2.0
_REMEMBERED = 10_000  # verified and refused token digests kept in memory
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
LOCKED_OUT = (
    "no active admin key is left, so nobody can manage keys over the API; to get back in, "
    "run `shipyard keys create --role admin` where the registry database is (the same "
    "SHIPYARD_HOME or SHIPYARD_DATABASE_URL as the server)"
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: str
    key_id: str | None = None
    models: frozenset[str] | None = None
    """Models this caller may call for inference; None: any."""
    rate_per_second: float | None = None


def _hash(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **_SCRYPT).hex()


def _principal(row: ApiKeyRow) -> Principal:
    return Principal(
        name=f"key:{row.id}" + (f" ({row.name})" if row.name else ""),
        role=row.role,
        key_id=row.id,
        models=frozenset(row.models) if row.models else None,
        rate_per_second=row.rate_per_second,
    )


def _record(row: ApiKeyRow) -> records.ApiKey:
    return records.ApiKey(
        id=row.id,
        name=row.name,
        role=row.role,
        models=row.models,
        rate_per_second=row.rate_per_second,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class KeyStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self._rows: dict[str, ApiKeyRow] = {}
        self._loaded = False
        self._verified: dict[bytes, Principal] = {}
        self._used: set[str] = set()
        self._refused: set[bytes] = set()
        self._any_active = False
        self._live_until: datetime | None = None
        self._admin_until: datetime | None = None
        """While this is ahead (max: some admin key never expires), an admin key is active."""
        self._had_admin = False
        """Whether the last refresh saw an active admin key."""

    # ---- managing keys ----------------------------------------------------

    def create(
        self,
        role: str,
        created_by: str,
        name: str = "",
        models: list[str] | None = None,
        expires_in: timedelta | None = None,
        rate_per_second: float | None = None,
    ) -> tuple[str, records.ApiKey]:
        """A new key: the token (shown once, never stored) and its record."""
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if rate_per_second is not None and rate_per_second <= 0:
            raise InvalidInput("rate must be a positive number of requests per second")
        key_id, secret, salt = (
            secrets.token_hex(6),
            secrets.token_urlsafe(32),
            secrets.token_hex(16),
        )
        row = ApiKeyRow(
            id=key_id,
            name=name,
            role=role,
            models=sorted(models) if models else None,
            salt=salt,
            secret_hash=_hash(secret, salt),
            rate_per_second=rate_per_second,
            created_by=created_by,
            expires_at=datetime.now(UTC) + expires_in if expires_in else None,
        )
        with self._sessions() as session, session.begin():
            session.add(row)
            session.flush()
            record = _record(row)
            after = record.model_dump(mode="json", include={"role", "models", "expires_at"})
            record_event(session, "key.create", key_id, after=after)
        self.refresh()
        return f"{PREFIX}_{key_id}_{secret}", record

    def revoke(self, key_id: str) -> records.ApiKey:
        with self._sessions() as session, session.begin():
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
                record_event(session, "key.revoke", key_id, before={"role": row.role})
            record = _record(row)
        self.refresh()
        return record

    def list(self) -> list[records.ApiKey]:
        self.flush_last_used()
        with self._sessions() as session:
            rows = session.scalars(sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
        return [_record(r) for r in rows]

    def any_active(self) -> bool:
        """Whether any key could authenticate now (from the in-memory table)."""
        self._table()
        return self._any_active and (
            self._live_until is None or self._live_until > datetime.now(UTC)
        )

    def lockout_warning(self) -> str | None:
        """What to do when no admin key could authenticate any more; None while one can."""
        self._table()
        return None if self._admin_active() else LOCKED_OUT

    def _admin_active(self) -> bool:
        return self._admin_until is not None and self._admin_until > datetime.now(UTC)

    # ---- checking keys ----------------------------------------------------

    def _table(self) -> dict[str, ApiKeyRow]:
        """The key table from memory; read from the database only the first time.

        A server calls refresh() every REFRESH_SECONDS from a background thread,
        so a request never waits on the database (see server.py).
        """
        if not self._loaded:
            self.refresh()
        return self._rows

    def refresh(self) -> None:
        """Re-read the key table (revocations, expiries, new keys)."""
        with self._lock, self._sessions() as session:
            rows = session.scalars(sa.select(ApiKeyRow)).all()
            session.expunge_all()
            self._rows = {r.id: r for r in rows}
            live = [r for r in rows if r.revoked_at is None]
            self._any_active = bool(live)
            # While the last live key's expiry is ahead, some key is active.
            expiries = [r.expires_at for r in live]
            self._live_until = (
                None if not live or None in expiries else max(e for e in expiries if e)
            )
            admins = [r.expires_at or datetime.max.replace(tzinfo=UTC) for r in live
                      if r.role == "admin"]  # fmt: skip
            self._admin_until = max(admins, default=None)
            had_admin, self._had_admin = self._had_admin, self._admin_active()
            if had_admin and not self._had_admin:
                # Revoked here or elsewhere, or expired: say it where the operator looks.
                log.warning(LOCKED_OUT)
            self._loaded = True

    def recall(self, token: str) -> Principal | None:
        """The principal of a token verified before and still live, from memory only; None
        when the token was never verified, or its key is revoked or expired since."""
        digest = hashlib.sha256(token.encode()).digest()
        principal = self._verified.get(digest)
        if principal is None:
            return None
        row = self._table().get(principal.key_id or "")
        now = datetime.now(UTC)
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
            # Revocation and expiry are for good: refuse this token cheaply from now on.
            self._verified.pop(digest, None)
            self._refused.add(digest)
            return None
        self._used.add(row.id)
        return principal

    def active(self, key_id: str) -> Principal | None:
        """The principal of a key that is neither revoked nor expired, by its id (from
        memory): what a console session made from that key still stands for."""
        row = self._table().get(key_id)
        now = datetime.now(UTC)
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
            return None
        self._used.add(row.id)
        return _principal(row)

    def known_id(self, token: str) -> str | None:
        """The id of the key this token names, if it has a key's shape and the key exists."""
        parts = token.split("_", 2)
        if len(parts) == 3 and parts[0] == PREFIX and parts[1] in self._table():
            return parts[1]
        return None

    def refused_before(self, token: str) -> bool:
        """Whether this token was refused before (a wrong secret, a revoked or expired key)."""
        return hashlib.sha256(token.encode()).digest() in self._refused

    def costly(self, token: str) -> bool:
        """Whether `verify` would run scrypt for this token (else it answers from memory)."""
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._verified or digest in self._refused:
            return False
        return self.known_id(token) is not None

    def verify(self, token: str) -> Principal | None:
        """The key's principal, or None for an unknown, wrong, revoked or expired key.

        May cost one scrypt (see `costly`): servers call it off the event loop. Safe to
        call from several threads: the memory it keeps is only added to or cleared.
        """
        principal = self.recall(token)
        if principal is not None:
            return principal
        digest = hashlib.sha256(token.encode()).digest()
        if digest in self._refused:
            return None
        rows = self._table()
        principal = self._check(token, rows)
        if len(self._verified) >= _REMEMBERED or len(self._refused) >= _REMEMBERED:
            self._verified.clear()
            self._refused.clear()
        if principal is None:
            if self.known_id(token) is not None:
                # A known key with a wrong secret costs one scrypt, not one per try. An
                # unknown id costs nothing, and may be a key made since the last refresh.
                self._refused.add(digest)
            return None
        self._verified[digest] = principal
        return self.recall(token)

    @staticmethod
    def _check(token: str, rows: dict[str, ApiKeyRow]) -> Principal | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        row = rows.get(parts[1])
        if row is None:
            return None
        if not hmac.compare_digest(_hash(parts[2], row.salt), row.secret_hash):
            return None
        return _principal(row)

    def flush_last_used(self) -> None:
        """Write the keys used since the last flush (one UPDATE, off the hot path)."""
        used, self._used = self._used, set()
        if not used:
            return
        with self._sessions() as session, session.begin():
            session.execute(
                sa.update(ApiKeyRow)
                .where(ApiKeyRow.id.in_(used))
                .values(last_used_at=datetime.now(UTC))
            )
