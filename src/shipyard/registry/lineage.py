"""Facts about where a model came from that can be read off its surroundings."""

from __future__ import annotations

import subprocess
from pathlib import Path


def detect_code_commit(path: Path) -> str | None:
    """The git commit of the repository holding `path`, if it is in one."""
    folder = path if path.is_dir() else path.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def source_uri(path: Path) -> str:
    return path.resolve().as_uri()
