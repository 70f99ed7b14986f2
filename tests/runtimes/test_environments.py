"""A version's requirements: read, normalised, hashed, checked against this interpreter;
the builder's refusals and its memory of a failed build."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn

from shipyard.errors import EnvironmentUnavailable, InvalidInput
from shipyard.runtimes.detect import inspect_model
from shipyard.runtimes.environments import (
    EnvironmentBuilder,
    environment_digest,
    foreign_import_path,
    parse_requirements,
    read_requirements,
    server_site_dirs,
    unsatisfied,
)
from tests import fixtures

PARSED = [
    ("scikit-learn==1.5.2", ["scikit-learn==1.5.2"]),
    ("Scikit_Learn == 1.5.2   # the release that saved it", ["scikit-learn==1.5.2"]),
    ("# a comment\n\n-r base.txt\n--index-url https://example.invalid/simple", []),
    ("mlflow==2.9.2\nmlflow-skinny==2.9.2\ncloudpickle==3.0.0", ["cloudpickle==3.0.0"]),
    ('pywin32==306; sys_platform == "win32"', []),
    ('numpy>=1.20,<2; python_version >= "3"', ["numpy<2,>=1.20"]),
    ("requests[socks,security]>=2", ["requests[security,socks]>=2"]),
    ("pkg @ https://example.invalid/pkg-1.0-py3-none-any.whl",
     ["pkg @ https://example.invalid/pkg-1.0-py3-none-any.whl"]),
    ("xgboost==2.1.0\nXGBoost==2.1.0", ["xgboost==2.1.0"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_requirements_are_read_and_normalised(text: str, expected: list[str]) -> None:
    assert parse_requirements(text.splitlines(), "requirements.txt") == expected


def test_a_bad_line_is_refused_naming_the_file_and_line() -> None:
    with pytest.raises(InvalidInput, match=r"pins\.txt line 3: 'scikit-learn=:1' is not a"):
        parse_requirements(["numpy==2.0", "# fine", "scikit-learn=:1"], "pins.txt")


def _mlflow_folder(folder: Path, requirements: str | None, conda: str | None) -> Path:
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    if conda is not None:
        (folder / "conda.yaml").write_text(conda)
    return folder


CONDA = """
name: mlflow-env
channels: [conda-forge]
dependencies:
  - python=3.11.7
  - pip<=24.0
  - pip:
      - mlflow==2.9.2
      - scikit-learn==1.5.2
      - cloudpickle==3.0.0
"""


def test_explicit_pins_win_then_the_folders_own_then_detected(tmp_path: Path) -> None:
    both = _mlflow_folder(tmp_path / "both", "mlflow==2.9.2\nscikit-learn==1.4.0\n", CONDA)
    conda_only = _mlflow_folder(tmp_path / "conda", None, CONDA)
    bare = _mlflow_folder(tmp_path / "bare", None, None)
    pickle = tmp_path / "model.joblib"
    pickle.write_bytes(b"")
    detected = ["scikit-learn==1.9.0"]
    assert read_requirements(both, ["lightgbm==4.0.0"], detected) == (
        ["lightgbm==4.0.0"],
        "--requirements",
    )
    assert read_requirements(both, None, detected) == (["scikit-learn==1.4.0"], "requirements.txt")
    assert read_requirements(conda_only, None, detected) == (
        ["scikit-learn==1.5.2", "cloudpickle==3.0.0"],
        "conda.yaml",
    )
    assert read_requirements(bare, None, detected) == (detected, "detected")
    assert read_requirements(pickle, None, detected) == (detected, "detected")
    assert read_requirements(pickle, None, []) == ([], "detected")


def test_the_digest_ignores_order_and_spelling_but_not_python() -> None:
    expected = hashlib.sha256(
        json.dumps(
            {"python": "3.11", "requirements": ["numpy==2.0", "scikit-learn==1.5.2"]}
        ).encode()
    ).hexdigest()
    assert environment_digest(["scikit-learn==1.5.2", "numpy==2.0"], "3.11") == expected
    assert environment_digest(["numpy == 2.0", "Scikit_Learn==1.5.2"], "3.11") == expected
    assert environment_digest(["numpy==2.0", "scikit-learn==1.5.2"], "3.12") != expected


def test_unsatisfied_pins_are_those_this_interpreter_lacks() -> None:
    numpy_version = np.__version__
    table = [
        (f"numpy=={numpy_version}", False),
        ("numpy>=1", False),
        ("numpy<1", True),
        (f"scikit-learn=={sklearn.__version__}", False),
        ("scikit-learn==1.5.2", sklearn.__version__ != "1.5.2"),
        ("no-such-distribution-for-shipyard==1.0", True),
    ]
    pins = [pin for pin, _ in table]
    assert unsatisfied(pins) == [pin for pin, missing in table if missing]


def test_pickles_pin_their_release_and_other_flavors_the_installed_library(
    tmp_path: Path,
) -> None:
    import lightgbm

    pickle = fixtures.write_sklearn_model(tmp_path / "sk")
    assert inspect_model(pickle).requirements == [f"scikit-learn=={sklearn.__version__}"]
    booster = fixtures.write_lightgbm_model(tmp_path / "lgb")
    assert inspect_model(booster).requirements == [f"lightgbm=={lightgbm.__version__}"]


def test_satisfied_pins_and_the_local_manager_need_no_environment(tmp_path: Path) -> None:
    missing = ["no-such-distribution-for-shipyard==1.0"]
    assert EnvironmentBuilder(tmp_path, "local").python_for(missing) is None
    satisfied = [f"numpy=={np.__version__}"]
    assert EnvironmentBuilder(tmp_path, "uv").python_for(satisfied) is None
    assert not (tmp_path / environment_digest(satisfied)).exists()


def test_without_uv_the_refusal_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    builder = EnvironmentBuilder(tmp_path / "envs", "auto")
    with pytest.raises(EnvironmentUnavailable, match=r"pip install 'shipyard\[env\]'"):
        builder.python_for(["no-such-distribution-for-shipyard==1.0"])


def test_a_failed_build_is_remembered_until_retried(tmp_path: Path) -> None:
    builder = EnvironmentBuilder(tmp_path, "uv")
    pins = ["scikit-learn==0.0.999"]
    with pytest.raises(EnvironmentUnavailable) as first:
        builder.python_for(pins)
    log = tmp_path / f"{environment_digest(pins)}.log"
    assert "0.0.999" in first.value.message and str(log) in first.value.message
    assert "uv pip install failed" in first.value.message
    log.write_text("the first build's log\n")
    with pytest.raises(EnvironmentUnavailable) as again:
        builder.python_for(pins)
    assert again.value is first.value
    assert log.read_text() == "the first build's log\n"  # nothing ran again
    with pytest.raises(EnvironmentUnavailable):
        builder.build(pins)  # `shipyard env build` retries
    assert "0.0.999" in log.read_text()
    assert builder.state(pins).failure is not None and not builder.state(pins).built
    assert not list(tmp_path.glob(".*-*")), "a failed build left its staging folder"


def test_an_environments_children_see_no_server_site_packages() -> None:
    path = foreign_import_path()
    assert not set(path) & set(server_site_dirs())
    assert all("site-packages" not in entry for entry in path)
