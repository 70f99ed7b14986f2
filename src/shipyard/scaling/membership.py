"""Fleet membership: each replica says it is alive, where it answers and how loaded it is.

A heartbeat every `HEARTBEAT_SECONDS` goes to the registry database the fleet shares;
a replica whose last heartbeat is older than `MEMBERSHIP_WINDOW_SECONDS` (three missed
beats) is shown as gone by `GET /api/cluster` and `shipyard cluster`. A replica that stops
on purpose leaves at once; a killed one ages out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shipyard.registry.fleet import FleetRepository

log = logging.getLogger("shipyard.cluster")
HEARTBEAT_SECONDS = 2.0
MEMBERSHIP_WINDOW_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class Member:
    """This replica, as the others see it."""

    id: str
    address: str
    """Where a client or balancer reaches it (scheme, host, port)."""
    version: str
    started_at: datetime


def rate_share(live_replicas: int, http_processes: int) -> float:
    """One process's share of a key's rate limit, so that the fleet holds the rate.

    Error bound: over any interval the fleet admits at most the key's rate plus one burst
    per process (each process's bucket holds max(1, its share of a second's rate)), while
    membership is current; for up to one heartbeat after a replica joins, the others still
    use the larger share (at most N/(N-1) of the rate); after one dies, the rest use the
    smaller share until it ages out (stricter, never looser). A client whose requests the
    balancer spreads unevenly can be held below its rate by the replica it favours."""
    return 1.0 / (max(1, live_replicas) * max(1, http_processes))


async def watch_fleet(fleet: FleetRepository, on_size: Callable[[int], None]) -> None:
    """Tell `on_size` how many replicas are live, every heartbeat, until cancelled."""
    while True:
        try:
            members = await asyncio.to_thread(fleet.members, MEMBERSHIP_WINDOW_SECONDS)
            on_size(sum(1 for m in members if m.live))
        except Exception:
            log.exception("reading the cluster's membership failed")
        await asyncio.sleep(HEARTBEAT_SECONDS)  # a membership cadence, not a sync point


async def heartbeat(fleet: FleetRepository, me: Member, load: Callable[[], dict[str, Any]]) -> None:
    """Beat until cancelled, then leave the membership."""
    try:
        while True:
            try:
                await asyncio.to_thread(
                    fleet.heartbeat, me.id, me.address, me.version, me.started_at, load()
                )
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(HEARTBEAT_SECONDS)  # a heartbeat cadence, not a sync point
    finally:
        try:
            await asyncio.shield(asyncio.to_thread(fleet.leave, me.id))
        except Exception:
            log.exception("leaving the cluster failed")
