"""Deployment routing: which version answers a request to a deployment.

Each deployment's live revision is read from the registry at most once a
second (off the hot path, like model names in manager.py). A new revision
goes live only once every version it routes to is loaded and warmed: until
then the previous revision keeps answering, so applying a change under load
fails no request (blue-green by construction).

Choosing an arm: a pinned version (header, checked by the caller's role
upstream) wins; else a sticky key (a header or the first value of an input)
hashes to a fixed point of the weight line, so one caller always gets the same
arm while the weights stay the same; else a weighted random draw.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.registry.manifest import DeploymentManifest
from shipyard.registry.records import DeploymentRevision
from shipyard.serving.manager import ModelManager
from shipyard.serving.types import InferRequest, RequestContext

log = logging.getLogger("shipyard.routing")
REFRESH_SECONDS = 1.0
PIN_HEADER = b"x-shipyard-version"
COMPARE_FRACTION = 0.25
"""Share of a minority arm's requests also sent to the main arm to measure agreement."""


@dataclass(frozen=True, slots=True)
class Arm:
    version: str
    weight: float


@dataclass
class CopyStats:
    """Requests also sent to another version: copies, equal answers, failures, time.

    Kept for shadow traffic (read by /metrics) and for the agreement rollout gate.
    """

    sent: int = 0
    agreed: int = 0
    failed: int = 0
    seconds: float = 0.0


@dataclass
class LiveRevision:
    revision: int
    manifest: DeploymentManifest
    arms: list[Arm]
    shadow_version: str | None
    total_weight: float
    shadow: CopyStats = field(default_factory=CopyStats)

    @property
    def main_version(self) -> str:
        """The heaviest arm: what the deployment mostly serves (stable, in a rollout)."""
        return max(self.arms, key=lambda arm: arm.weight).version

    def choose(self, sticky_key: bytes | None) -> str:
        point = (
            int.from_bytes(hashlib.blake2b(sticky_key, digest_size=8).digest(), "big") / 2**64
            if sticky_key is not None
            else random.random()
        ) * self.total_weight
        for arm in self.arms:
            if point < arm.weight:
                return arm.version
            point -= arm.weight
        return self.arms[-1].version


@dataclass
class RequestHints:
    """What a transport knows about a request beyond its tensors."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    pinned_version: str | None = None
    context: RequestContext | None = None
    """The request's identity and timeline, when the transport keeps one (monitoring)."""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class _Entry:
    checked_at: float
    revision: DeploymentRevision | None
    live: LiveRevision | None = None
    switching_to: int | None = None
    first: asyncio.Future[None] | None = None
    """Set while the first request loads the deployment; the others wait on it."""


