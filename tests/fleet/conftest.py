"""Every fleet test runs behind a real HAProxy: missing, it fails under CI and skips
locally, naming the Debian package."""

from __future__ import annotations

import pytest

from tests.conftest import IN_CI
from tests.fleet.balancer import haproxy_binary


@pytest.fixture(scope="module", autouse=True)
def _haproxy() -> None:
    if haproxy_binary() is None:
        message = "HAProxy not found (Debian package: haproxy)"
        if IN_CI:
            pytest.fail(message + ": CI must run the load-balancer tests")
        pytest.skip(message)
