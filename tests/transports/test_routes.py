"""The route table: what the gate and the inference fast path match requests against."""

from __future__ import annotations

import pytest

from shipyard.security.policy import Permission
from shipyard.transports.rest import INFERENCE
from shipyard.transports.routes import ROUTES, RouteTable

P = Permission


@pytest.mark.parametrize(
    ("method", "path", "template", "params"),
    [
        ("POST", "/v2/models/iris/infer", "/v2/models/{name}/infer", {"name": "iris"}),
        ("POST", "/v2/models/iris/versions/3/infer", "/v2/models/{name}/versions/{version}/infer",
         {"name": "iris", "version": "3"}),
        ("POST", "/invocations", "/invocations", {}),
        ("POST", "/deployments/iris-api/invocations", "/deployments/{deployment}/invocations",
         {"deployment": "iris-api"}),
        ("GET", "/v2/models/iris", "/v2/models/{name}", {"name": "iris"}),
        ("HEAD", "/v2/health/ready", "/v2/health/ready", {}),
        ("GET", "/api/models/iris/versions", "/api/models/{name}/versions", {"name": "iris"}),
        ("POST", "/api/keys/abc/revoke", "/api/keys/{key_id}/revoke", {"key_id": "abc"}),
    ],
)  # fmt: skip
def test_paths_match_their_template_and_parameters(
    method: str, path: str, template: str, params: dict[str, str]
) -> None:
    found = ROUTES.match(method, path)
    assert found is not None
    assert (found.template, found.params) == (template, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models//infer"),  # an empty name is no name
        ("POST", "/v2/models/iris/infer/"),
        ("GET", "/v2/models/iris/infer"),  # wrong method
        ("POST", "/v2/models/iris/versions/infer"),
        ("GET", "/nowhere"),
        ("DELETE", "/api/models/iris"),
    ],
)
def test_other_paths_match_nothing(method: str, path: str) -> None:
    assert ROUTES.match(method, path) is None


def test_a_literal_segment_wins_over_a_parameter() -> None:
    table = RouteTable({("GET", "/a/{x}"): P.READ, ("GET", "/a/b"): P.PUBLIC})
    exact = table.match("GET", "/a/b")
    assert exact is not None and (exact.template, exact.permission) == ("/a/b", P.PUBLIC)
    other = table.match("GET", "/a/c")
    assert other is not None and (other.template, other.params) == ("/a/{x}", {"x": "c"})


def test_the_fast_path_serves_exactly_the_inference_posts_and_they_need_infer() -> None:
    # Written by hand: the four inference endpoints of the V2 and MLflow protocols.
    assert set(INFERENCE) == {
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/invocations",
        "/deployments/{deployment}/invocations",
    }
    for template in INFERENCE:
        found = ROUTES.match("POST", template.format(name="m", version="1", deployment="d"))
        assert found is not None and found.permission is P.INFER