class DeploymentRouter:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.registry = manager.registry
        self.entries: dict[str, _Entry] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.windows: dict[tuple[str, str], ArmWindow] = {}
        """(deployment, version) -> what that arm did since the rollout step began."""

    def record(
        self, deployment: str, version: str, seconds: float, outputs: dict[str, np.ndarray] | None
    ) -> None:
        """Count one answer (outputs) or server-side failure (None) for rollout gates."""
        window = self.windows.get((deployment, version))
        if window is None:
            window = self.windows[(deployment, version)] = ArmWindow()
        window.record(seconds, outputs)

    def reset_windows(self, deployment: str) -> None:
        for key in [k for k in self.windows if k[0] == deployment]:
            del self.windows[key]

    def window(self, deployment: str, version: str) -> ArmWindow:
        return self.windows.get((deployment, version)) or ArmWindow()

    def serving_revision(self, deployment: str) -> int | None:
        entry = self.entries.get(deployment)
        return entry.live.revision if entry is not None and entry.live is not None else None

    async def live(self, name: str) -> LiveRevision | None:
        """The deployment's revision now answering, or None if `name` is no deployment."""
        entry = self.entries.get(name)
        if entry is None:
            return await self._first_look(name)
        if entry.first is not None and not entry.first.done():
            await asyncio.shield(entry.first)  # another request is loading it: wait, don't 404
        if time.monotonic() - entry.checked_at >= REFRESH_SECONDS and name not in self._refreshing:
            self._spawn(self._refresh(name, entry))
        return entry.live

    async def _first_look(self, name: str) -> LiveRevision | None:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self.entries[name] = _Entry(time.monotonic(), None, first=first)
        try:
            entry.revision = await asyncio.to_thread(self.registry.deployments.find, name)
            if entry.revision is not None:
                entry.live = await self._activate(entry.revision, entry)
        except BaseException as exc:
            del self.entries[name]  # the next request tries again
            first.set_exception(exc)
            first.exception()  # retrieved: waiters re-raise it
            raise
        first.set_result(None)
        return entry.live

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, name: str, entry: _Entry) -> None:
        self._refreshing.add(name)
        try:
            revision = await asyncio.to_thread(self.registry.deployments.find, name)
            entry.checked_at = time.monotonic()
            entry.revision = revision
            if revision is None:
                entry.live = None
                return
            current = entry.live.revision if entry.live else None
            if revision.revision != current and revision.revision != entry.switching_to:
                entry.switching_to = revision.revision
                self._spawn(self._switch(revision, entry))
        except Exception:
            log.exception("refreshing deployment %s failed", name)
        finally:
            self._refreshing.discard(name)

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
        manifest = DeploymentManifest.model_validate(revision.manifest)
        if manifest.serving is not None:
            self.manager.serving_overrides[manifest.model] = manifest.serving
        arms = []
        for route in manifest.routes:
            record = await self.manager.resolve(manifest.model, route.target)
            arms.append(Arm(str(record.version), route.weight))
        shadow_version = None
        if manifest.shadow is not None:
            record = await self.manager.resolve(manifest.model, manifest.shadow.target)
            shadow_version = str(record.version)
        for version in {arm.version for arm in arms if arm.weight > 0} | (
            {shadow_version} if shadow_version else set()
        ):
            await self.manager.load(manifest.model, version)
        return LiveRevision(
            revision=revision.revision,
            manifest=manifest,
            arms=[a for a in arms if a.weight > 0],
            shadow_version=shadow_version,
            total_weight=sum(a.weight for a in arms),
        )

    def sample_rate(self, name: str | None, direct_rate: float = 0.0) -> float:
        """Share of a deployment's requests for the prediction log (its manifest's
        monitoring.sample); `direct_rate` for calls that name a model, not a deployment."""
        if name is None:
            return direct_rate
        entry = self.entries.get(name)
        if entry is None or entry.live is None:
            return 0.0
        return entry.live.manifest.watch.sample

    @staticmethod
    def sticky_key(
        live: LiveRevision, request: InferRequest, hints: RequestHints | None
    ) -> bytes | None:
        sticky = live.manifest.sticky
        if sticky is None:
            return None
        if sticky.header is not None:
            if hints is None:
                return None
            return hints.header(sticky.header.lower().encode())
        for tensor in request.inputs:
            if tensor.name == sticky.input and tensor.data.size:
                first = tensor.data.reshape(-1)[0]
                return first if isinstance(first, bytes) else str(first).encode()
        return None

    def compare(
        self, deployment: str, live: LiveRevision, answered_by: str, run: Any,
        outputs: dict[str, np.ndarray],
    ) -> None:  # fmt: skip
        """While a deployment splits traffic, copy a sample of the other arms' requests to
        its main (heaviest) arm and count agreement; never awaited. Rollout gates read it."""
        if len(live.arms) < 2 or random.random() >= COMPARE_FRACTION:
            return
        main = live.main_version
        if answered_by == main:
            return
        window = self.windows.get((deployment, answered_by))
        if window is not None:
            self._spawn(_copy(window.agreement, run, main, outputs))

    def shadow(
        self,
        live: LiveRevision,
        run: Any,
        live_outputs: dict[str, np.ndarray],
    ) -> None:
        """Send a copy to the shadow version if this request is sampled; never awaited."""
        manifest = live.manifest
        if live.shadow_version is None or manifest.shadow is None:
            return
        if random.random() >= manifest.shadow.fraction:
            return
        self._spawn(_copy(live.shadow, run, live.shadow_version, live_outputs))


async def _copy(
    stats: CopyStats, run: Any, version: str, live_outputs: dict[str, np.ndarray]
) -> None:
    """Answer the same request with `version` and count whether it agreed."""
    stats.sent += 1
    started = time.perf_counter()
    try:
        outputs: dict[str, np.ndarray] = await run(version)
    except Exception as exc:
        stats.failed += 1
        log.info("copy of a request to version %s failed: %s", version, exc)
        return
    finally:
        stats.seconds += time.perf_counter() - started
    stats.agreed += _agree(live_outputs, outputs)


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

    def record(self, seconds: float, outputs: dict[str, np.ndarray] | None) -> None:
        self.requests += 1
        if outputs is None:
            self.errors += 1
            return
        self.latencies.append(seconds)
        first = next(iter(outputs.values()), None)
        if first is not None and first.dtype.kind in "biuf" and first.size:
            self.predictions.extend(first.reshape(-1)[:64].astype(float).tolist())
