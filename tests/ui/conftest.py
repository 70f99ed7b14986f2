"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
`shipyard server` holding a keyed home (one key per role), a model with a good version
and a failing one, and a deployment routing by the `production` alias.

Chromium missing: the tests skip locally and fail under CI=true (scripts/system-packages.sh
installs the `chromium` package). Screenshots go to $SHIPYARD_TEST_ARTIFACTS/ui/<module>/,
or to `ui-artifacts/<module>/` under pytest's temporary folder (the run's summary names
the folder); with SHIPYARD_UPDATE_SCREENSHOTS=1 the deployment page's screenshot also
replaces docs/img/console-deployment.png.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.conftest import IN_CI
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "console-deployment.png"
DEPLOYMENT = "fraud-api"
FAILING = """
class Model:
    def load(self):
        pass

    def predict(self, inputs):
        raise ValueError("this version fails every request")
"""
MANIFEST = f"""
name: {DEPLOYMENT}
model: fraud
description: Fraud scores for the payments service
routes: [{{alias: production}}]
rollout:
  steps: [50, 100]
  bake_seconds: 1
  min_requests: 10
  gates: {{max_error_rate_increase: 0.02}}
monitoring:
  sample: 1.0
"""
DESKTOP = {"width": 1280, "height": 800}
TIMEOUT_MS = 30_000
"""Longest any expectation waits for the page (htmx polls every 2-3 s)."""


def chromium_path() -> str:
    """Debian's Chromium (Playwright's own browser builds cannot be downloaded here)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium not found (Debian: apt-get install chromium)"
        if IN_CI:
            pytest.fail(message + ": CI must run the browser tests")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # the dev extras hold it
        if IN_CI:
            pytest.fail("playwright is not installed: pip install -e '.[dev]'")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (kept after the run: CI uploads the folder)."""
    base = os.environ.get("SHIPYARD_TEST_ARTIFACTS")
    folder = Path(base) / "ui" if base else tmp_path_factory.getbasetemp() / "ui-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    _written.append(folder)
    return folder


_written: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _written:
        terminalreporter.write_line(f"console screenshots: {folder}")


@dataclass
class Console:
    server: RunningServer
    keyed: KeyedHome
    artifacts: Path
    shots: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, role: str) -> str:
        return self.keyed.tokens[role]

    def shot(self, page: Any, name: str) -> Path:
        """A full-page screenshot, numbered in the order taken."""
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path


def make_home(folder: Path) -> KeyedHome:
    """Keys for every role, `fraud` v1 (a logistic regression holding `production`, with an
    example so it has a signature and a reference sample) and v2 (fails every request)."""
    keyed = make_keyed_home(folder / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        good = fixtures.write_sklearn_model(folder / "v1")
        example = fixtures.write_example_csv(folder / "v1", rows=200)
        options = RegistrationOptions(name="fraud", aliases=["production"],
                                      description="Logistic regression on four features",
                                      tags={"team": "payments"})  # fmt: skip
        assert registry.register(good, options, example).version == 1
        bad = folder / "v2" / "model.py"
        bad.parent.mkdir()
        bad.write_text(FAILING)
        options = RegistrationOptions(name="fraud", description="Fails every request")
        assert registry.register(bad, options).version == 2
        registry.deployments.apply(parse_manifest(MANIFEST))
    finally:
        registry.close()
    return keyed


@pytest.fixture(scope="module")
def console(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> Iterator[Console]:
    """A server of its own for each test module; its screenshots in a folder named after
    the module (test_console, test_accessibility)."""
    keyed = make_home(tmp_path_factory.mktemp("console"))
    shots = artifacts / request.module.__name__.rpartition(".")[2]
    shots.mkdir(exist_ok=True)
    env = {**keyed.env, "SHIPYARD_ROLLOUT_TICK": "0.1"}
    with running_server(env) as server:
        yield Console(server, keyed, shots)


def sign_in(page: Any, console: Console, role: str) -> None:
    """Sign in through the form, as a person would."""
    from playwright.sync_api import expect

    page.goto(f"{console.url}/ui/login")
    page.fill("#key", console.token(role))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui$"))


def csrf_token(page: Any) -> str:
    """The CSRF token the page's htmx sends (base.html puts it in <body hx-headers>)."""
    headers = page.locator("body").get_attribute("hx-headers")
    token = re.search(r'"x-csrf-token":\s*"([^"]*)"', headers or "")
    assert token is not None, headers
    return token.group(1)


def infer_body(rng: np.random.Generator) -> dict[str, Any]:
    row = rng.normal(size=len(fixtures.FEATURES))
    return {"inputs": [{"name": name, "datatype": "FP64", "shape": [1], "data": [row[j]]}
                       for j, name in enumerate(fixtures.FEATURES)]}  # fmt: skip


class Traffic:
    """Real inference requests to the deployment from a background thread, with the
    predictor's key, until stopped."""

    def __init__(self, console: Console) -> None:
        self.url = f"{console.url}/v2/models/{DEPLOYMENT}/infer"
        self.headers = {"authorization": f"Bearer {console.token('predictor')}"}
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=30, headers=self.headers) as http:
            while not self._stop.is_set():
                status = http.post(self.url, json=infer_body(rng)).status_code
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self._stop.wait(0.01)  # pacing (about 50 req/s), leaving CPU to the browser

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
