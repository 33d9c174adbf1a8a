"""A crash mid-import leaves no half-written rows and no orphan files (both backends).

The importer runs in a child process that dies (os._exit, no cleanup) at the two dangerous
moments: inside a database transaction, and after a commit but before its image files were
moved into the store. The registry is then opened afresh, as the next command would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository
from tests.conftest import read_rows

pytestmark = pytest.mark.integration

CRASHING_IMPORT = r"""
import os, sys
from pathlib import Path
from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository
from registry.labels import image_store, repository

url, store, export, moment = sys.argv[1:]
calls = {"n": 0}

def dies_on_second_call(original):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os._exit(9)
        return original(*args, **kwargs)
    return wrapper

if moment == "inside-transaction":
    Repository = repository.LabelRepository
    Repository._quarantine = dies_on_second_call(Repository._quarantine)
else:
    Staged = image_store.StagedWrites
    Staged.publish = dies_on_second_call(Staged.publish)

opened = LabelRepository.open(url, migrate=True)
registry = LabelRegistry(opened, ImageStore(Path(store)), IntakeRules())
export = Path(export)
registry.import_metadata(
    export / "metadata.csv", export / "images", steward="crash", batch_size=5
)
"""


def crash_import(url: str, store: Path, export: Path, moment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_IMPORT, url, str(store), str(export), moment],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 9, result.stderr


def open_registry(url: str, store: Path) -> LabelRegistry:
    registry = LabelRegistry(
        LabelRepository.open(url, migrate=True), ImageStore(store), IntakeRules()
    )
    registry.recover()
    return registry


def files_in(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("moment", "images_kept"), [("inside-transaction", 5), ("after-commit", 10)]
)
def test_a_crash_leaves_the_registry_consistent(
    database_url, lab_export, tmp_path, moment, images_kept
):
    store = tmp_path / "store"
    crash_import(database_url, store, lab_export, moment)

    registry = open_registry(database_url, store)
    try:
        labels = list(registry.labels())
        assert len(labels) == images_kept  # whole batches only
        assert registry.stats().label_events == images_kept  # no image without its label event
        assert files_in(store) == {image.stored_path for image in labels}  # no orphan, none missing
        assert not (store / ".staging").exists() or not any((store / ".staging").iterdir())

        summary = registry.import_metadata(
            lab_export / "metadata.csv", lab_export / "images", steward="ana", batch_size=5
        )
        rows = read_rows(lab_export / "metadata.csv")
        assert (summary.registered, summary.unchanged) == (len(rows) - images_kept, images_kept)
        assert files_in(store) == {image.stored_path for image in registry.labels()}
    finally:
        registry.repository.close()


def test_an_interrupt_after_the_commit_keeps_the_files_of_committed_rows(
    database_url, lab_export, tmp_path
):
    store = tmp_path / "store"
    registry = open_registry(database_url, store)
    original = registry.repository.record_intake

    def commit_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C landing just after COMMIT returned

    registry.repository.record_intake = commit_then_interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        registry.import_metadata(
            lab_export / "metadata.csv", lab_export / "images", steward="ana", batch_size=5
        )
    registry.repository.close()

    reopened = open_registry(database_url, store)
    try:
        labels = list(reopened.labels())
        assert len(labels) == 5
        assert files_in(store) == {image.stored_path for image in labels}
    finally:
        reopened.repository.close()


def test_recovery_running_beside_a_live_import_disturbs_nothing(database_url, lab_export, tmp_path):
    import threading

    store = tmp_path / "store"
    importer, sweeper = open_registry(database_url, store), open_registry(database_url, store)
    done = threading.Event()

    def sweep() -> None:
        while not done.is_set():
            sweeper.recover()

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        summary = importer.import_metadata(
            lab_export / "metadata.csv", lab_export / "images", steward="ana", batch_size=3
        )
    finally:
        done.set()
        thread.join()
    try:
        assert summary.registered == len(read_rows(lab_export / "metadata.csv"))
        assert files_in(store) == {image.stored_path for image in importer.labels()}
    finally:
        importer.repository.close()
        sweeper.repository.close()
