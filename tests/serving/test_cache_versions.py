"""The result cache with two versions of one model live at once: a split deployment and
an alias that moves. Each version answers from its own entries, never the other's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import SCALE_MODEL
from tests.polling import eventually
from tests.server import running_server

SPLIT = """
name: scale-split
model: scale
routes: [{version: 1, weight: 50}, {version: 2, weight: 50}]
serving: {cache: true}
"""
BY_ALIAS = """
name: scale-live
model: scale
routes: [{alias: live}]
serving: {cache: true}
"""


def _body(x: float) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]}


def _answer(http: httpx.Client, deployment: str, x: float) -> tuple[int, float, str]:
    """(version, answer, cache hit|miss) for one request, the answer checked against the
    version that says it answered: version N multiplies by N."""
    reply = http.post(f"/v2/models/{deployment}/infer", json=_body(x))
    assert reply.status_code == 200, reply.text
    model, version = reply.headers["x-shipyard-model-version"].split(":")
    assert model == "scale"
    (output,) = reply.json()["outputs"]
    (value,) = output["data"]
    assert value == x * int(version), (
        f"version {version} answered {value} for {x}: another version's answer"
    )
    return int(version), value, reply.headers["x-shipyard-cache"]


def test_each_version_answers_from_its_own_cache_entries(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        for version in (1, 2):
            path = tmp_path / f"v{version}" / "scale.py"
            path.parent.mkdir()
            path.write_text(SCALE_MODEL % version)
            aliases = ["live"] if version == 1 else []
            options = RegistrationOptions(name="scale", aliases=aliases)
            assert registry.register(path, options).version == version
        registry.deployments.apply(parse_manifest(SPLIT))
        registry.deployments.apply(parse_manifest(BY_ALIAS))
    finally:
        registry.close()

    with (
        running_server({"SHIPYARD_HOME": str(home)}) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        # A split: the same input, over and over, to both versions.
        seen = Counter((version, cached) for version, _, cached in
                       (_answer(http, "scale-split", 3.0) for _ in range(40)))  # fmt: skip
        # Both versions answered, and each from the cache too: the check above ran on hits.
        assert seen[(1, "hit")] and seen[(2, "hit")], seen

        # An alias move: version 1's answer is cached when the alias moves to version 2.
        assert _answer(http, "scale-live", 5.0) == (1, 5.0, "miss")
        assert _answer(http, "scale-live", 5.0) == (1, 5.0, "hit")
        moved = http.put("/api/models/scale/aliases/live", json={"version": 2})
        assert moved.status_code == 200, moved.text
        eventually(lambda: _answer(http, "scale-live", 5.0)[0] == 2 or None,
                   "the deployment to follow the alias")  # fmt: skip
        assert _answer(http, "scale-live", 5.0) == (2, 10.0, "hit")  # its own entry, now cached
