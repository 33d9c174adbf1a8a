"""One evaluated installation for the whole test session: a project folder after
`dvc repro evaluate` (a tiny model trained, evaluated and registered as challenger version 1),
built once and shared by the xdist workers; a test module that changes it works on a copy.

Training a tiny ResNet50 costs a minute or more of TensorFlow graph building on a 2-core
machine whatever the data, so the modules that only need *a* trained and evaluated model
(tests/integration/test_training_run.py, tests/integration/test_evaluation_run.py) take it
from here instead of training their own."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.training_support import LENIENT_GATE, QUICK_EVALUATION, TINY_TRAINING

SQLITE_HEADER = b"SQLite format 3\x00"
TEXT_FILE_LIMIT = 1 << 20  # larger files (images, weights) hold no paths
CONTENT_ADDRESSED = {(".dvc", "cache"), (".cme", "dvc-remote")}  # named by their hashes


def shared_folder(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """`name` under the folder that every xdist worker of this run shares, built by `build`
    once: the first worker to ask builds it while the others wait on a file lock, then find
    it built (a build that failed is started again by the next one to ask)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, built = root / name, root / f"{name}.built"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            built.touch()
    return folder


def build_evaluated_installation(folder: Path) -> None:
    """A git-tracked project whose params.yaml asks for tiny training served with dihedral
    test-time augmentation and a lenient gate, with 160 registered generated images (25 in
    the locked test set, 13 of them melanoma), after `dvc repro evaluate`: the first
    challenger trained, evaluated, judged and registered, awaiting approval."""
    from tests.integration.test_dataset_pipeline import ROOT, run  # a user's clean shell

    folder.mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(TINY_TRAINING, test_time_augmentation="dihedral")
    params["gate"].update(LENIENT_GATE)
    params["evaluate"].update(QUICK_EVALUATION)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", folder)
    for command in (
        ("git", "init", "-q"), ("git", "add", "params.yaml", "dvc.yaml"),
        ("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"),
    ):  # fmt: skip
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    for command in (
        ("cme", "sample-data", "lab", "--n", "160", "--seed", "3",
         "-S", "sample_data.image_size=64"),
        ("cme", "labels", "import", "lab/metadata.csv", "--images", "lab/images"),
        ("dvc", "init", "--no-scm", "--quiet"),
    ):  # fmt: skip
        done = run(*command, cwd=folder)
        assert done.returncode == 0, done.stdout + done.stderr
    evaluated = run("dvc", "repro", "evaluate", cwd=folder)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    # the train stage's per-epoch lines, with the epochs planned and the time left
    assert "epoch   1/2 fine-tune" in evaluated.stdout and " left)" in evaluated.stdout
    assert "epoch   2/2 fine-tune" in evaluated.stdout
    (folder / "dvc-repro-evaluate.log").write_text(evaluated.stdout)


@pytest.fixture(scope="session")
def evaluated_installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's evaluated installation (see build_evaluated_installation). Read it;
    to change it, work on `copy_installation(evaluated_installation, folder)`."""
    return shared_folder(tmp_path_factory, "evaluated-installation", build_evaluated_installation)


def copy_installation(source: Path, target: Path) -> Path:
    """A copy of the installation at `source` that refers to itself: the absolute paths that
    MLflow (artifact locations), DVC (its local remote) and the label registry (import
    sources) wrote are moved from `source` to `target`. Returns `target`."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    relocate(target, old=source)
    return target


def relocate(folder: Path, old: Path) -> None:
    """Rewrite `old` as `folder` in the SQLite databases and small text files under it
    (but not in append-only tables: where the label registry imported a file from stays)."""
    before, after = str(old), str(folder)
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        skipped = ".git" in parts or parts[:2] in CONTENT_ADDRESSED
        if skipped or path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
        if head == SQLITE_HEADER:
            _relocate_database(path, before, after)
        elif path.stat().st_size <= TEXT_FILE_LIMIT:
            content = path.read_bytes()
            if before.encode() in content:
                path.write_bytes(content.replace(before.encode(), after.encode()))


def _relocate_database(path: Path, before: str, after: str) -> None:
    connection = sqlite3.connect(path)
    try:
        with connection:
            tables = [name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )]  # fmt: skip
            for table in tables:
                columns = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
                for column in [row[1] for row in columns]:
                    # an append-only history (label events) keeps what it recorded
                    with contextlib.suppress(sqlite3.IntegrityError):
                        connection.execute(
                            f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                            f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                            (before, after, before),
                        )
    finally:
        connection.close()
