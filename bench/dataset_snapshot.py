"""`cme validate` plus `cme snapshot` on the real HAM10000 copy, in the local PostgreSQL.

    uv run python bench/dataset_snapshot.py --data ../shared/data/ham10000

Registers every image in a throwaway project (not timed), then times the two commands as a
user runs them, with every label source (`-S snapshot.label_sources=[...]`) so that all
10,015 images are validated and frozen. Prints the total, the time per 1,000 images, and
its ratio to a baseline run in the same process: a bare `dvc add data && dvc push` of
the same files in a second project, which is what versioning alone costs. Target
(issue 3): validate + snapshot under 30 s together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _support import ALL_SOURCES, Stopwatch, fresh_postgres_database

ROOT = Path(__file__).resolve().parents[1]


def cme(project: Path, env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> float:
    with Stopwatch() as watch:
        completed = subprocess.run(
            [sys.executable, "-m", "cme", *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
    if completed.returncode not in ok:
        sys.exit(
            f"cme {' '.join(args)} failed ({completed.returncode}):\n"
            f"{completed.stdout}{completed.stderr}"
        )
    return watch.seconds


def dvc(project: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, check=True, capture_output=True
    )


def bare_dvc_versioning(data: Path, workdir: Path) -> float:
    project = workdir / "baseline"
    project.mkdir()
    shutil.copytree(data, project / "data")
    dvc(project, "init", "--no-scm", "--quiet")
    dvc(project, "remote", "add", "--default", "store", str(workdir / "baseline-remote"))
    with Stopwatch() as watch:
        dvc(project, "add", "--quiet", "data")
        dvc(project, "push", "--quiet")
    return watch.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="HAM10000 folder")
    args = parser.parse_args()
    metadata, images = (args.data / "metadata.csv").resolve(), (args.data / "images").resolve()
    if not metadata.is_file():
        sys.exit(f"{metadata}: not found; pass --data pointing at the HAM10000 copy")
    with tempfile.TemporaryDirectory(prefix="cme-bench-") as tmp, fresh_postgres_database() as url:
        workdir = Path(tmp)
        project = workdir / "project"
        project.mkdir()
        shutil.copy(ROOT / "params.yaml", project)
        env = {
            **os.environ,
            "CME_DATABASE_URL": url,
            "CME_AUTO_MIGRATE": "1",
            "CME_HOME": str(project / ".cme"),
        }
        # Exit 1: HAM10000's two byte-identical twins are quarantined, as they should be.
        cme(
            project,
            env,
            "labels",
            "import",
            str(metadata),
            "--images",
            str(images),
            "--steward",
            "bench",
            ok=(0, 1),
        )
        validating = cme(project, env, "validate", "-S", ALL_SOURCES)
        snapshotting = cme(project, env, "snapshot", "-S", ALL_SOURCES, "--steward", "bench")
        (manifest,) = (project / "data" / "snapshots").glob("*/manifest.csv")
        images_total = sum(1 for _ in manifest.open()) - 1
        baseline = bare_dvc_versioning(project / "data", workdir)
    total = validating + snapshotting
    print(f"images                         {images_total}")
    print(f"cme validate                   {validating:6.1f} s")
    print(f"cme snapshot                   {snapshotting:6.1f} s")
    print(f"validate + snapshot            {total:6.1f} s   (target < 30 s)")
    print(f"per 1,000 images               {total / images_total * 1000:6.2f} s")
    print(f"baseline dvc add + push        {baseline:6.1f} s")
    print(f"ratio to the bare DVC baseline {total / baseline:6.2f}x")


if __name__ == "__main__":
    main()
