"""The console in a real browser, against a real server: a deployer signs in, looks at
the model and the deployment, applies a change, starts a rollout of a failing candidate
under real traffic and watches it roll back; a viewer sees no steering buttons and a
forged POST with its cookie is refused; signing out ends the session.

Every step leaves a screenshot in the artefacts folder (see conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.conftest import (
    DEPLOYMENT,
    DESKTOP,
    DOCS_SCREENSHOT,
    TIMEOUT_MS,
    Console,
    Traffic,
    csrf_token,
    sign_in,
)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page under the console's own CSP; anything it refuses (an inline script or
    style, an eval) fails the test."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    refused: list[str] = []
    opened.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    yield opened
    context.close()
    assert not refused, "the page broke its Content-Security-Policy:\n" + "\n".join(refused)


def _sign_out(page: Any, console: Console, who: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    expect(page.locator("#key")).to_be_visible()
    console.shot(page, f"{who}-signed-out")
    page.goto(f"{console.url}/ui")  # the cookie is gone: back to the sign-in page
    expect(page).to_have_url(re.compile(r"/ui/login$"))


def test_a_deployer_applies_a_change_and_watches_a_failing_rollout_roll_back(
    page: Any, console: Console
) -> None:
    from playwright.sync_api import expect

    # 1. sign in: the overview lists the deployment
    sign_in(page, console, "deployer")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.get_by_role("link", name=DEPLOYMENT)).to_be_visible()
    console.shot(page, "overview")

    # 2. the model and the deployment
    page.get_by_role("link", name="fraud", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/ui/models/fraud$"))
    expect(page.locator("h1")).to_contain_text("fraud")
    expect(page.locator("main")).to_contain_text("production")
    expect(page.locator("#version-2")).to_contain_text("Fails every request")
    console.shot(page, "model")
    page.goto(f"{console.url}/ui")
    page.get_by_role("link", name=DEPLOYMENT).first.click()
    expect(page).to_have_url(re.compile(rf"/ui/deployments/{DEPLOYMENT}$"))
    expect(page.locator("h1")).to_contain_text(DEPLOYMENT)
    before = int(page.locator("#revision-number").inner_text())
    console.shot(page, "deployment")

    # 3. apply a change: the new revision is reported, and is live after a reload
    manifest = page.locator("textarea")
    text = manifest.input_value()
    assert "Fraud scores for the payments service" in text, text
    manifest.fill(text.replace("for the payments service", "for payments (edited in the console)"))
    page.get_by_role("button", name=re.compile(r"^Apply", re.I)).click()
    expect(page.locator("#apply-result")).to_contain_text(f"revision {before + 1}")
    console.shot(page, "applied")
    page.reload()
    expect(page.locator("#revision-number")).to_have_text(str(before + 1))
    expect(page.locator("main")).to_contain_text("edited in the console")

    # 4. a rollout of the failing candidate, under real traffic, rolls back on its own
    with Traffic(console) as traffic:
        start = page.get_by_role("button", name=re.compile("rollout", re.I))
        form = page.locator("form", has=start)
        form.get_by_label(re.compile("version", re.I)).fill("2")
        form.get_by_role("button", name=re.compile("rollout", re.I)).click()
        started = re.compile(r"rollout \d+ started: version 1 → 2")
        expect(page.locator("#rollout-start-result")).to_contain_text(started)
        console.shot(page, "rollout-started")
        page.goto(f"{console.url}/ui/deployments/{DEPLOYMENT}/rollout")
        console.shot(page, "rollout-running")
        expect(page.locator("#rollout-state")).to_have_text(
            re.compile("rolled.back", re.I), timeout=60_000
        )
        expect(page.locator("#rollout-reason")).to_contain_text("error rate")
        console.shot(page, "rollout-rolled-back")
        assert traffic.sent > 0, traffic.statuses
        # the deployment page with both versions' live charts: the README's picture
        page.goto(f"{console.url}/ui/deployments/{DEPLOYMENT}")
        expect(page.locator("#split")).to_contain_text("v1 100%")  # all back on stable
        expect(page.locator("#live")).to_contain_text("Version 2")  # the fleet's arm reports
        shot = console.shot(page, "deployment-after-rollback")
    if os.environ.get("SHIPYARD_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # the cookie alone changes nothing: a POST without the CSRF header is refused
    forged = page.request.post(
        f"{console.url}/ui/deployments/{DEPLOYMENT}/apply", form={"manifest": text}
    )
    assert forged.status == 403, forged.text()

    # 5. sign out
    _sign_out(page, console, "deployer")


def test_a_viewer_sees_no_steering_and_a_forged_post_is_refused(
    page: Any, console: Console
) -> None:
    from playwright.sync_api import expect

    sign_in(page, console, "viewer")
    page.goto(f"{console.url}/ui/deployments/{DEPLOYMENT}")
    expect(page.locator("h1")).to_contain_text(DEPLOYMENT)
    expect(page.locator("#revision-number")).to_be_visible()
    expect(page.locator("textarea")).to_have_count(0)  # no manifest to apply
    expect(page.locator("[hx-post]")).to_have_count(0)  # no steering of any kind
    expect(page.get_by_role("button", name=re.compile("apply|rollout", re.I))).to_have_count(0)
    console.shot(page, "viewer-deployment")
    page.goto(f"{console.url}/ui/deployments/{DEPLOYMENT}/rollout")
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator("[hx-post]")).to_have_count(0)
    expect(
        page.get_by_role("button", name=re.compile("promote|pause|resume|abort", re.I))
    ).to_have_count(0)
    console.shot(page, "viewer-rollout")
    page.goto(f"{console.url}/ui/models/fraud")
    expect(page.locator("[hx-post]")).to_have_count(0)

    # the server refuses what the page does not offer: with or without the CSRF token
    url = f"{console.url}/ui/deployments/{DEPLOYMENT}/apply"
    manifest = {"manifest": f"name: {DEPLOYMENT}\nmodel: fraud\nroutes: [{{version: 2}}]\n"}
    refused = page.request.post(url, form=manifest)
    assert refused.status == 403, refused.text()
    refused = page.request.post(url, form=manifest, headers={"x-csrf-token": csrf_token(page)})
    assert refused.status == 403, refused.text()
    assert "deploy" in refused.text().lower(), refused.text()

    _sign_out(page, console, "viewer")
