"""Snapshots end to end: real label registry (SQLite and PostgreSQL), real DVC, real files."""

from __future__ import annotations

import filecmp
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from cme.bootstrap import App
from cme.settings import Settings
from pipelines.dataset import versioning
from pipelines.dataset.manifest import lesion_splits, read_manifest
from registry.labels import ConcurrentChange
from tests.conftest import read_rows, write_rows
from usecases import snapshots
from usecases.params import Params, load_params

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, database_url: str) -> Iterator[App]:
    """A fresh project folder (params.yaml, data/, DVC) on an empty label registry."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "params.yaml", folder)
    settings = Settings(
        home=folder / ".cme",
        database_url=database_url,
        auto_migrate=True,
        data_dir=folder / "data",
        project_dir=folder,
        params_file=folder / "params.yaml",
    )
    app = App(settings)
    yield app
    app.close()


def params_for(app: App) -> Params:
    """The embedded defaults, but every label source and melanoma floors the 24-image
    generated set can meet (its val split holds no melanoma lesion)."""
    return load_params(
        app.settings.params_file,
        [
            "snapshot.label_sources=[histo,follow_up,consensus]",
            "validation.min_melanoma=2",
            "validation.min_split_lesions=0",
        ],
    )


def register(app: App, export: Path) -> None:
    summary = app.label_registry().import_metadata(
        export / "metadata.csv", export / "images", steward="steward"
    )
    assert summary.quarantined == 0


def snapshot(app: App) -> snapshots.SnapshotOutcome:
    return snapshots.take_snapshot(app, params_for(app), steward="tester")


def split_off(lab_export: Path, tmp_path: Path, first: int) -> Path:
    """Keep the first `first` rows in `lab_export`; return a second export with the rest."""
    rows = read_rows(lab_export / "metadata.csv")
    later = tmp_path / "later"
    shutil.copytree(lab_export, later)
    write_rows(lab_export / "metadata.csv", rows[:first])
    write_rows(later / "metadata.csv", rows[first:])
    return later


def test_a_snapshot_freezes_labels_and_versions_them_with_dvc(project, lab_export):
    register(project, lab_export)

    outcome = snapshot(project)

    record = outcome.record
    manifest = read_manifest(outcome.folder / "manifest.csv")
    assert outcome.created and record.images == len(manifest) == 24
    assert record.dvc_hash.endswith(".dir")
    assert (project.settings.project_dir / "data.dvc").read_text().count(record.dvc_hash) == 1
    assert project.label_registry().snapshots() == [record]
    assert project.label_registry().locked_splits() == lesion_splits(manifest)
    assert {"snapshot.json", "drift.json", "manifest.csv"} <= {
        p.name for p in outcome.folder.iterdir()
    }
    report = snapshots.validate(project, params_for(project), manifest, "the snapshot")
    assert report.success, report.summary_lines()

    again = snapshot(project)
    assert not again.created and again.record == record


def test_a_snapshot_tells_its_progress_through_the_files_and_dvc_draws_nothing(
    project, lab_export, capfd, monkeypatch
):
    """`cme snapshot`'s bar on a terminal: DVC's own progress bars, heard instead of drawn
    (they would garble the command's bar)."""
    register(project, lab_export)
    monkeypatch.setattr(versioning, "HEARD_EVERY_SECONDS", 0.005)  # 24 images go fast
    heard: list[tuple[str, int, int | None]] = []

    outcome = snapshots.take_snapshot(
        project, params_for(project), steward="tester",
        on_files=lambda doing, done, total: heard.append((doing, done, total)),
    )  # fmt: skip

    assert outcome.created and heard
    assert all(doing and done >= 0 and (total is None or done <= total)
               for doing, done, total in heard), heard  # fmt: skip
    counted = {doing for doing, _, total in heard if total is not None and total >= 24}
    assert counted, heard  # a phase through all the images, e.g. "Pushing to cme"
    assert "files/s" not in capfd.readouterr().err  # no bar of DVC's on stderr
    assert os.environ.get("DVC_IGNORE_ISATTY") is None


def test_the_locked_test_set_survives_new_labels_and_relabels(project, lab_export, tmp_path):
    later = split_off(lab_export, tmp_path, 14)
    register(project, lab_export)
    first = snapshot(project)
    first_splits = lesion_splits(read_manifest(first.folder / "manifest.csv"))

    register(project, later)
    relabelled = next(iter(first_splits))
    image = next(i for i in project.label_registry().labels() if i.lesion_id == relabelled)
    new_dx = "bkl" if image.dx != "bkl" else "nv"
    project.label_registry().relabel(
        image.image_id, dx=new_dx, dx_type="histo", steward="steward",
        reason="pathology review", whole_lesion=True,
    )  # fmt: skip
    second = snapshot(project)

    second_manifest = read_manifest(second.folder / "manifest.csv")
    second_splits = lesion_splits(second_manifest)
    assert second.record.previous_snapshot_id == first.record.snapshot_id
    assert {lesion: second_splits[lesion] for lesion in first_splits} == first_splits
    assert set(second_manifest.loc[second_manifest.lesion_id == relabelled, "dx"]) == {new_dx}
    assert second.drift.new_labels == len(read_rows(later / "metadata.csv")) + sum(
        1 for i in project.label_registry().labels() if i.lesion_id == relabelled
    )


def test_the_database_refuses_to_move_a_locked_lesion(project, lab_export, database_url):
    register(project, lab_export)
    outcome = snapshot(project)
    lesion, split = next(iter(project.label_registry().locked_splits().items()))
    other = "train" if split != "train" else "test"

    engine = create_engine(database_url)
    try:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(
                text("UPDATE lesion_splits SET split = :s WHERE lesion_id = :l"),
                {"s": other, "l": lesion},
            )
    finally:
        engine.dispose()

    moved = read_manifest(outcome.folder / "manifest.csv")
    moved.loc[moved.lesion_id == lesion, "split"] = other
    moved.loc[0, "age"] = 99.0  # a different manifest, so that it is not "unchanged"
    with pytest.raises(ConcurrentChange, match=f"lesion {lesion} is locked"):
        snapshots.take_snapshot(project, params_for(project), steward="t", manifest=moved)
    assert len(project.label_registry().snapshots()) == 1


def test_restore_from_the_dvc_hash_alone_is_byte_identical(project, lab_export, tmp_path):
    later = split_off(lab_export, tmp_path, 12)
    register(project, lab_export)
    first = snapshot(project)
    as_frozen = tmp_path / "as-frozen"
    shutil.copytree(project.settings.data_dir, as_frozen)
    register(project, later)
    snapshot(project)
    shutil.rmtree(project.settings.project_dir / ".dvc" / "cache")  # only the remote has it now

    restored = tmp_path / "restored"
    snapshots.restore_snapshot(project, first.record.dvc_hash, restored)

    assert_same_tree(as_frozen, restored)


def assert_same_tree(expected: Path, actual: Path) -> None:
    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(actual) for p in actual.rglob("*") if p.is_file())
    _, mismatched, errors = filecmp.cmpfiles(
        expected, actual, [str(f) for f in files], shallow=False
    )
    assert (mismatched, errors) == ([], [])


