"""Deployment routing: which version answers a request to a deployment.

Each deployment's live revision is read from the registry at most once a
second (off the hot path, like model names in manager.py), and only when the
registry's change sequence moved since the last read (registry/changes.py), so a
name that is no deployment costs no query per second. A new revision
goes live only once every version it routes to is loaded and warmed: until
then the previous revision keeps answering, so applying a change under load
fails no request (blue-green by construction). The choice of arm itself is
pure and lives in arms.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.config import DEFAULT_DIRECT_SAMPLE
from shipyard.errors import NotFound
from shipyard.registry.fleet import ArmReport
from shipyard.registry.manifest import DeploymentManifest, Target
from shipyard.registry.records import DeploymentRevision, ModelVersion
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.routing.arms import Arm, choose, main_index, sticky_key, sticky_point
from shipyard.runtimes.base import Tensors
from shipyard.serving.types import (
    DeploymentSnapshot,
    InferRequest,
    Predictor,
    RequestHints,
    VersionSource,
)

log = logging.getLogger("shipyard.routing")
REFRESH_SECONDS = 1.0
CHANGES_MAX_AGE = REFRESH_SECONDS / 2
"""How old a read of the registry's change sequence may be when a stale entry is checked."""
COMPARE_FRACTION = 0.25
"""Share of a minority arm's requests also sent to the main arm to measure agreement."""

Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class CopyStats:
    """Requests also sent to another version: copies, equal answers, failures, time.

    Kept for shadow traffic (read by /metrics) and for the agreement rollout gate.
    """

    sent: int = 0
    agreed: int = 0
    failed: int = 0
    seconds: float = 0.0


REPORT_SAMPLES = 500
"""Latencies (and predictions) one replica reports per arm per interval; beyond, the
first ones stand for the rest (their count is reported with them)."""


class ArmWindows:
    """What each arm of each deployment did since its rollout step began (gates read it),
    and since the last report to the fleet (`drain`)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], ArmWindow] = {}
        self.unreported: dict[tuple[str, str], ArmReport] = {}

    def record(
        self, deployment: str, version: str, seconds: float, outputs: Tensors | None
    ) -> None:
        window = self.windows.get((deployment, version))
        if window is None:
            window = self.windows[(deployment, version)] = ArmWindow()
        window.record(seconds, outputs)
        report = self.unreported.get((deployment, version))
        if report is None:
            report = self.unreported[(deployment, version)] = ArmReport(deployment, version)
        report.requests += 1
        if outputs is None:
            report.errors += 1
            return
        report.latency_count += 1
        if len(report.latencies) < REPORT_SAMPLES:
            report.latencies.append(seconds)
        values = _prediction_values(outputs)
        report.prediction_count += len(values)
        room = REPORT_SAMPLES - len(report.predictions)
        if room > 0:
            report.predictions.extend(values[:room])

    def drain(self) -> list[ArmReport]:
        """What happened since the last drain, per arm (agreement counts included)."""
        reports, self.unreported = self.unreported, {}
        for key, window in self.windows.items():
            copies = window.agreement
            sent, agreed, failed = window.reported_copies
            if (copies.sent, copies.agreed, copies.failed) == (sent, agreed, failed):
                continue
            report = reports.get(key) or reports.setdefault(key, ArmReport(*key))
            report.copies_sent = copies.sent - sent
            report.copies_agreed = copies.agreed - agreed
            report.copies_failed = copies.failed - failed
            window.reported_copies = (copies.sent, copies.agreed, copies.failed)
        return list(reports.values())

    def reset(self, deployment: str) -> None:
        for key in [k for k in self.windows if k[0] == deployment]:
            del self.windows[key]

    def get(self, deployment: str, version: str) -> ArmWindow:
        return self.windows.get((deployment, version)) or ArmWindow()


@dataclass
class LiveRevision:
    """A revision now answering: its arms resolved to version records, loaded and warm."""

    name: str
    revision: int
    manifest: DeploymentManifest
    arms: list[Arm]
    """Routes with weight, resolved to version numbers, in route order."""
    records: list[ModelVersion]
    """The arms' version records, in the same order."""
    shadow_record: ModelVersion | None
    windows: ArmWindows
    spawn: Spawn
    shadow: CopyStats = field(default_factory=CopyStats)
    main: ModelVersion = field(init=False)

    def __post_init__(self) -> None:
        self.main = self.records[main_index(self.arms)]

    @property
    def main_version(self) -> str:
        return str(self.main.version)

    @property
    def shadow_version(self) -> str | None:
        return str(self.shadow_record.version) if self.shadow_record is not None else None

    def choose(self, request: InferRequest, hints: RequestHints) -> ModelVersion:
        key = sticky_key(self.manifest.sticky, request, hints.metadata)
        point = sticky_point(key) if key is not None else random.random()
        return self.records[choose(self.arms, point)]

    def observe(
        self, chosen: ModelVersion, seconds: float, outputs: Tensors | None, copy: Predictor
    ) -> None:
        self.windows.record(self.name, str(chosen.version), seconds, outputs)
        if outputs is None:
            return
        shadow = self.manifest.shadow
        if (
            self.shadow_record is not None
            and shadow is not None
            and random.random() < shadow.fraction
        ):
            self.spawn(_copy(self.shadow, copy, self.shadow_record, outputs))
        if len(self.arms) < 2 or random.random() >= COMPARE_FRACTION:
            return
        if chosen.version != self.main.version:
            # A minority arm's answer, checked against the main arm's: the agreement gate.
            window = self.windows.get(self.name, str(chosen.version))
            self.spawn(_copy(window.agreement, copy, self.main, outputs))


