"""Accessibility of the console's main pages: axe-core (vendored from its npm package,
tests/ui/vendor) injected into each page finds no serious or critical violation; and the
pages fit a narrow window without scrolling sideways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.ui.conftest import AXE, DEPLOYMENT, DESKTOP, TIMEOUT_MS, Console, sign_in

BLOCKING = ("serious", "critical")
PAGES = {  # what each role sees: the pages that exist for it
    "deployer": ["/ui", "/ui/models/fraud", f"/ui/deployments/{DEPLOYMENT}",
                 f"/ui/deployments/{DEPLOYMENT}/rollout", f"/ui/monitoring/{DEPLOYMENT}",
                 "/ui/jobs", "/ui/predictions"],
    "admin": ["/ui/keys", "/ui/audit"],
}  # fmt: skip
NARROW = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def rolling(console: Console) -> Console:
    """A rollout held at its first step (long bake), so its page shows gates and buttons."""
    headers = {"authorization": f"Bearer {console.token('deployer')}"}
    started = httpx.post(
        f"{console.url}/api/deployments/{DEPLOYMENT}/rollout",
        json={"to": 2, "steps": [50, 100], "bake_seconds": 3600, "min_requests": 10},
        headers=headers,
        timeout=30,
    )
    assert started.status_code == 201, started.text
    return console


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    # axe is injected as a script, which the console's CSP (script-src 'self') refuses:
    # this context alone bypasses the CSP; test_console.py runs under it.
    opened = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    opened.close()


def _violations(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v["impact"] in BLOCKING]


def _describe(path: str, violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        targets = [json.dumps(node["target"]) for node in v["nodes"]][:5]
        lines.append(f"{path}: [{v['impact']}] {v['id']}: {v['help']} at {', '.join(targets)}")
    return "\n".join(lines)


def test_main_pages_have_no_serious_accessibility_violations(
    context: Any, rolling: Console
) -> None:
    page = context.new_page()
    found: list[str] = []
    page.goto(f"{rolling.url}/ui/login")
    page.wait_for_load_state("load")
    if violations := _violations(page):
        found.append(_describe("/ui/login", violations))
    for role, paths in PAGES.items():
        sign_in(page, rolling, role)
        for path in paths:
            answer = page.goto(f"{rolling.url}{path}")
            if answer is None or answer.status != 200:
                found.append(f"{path}: HTTP {answer and answer.status}")
            elif violations := _violations(page):
                found.append(_describe(path, violations))
    print("\n".join(found))
    assert not found, "serious or critical accessibility violations:\n" + "\n".join(found)


def test_pages_fit_a_narrow_window(browser: Any, rolling: Console) -> None:
    """At phone width nothing makes the whole page scroll sideways (wide tables scroll
    inside their own box)."""
    context = browser.new_context(viewport=NARROW)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        sign_in(page, rolling, "deployer")
        wide = []
        for path in PAGES["deployer"]:
            page.goto(f"{rolling.url}{path}")
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            if overflow > 1:
                wide.append(f"{path}: {overflow}px wider than the window")
        page.goto(f"{rolling.url}/ui/deployments/{DEPLOYMENT}")
        rolling.shot(page, "narrow-deployment")
        assert not wide, "\n".join(wide)
    finally:
        context.close()
