"""Per-model serving options fall back to the server-wide ones."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shipyard.config import Settings


def test_serving_options_per_model_override_server_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_MODELS", '{"tiny": {"workers": 1, "cache": true}}')
    monkeypatch.setenv("SHIPYARD_MAX_BATCH_DELAY_MS", "2")
    settings = Settings()
    tiny, other = settings.serving_for("tiny"), settings.serving_for("other")
    assert (tiny.workers, tiny.cache, tiny.max_batch_delay) == (1, True, 0.002)
    assert other.workers == (os.cpu_count() or 1)  # follows the cores by default
    assert other.cache is False


def test_unknown_serving_option_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_MODELS", '{"tiny": {"wokers": 1}}')
    with pytest.raises(ValidationError, match="wokers"):
        Settings()