@dataclass
class _Entry:
    checked_at: float
    revision: DeploymentRevision | None
    sequence: int | None = None
    """The registry's change sequence read just before `revision` (None: not yet read)."""
    live: LiveRevision | None = None
    switching_to: int | None = None
    first: asyncio.Future[None] | None = None
    """Set while the first request loads the deployment; the others wait on it."""

    @property
    def settled(self) -> bool:
        """Serving what the registry said (or, for no deployment, nothing): while the
        registry is unchanged there is nothing to read again, nor a switch to retry."""
        wanted = self.revision.revision if self.revision is not None else None
        return (self.live.revision if self.live is not None else None) == wanted


class DeploymentRouter:
    """Keeps each deployment's live revision; implements serving.types.Router."""

    def __init__(self, manager: VersionSource, registry: Registry) -> None:
        self.manager = manager
        self.registry = registry
        self.entries: dict[str, _Entry] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.arm_windows = ArmWindows()

    def reset_windows(self, deployment: str) -> None:
        self.arm_windows.reset(deployment)

    def window(self, deployment: str, version: str) -> ArmWindow:
        return self.arm_windows.get(deployment, version)

    def serving_revision(self, deployment: str) -> int | None:
        entry = self.entries.get(deployment)
        return entry.live.revision if entry is not None and entry.live is not None else None

    async def route(self, name: str) -> LiveRevision | None:
        """The deployment's revision now answering, or None if `name` is no deployment."""
        entry = self.entries.get(name)
        if entry is None:
            return await self._first_look(name)
        if entry.first is not None and not entry.first.done():
            await asyncio.shield(entry.first)  # another request is loading it: wait, don't 404
        now = time.monotonic()
        if now - entry.checked_at >= REFRESH_SECONDS and name not in self._refreshing:
            sequence = self.registry.changes.cached(CHANGES_MAX_AGE)
            if entry.settled and sequence is not None and sequence == entry.sequence:
                entry.checked_at = now  # nothing changed: no thread, no query
            else:
                self._spawn(self._refresh(name, entry))
        return entry.live

    def _look(self, name: str, entry: _Entry) -> tuple[int, DeploymentRevision | None]:
        """The change sequence, then the live revision (the entry's own if the sequence
        has not moved since it was read and the entry is settled). Blocking."""
        sequence = self.registry.changes.current(CHANGES_MAX_AGE)
        if entry.settled and sequence == entry.sequence:
            return sequence, entry.revision
        return sequence, self.registry.deployments.find(name)

    async def _first_look(self, name: str) -> LiveRevision | None:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self.entries[name] = _Entry(time.monotonic(), None, first=first)
        try:
            entry.sequence, entry.revision = await asyncio.to_thread(self._look, name, entry)
            if entry.revision is not None:
                entry.live = await self._activate(entry.revision, entry)
        except BaseException as exc:
            del self.entries[name]  # the next request tries again
            first.set_exception(exc)
            first.exception()  # retrieved: waiters re-raise it
            raise
        first.set_result(None)
        return entry.live

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, name: str, entry: _Entry) -> None:
        self._refreshing.add(name)
        try:
            sequence, revision = await asyncio.to_thread(self._look, name, entry)
            entry.checked_at = time.monotonic()
            entry.sequence, entry.revision = sequence, revision
            if revision is None:
                entry.live = None
                return
            current = entry.live.revision if entry.live else None
            moved = revision.revision == current and await self._aliases_moved(entry)
            if (revision.revision != current or moved) and revision.revision != entry.switching_to:
                entry.switching_to = revision.revision
                self._spawn(self._switch(revision, entry))
        except Exception:
            log.exception("refreshing deployment %s failed", name)
        finally:
            self._refreshing.discard(name)

    async def _aliases_moved(self, entry: _Entry) -> bool:
        """Whether an alias the live revision routes (or shadows) by now names another
        version: the deployment follows it as it would a new revision (a promotion or a
        guardrail moves an alias, not the manifest). Only asked when the registry changed."""
        live = entry.live
        if live is None or not _aliased(live.manifest):
            return False
        now = await asyncio.to_thread(self._alias_versions, live.manifest)
        routes = [route for route in live.manifest.routes if route.weight > 0]
        pairs: list[tuple[Target, int]] = [
            (route, record.version) for route, record in zip(routes, live.records, strict=True)
        ]
        shadow = live.manifest.shadow
        if shadow is not None and live.shadow_record is not None:
            pairs.append((shadow, live.shadow_record.version))
        # An alias deleted meanwhile is no move: the deployment keeps what it serves.
        return any(t.alias in now and now[t.alias] != version for t, version in pairs)

    def _alias_versions(self, manifest: DeploymentManifest) -> dict[str, int]:
        """What each alias of the manifest names now, read from the registry (not the
        manager's resolution cache, which may answer a second late). Blocking."""
        targets = [*manifest.routes, *([manifest.shadow] if manifest.shadow else [])]
        aliases = {t.alias for t in targets if t.alias is not None}
        versions = {}
        for alias in sorted(aliases):
            try:
                ref = ModelRef(manifest.model, alias=alias)
                versions[alias] = self.registry.models.get_version(ref).version
            except NotFound:
                continue  # resolving it says so, where it matters
        return versions

    async def _switch(self, revision: DeploymentRevision, entry: _Entry) -> None:
        try:
            live = await self._activate(revision, entry)
        except Exception as exc:
            log.error("revision %d of %s cannot go live: %s", revision.revision,
                      revision.deployment, exc)  # fmt: skip
            entry.switching_to = None
            return
        if entry.switching_to == revision.revision:
            entry.live, entry.switching_to = live, None
            log.info("deployment %s now serves revision %d", revision.deployment, live.revision)

    async def _activate(self, revision: DeploymentRevision, entry: _Entry) -> LiveRevision:
        """Resolve the revision's routes to versions and load every one before it serves."""
        manifest = revision.manifest
        self.manager.override_serving(manifest.model, manifest.serving_options)
        # Aliases resolve fresh: a revision applied right after an alias moved (a
        # promoted rollout routes by its alias again) must serve the version it names now.
        pinned = await asyncio.to_thread(self._alias_versions, manifest)

        def target(route: Target) -> str:
            version = pinned.get(route.alias) if route.alias is not None else None
            return str(version) if version is not None else route.target

        arms, records = [], []
        for route in manifest.routes:
            if route.weight <= 0:
                continue
            record = await self.manager.resolve(manifest.model, target(route))
            arms.append(Arm(str(record.version), route.weight))
            records.append(record)
        shadow_record = None
        if manifest.shadow is not None:
            shadow_record = await self.manager.resolve(manifest.model, target(manifest.shadow))
        shadowed = [shadow_record] if shadow_record is not None else []
        for version in dict.fromkeys(str(r.version) for r in [*records, *shadowed]):
            await self.manager.load(manifest.model, version)
        return LiveRevision(
            name=revision.deployment,
            revision=revision.revision,
            manifest=manifest,
            arms=arms,
            records=records,
            shadow_record=shadow_record,
            windows=self.arm_windows,
            spawn=self._spawn,
        )

    def sample_rate(self, name: str | None, direct_rate: float = DEFAULT_DIRECT_SAMPLE) -> float:
        """Share of a deployment's requests for the prediction log (its manifest's
        monitoring.sample); `direct_rate` for calls that name a model, not a deployment."""
        if name is None:
            return direct_rate
        entry = self.entries.get(name)
        if entry is None or entry.live is None:
            return 0.0
        return entry.live.manifest.watch.sample

    def snapshot(self) -> list[DeploymentSnapshot]:
        """The revision each live deployment serves and its shadow counters, for monitoring."""
        snapshots = []
        for name, entry in list(self.entries.items()):
            live = entry.live
            if live is not None:
                shadow = live.shadow
                snapshots.append(
                    DeploymentSnapshot(
                        deployment=name,
                        revision=live.revision,
                        shadow_sent=shadow.sent,
                        shadow_agreed=shadow.agreed,
                        shadow_failed=shadow.failed,
                        shadow_seconds=shadow.seconds,
                    )
                )
        return snapshots


