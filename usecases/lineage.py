"""Where a model's code came from: the git commit recorded on every training run."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(project_dir: Path, built_from: str | None = None) -> tuple[str, bool]:
    """The commit of the code that runs, and whether the work tree differs from it; outside a
    git checkout (a container image), the commit it was `built_from`."""
    try:
        commit = _git(project_dir, "rev-parse", "HEAD")
        dirty = bool(_git(project_dir, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return built_from or "unknown", False
    return commit, dirty


def _git(project_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(project_dir), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
