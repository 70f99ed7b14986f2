"""What the control-plane routes work on, handed to them as one typed record."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from shipyard.config import DEFAULT_UNPACK, UnpackLimits
from shipyard.monitoring.cost import CostMeter
from shipyard.monitoring.service import MonitoringService
from shipyard.promotion.jobs import PromotionJobs
from shipyard.promotion.service import PromotionService
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from shipyard.serving.manager import ModelManager


@dataclass
class ControlPlane:
    registry: Registry
    trust: Registry
    """The registry whose API keys and audit trail guard this server (`registry` itself,
    except for `shipyard serve FILE`, which serves a scratch registry)."""
    keys: KeyStore
    monitoring: MonitoringService
    cost: CostMeter | None = None
    """Cost per 1,000 predictions, when a replica-hour price is configured."""
    unpack: UnpackLimits = DEFAULT_UNPACK
    """How much an uploaded model folder may unpack to."""
    serving: ModelManager | None = None
    """The data plane's loaded versions (scaling, serving state); None in a control plane
    built without one."""

    _jobs: PromotionJobs | None = field(default=None, repr=False)

    @property
    def jobs(self) -> PromotionJobs:
        """Evaluations, replays and promotions run in the background (made on first use)."""
        if self._jobs is None:
            service = PromotionService(self.registry, self.monitoring.store)
            self._jobs = PromotionJobs(service)
        return self._jobs

    @classmethod
    def over(cls, registry: Registry, trust: Registry | None = None) -> ControlPlane:
        trust = trust or registry
        return cls(registry, trust, KeyStore(trust.sessions), MonitoringService(registry))


def control_plane(request: Request) -> ControlPlane:
    """The one way a route reaches the components (set by api.app.create_app)."""
    plane: ControlPlane = request.app.state.control_plane
    return plane
