"""Rollout gates on the whole fleet's traffic, not only the controller's replica's.

Every server (and every HTTP front process) writes what its requests to each arm did,
about once a second (`report_arms`); the controller, wherever the lease put it, judges a
step on its own live window plus every other replica's reports since the step began
(`fleet_window`). Two approximations, both bounded: a report is stamped when written, so
up to one interval of another replica's traffic from just before the step may count in it;
and a replica reports at most `REPORT_SAMPLES` latencies and predictions per arm per
interval, so past that rate the p95 and the drift test see a sample of its traffic (its
counts are exact).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from shipyard.registry.fleet import ArmReport, FleetRepository
from shipyard.routing.deployments import ArmWindow, DeploymentRouter

log = logging.getLogger("shipyard.rollouts")
REPORT_SECONDS = 1.0


async def report_arms(
    router: DeploymentRouter, fleet: FleetRepository, replica: str, every: float = REPORT_SECONDS
) -> None:
    """Write this process's per-arm traffic to the fleet's table until cancelled."""
    try:
        while True:
            await asyncio.sleep(every)  # a reporting cadence, not a sync point
            await _report(router, fleet, replica)
    finally:
        await asyncio.shield(_report(router, fleet, replica))  # what the last interval saw


async def _report(router: DeploymentRouter, fleet: FleetRepository, replica: str) -> None:
    reports = router.arm_windows.drain()
    if not reports:
        return
    try:
        await asyncio.to_thread(fleet.report, replica, reports)
    except Exception:
        log.exception("reporting arm traffic to the fleet failed")


def fleet_window(local: ArmWindow, others: list[ArmReport]) -> ArmWindow:
    """This replica's window with the other replicas' reports added (a new window)."""
    merged = ArmWindow(
        requests=local.requests,
        errors=local.errors,
        latencies=deque(local.latencies, maxlen=None),
        predictions=deque(local.predictions, maxlen=None),
    )
    merged.agreement.sent = local.agreement.sent
    merged.agreement.agreed = local.agreement.agreed
    merged.agreement.failed = local.agreement.failed
    for report in others:
        merged.add(report)
    return merged