async def _copy(
    stats: CopyStats, copy: Predictor, version: ModelVersion, live_outputs: Tensors
) -> None:
    """Answer the same request with `version` and count whether it agreed."""
    stats.sent += 1
    started = time.perf_counter()
    try:
        outputs = await copy(version)
    except Exception as exc:
        stats.failed += 1
        log.info("copy of a request to version %s failed: %s", version.version, exc)
        return
    finally:
        stats.seconds += time.perf_counter() - started
    stats.agreed += _agree(live_outputs, outputs)


def _aliased(manifest: DeploymentManifest) -> bool:
    targets = [*manifest.routes, *([manifest.shadow] if manifest.shadow else [])]
    return any(t.alias is not None for t in targets)


def _agree(live: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> bool:
    """Same outputs: exactly for labels and integers, within float tolerance otherwise."""
    if live.keys() != shadow.keys():
        return False
    for name, array in live.items():
        other = shadow[name]
        if array.shape != other.shape:
            return False
        if array.dtype.kind in "fc" or other.dtype.kind in "fc":
            if not np.allclose(array, other, rtol=1e-5, atol=1e-8, equal_nan=True):
                return False
        elif not np.array_equal(array, other):
            return False
    return True


@dataclass
class ArmWindow:
    """What one version of a deployment did since the window was last reset."""

    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    predictions: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    agreement: CopyStats = field(default_factory=CopyStats)
    """This arm's requests also answered by the deployment's main arm."""
    reported_copies: tuple[int, int, int] = (0, 0, 0)
    """`agreement` (sent, agreed, failed) as last reported to the fleet."""

    def record(self, seconds: float, outputs: dict[str, np.ndarray] | None) -> None:
        self.requests += 1
        if outputs is None:
            self.errors += 1
            return
        self.latencies.append(seconds)
        self.predictions.extend(_prediction_values(outputs))

    def add(self, report: ArmReport) -> None:
        """Count another replica's report into this window (a fleet-wide view)."""
        self.requests += report.requests
        self.errors += report.errors
        self.latencies.extend(report.latencies)
        self.predictions.extend(report.predictions)
        self.agreement.sent += report.copies_sent
        self.agreement.agreed += report.copies_agreed
        self.agreement.failed += report.copies_failed


def _prediction_values(outputs: dict[str, np.ndarray]) -> list[float]:
    """The first output's first 64 values: what the prediction-drift gate compares."""
    first = next(iter(outputs.values()), None)
    if first is not None and first.dtype.kind in "biuf" and first.size:
        values: list[float] = first.reshape(-1)[:64].astype(float).tolist()
        return values
    return []
