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
    assert (tiny.scaling.min_workers, tiny.scaling.max_workers) == (1, 1)  # workers: fixed
    # By default a version starts with one worker and may scale to one per core.
    assert other.workers == 1
    assert (other.scaling.min_workers, other.scaling.max_workers) == (0, os.cpu_count() or 1)
    assert other.scaling.scale_to_zero_after is None
    assert other.cache is False


def test_scaling_options_take_the_server_wide_ones_where_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPYARD_MAX_WORKERS_PER_MODEL", "4")
    monkeypatch.setenv("SHIPYARD_DOWNSCALE_DELAY", "30")
    monkeypatch.setenv("SHIPYARD_MEMORY_BUDGET", "2GiB")
    monkeypatch.setenv(
        "SHIPYARD_MODELS",
        '{"hot": {"scaling": {"min_workers": 2, "upscale_delay": 0}},'
        ' "lazy": {"scaling": {"max_workers": 1, "scale_to_zero_after": 300}}}',
    )
    settings = Settings()
    hot, lazy = settings.serving_for("hot"), settings.serving_for("lazy")
    assert (hot.workers, hot.scaling.min_workers, hot.scaling.max_workers) == (2, 2, 4)
    assert (hot.scaling.upscale_delay, hot.scaling.downscale_delay) == (0, 30)
    assert (lazy.workers, lazy.scaling.max_workers, lazy.scaling.scale_to_zero_after) == (
        1,
        1,
        300,
    )
    assert settings.memory_budget_bytes == 2 * 1024**3


def test_min_workers_above_max_workers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds = '{"x": {"scaling": {"min_workers": 3, "max_workers": 2}}}'
    monkeypatch.setenv("SHIPYARD_MODELS", bounds)
    with pytest.raises(ValidationError, match=r"min_workers \(3\) is above max_workers \(2\)"):
        Settings()


def test_unknown_serving_option_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_MODELS", '{"tiny": {"wokers": 1}}')
    with pytest.raises(ValidationError, match="wokers"):
        Settings()