def test_an_interrupted_snapshot_leaves_nothing_recorded_and_is_cleaned_up(
    project, lab_export, monkeypatch
):
    register(project, lab_export)

    def crash(_: object, on_files: object = None) -> str:
        raise KeyboardInterrupt  # the process dies between writing the folder and DVC

    monkeypatch.setattr(snapshots.DataVersioning, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        snapshot(project)
    monkeypatch.undo()
    assert project.label_registry().snapshots() == []
    assert project.label_registry().locked_splits() == {}
    (orphan,) = project.settings.snapshots_dir.iterdir()

    outcome = snapshot(project)

    assert [p.name for p in project.settings.snapshots_dir.iterdir()] == [
        outcome.record.snapshot_id
    ]
    assert not orphan.exists() or orphan == outcome.folder


def on_another_machine(project: App, folder: Path) -> App:
    """A worker elsewhere: its own home and an empty data folder outside the project; the
    same label registry and DVC remote."""
    return App(
        project.settings.model_copy(
            update={
                "home": folder / ".cme",
                "data_dir": folder / "data",
                "project_dir": folder,
                "dvc_remote": project.settings.dvc_remote_url,
            }
        )
    )


def test_a_worker_elsewhere_restores_the_snapshot_it_trains_on_by_its_hash(
    project, lab_export, tmp_path
):
    later = split_off(lab_export, tmp_path, 12)
    register(project, lab_export)
    first = snapshot(project)
    frozen = read_manifest(first.folder / snapshots.MANIFEST_FILE)
    register(project, later)
    second = snapshot(project)
    histo_only = load_params(project.settings.params_file, ["snapshot.label_sources=[histo]"])
    third = snapshots.take_snapshot(project, histo_only, steward="tester")  # a third manifest
    assert not snapshots.snapshot_on_hand(project, first.record.snapshot_id).restored

    worker = on_another_machine(project, tmp_path / "gpu-node")
    try:
        on_hand = snapshots.snapshot_on_hand(worker, first.record.snapshot_id)
        assert on_hand.restored
        assert on_hand.data_dir.is_relative_to(worker.settings.home)
        assert on_hand.manifest.equals(frozen)  # the first snapshot's 12 images, not 24
        for path in on_hand.manifest["path"]:
            assert filecmp.cmp(project.settings.data_dir / path, on_hand.data_dir / path, False)
        assert not (worker.settings.data_dir / "snapshots").exists()

        for later_snapshot in (second, third):  # the oldest restored copy makes room
            snapshots.snapshot_on_hand(worker, later_snapshot.record.snapshot_id)
        cache = worker.settings.home / snapshots.SNAPSHOT_CACHE
        kept = {mark.parent.name for mark in cache.glob(f"*/{snapshots.VERIFIED_MARK}")}
        assert kept == {s.record.dvc_hash.removesuffix(".dir") for s in (second, third)}

        shutil.rmtree(project.settings.dvc_remote_url)  # the cache serves it from now on
        again = snapshots.snapshot_on_hand(worker, third.record.snapshot_id)
        assert again.restored and len(again.manifest) == third.record.images
    finally:
        worker.close()


def test_an_image_that_differs_from_the_manifest_after_a_restore_is_refused(
    project, lab_export, tmp_path
):
    register(project, lab_export)
    taken = snapshot(project)
    image = read_manifest(taken.folder / snapshots.MANIFEST_FILE).iloc[3]
    remote = Path(project.settings.dvc_remote_url)
    stored = [p for p in remote.rglob("*") if p.is_file() and p.read_bytes() == (
        project.settings.data_dir / image["path"]).read_bytes()]  # fmt: skip
    assert stored, "the image is in the DVC remote"
    for copy in stored:
        copy.write_bytes(b"not the image that was confirmed")

    worker = on_another_machine(project, tmp_path / "gpu-node")
    try:
        with pytest.raises(snapshots.SnapshotCorrupt, match=rf"row 5: {image['path']} .*sha256"):
            snapshots.snapshot_on_hand(worker, taken.record.snapshot_id)
        cache = worker.settings.home / snapshots.SNAPSHOT_CACHE
        assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    finally:
        worker.close()
