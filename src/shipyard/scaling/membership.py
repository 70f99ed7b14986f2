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
