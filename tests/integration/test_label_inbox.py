"""The label inbox as a steward sees it: drop a lab export, find it filed with a report."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cme.bootstrap import App, bootstrap
from cme.settings import Settings
from tests.conftest import read_rows, write_rows
from usecases.inbox import InboxReport, process_inbox
from usecases.params import Params, load_params

pytestmark = pytest.mark.integration

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    cme = bootstrap(Settings(home=tmp_path / "home", data_dir=tmp_path / "data"))
    yield cme
    cme.close()


@pytest.fixture
def params() -> Params:
    return load_params(PARAMS_FILE, ["inbox.settle_seconds=0"])


def drop(generated_set: Path, app: App, name: str) -> Path:
    """Copy the generated lab export into the inbox, as a steward would."""
    return Path(shutil.copytree(generated_set, app.settings.inbox_dir / name))


def run(app: App, params: Params) -> InboxReport:
    return process_inbox(app, params, steward="dana")


def quarantine_report(folder: Path) -> list[dict[str, str]]:
    with (folder / "quarantine.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def registered_ids(app: App) -> set[str]:
    return {image.image_id for image in app.label_registry().labels()}


def test_clean_export_is_imported_and_filed_as_processed(app, params, generated_set):
    drop(generated_set, app, "lab-2024-05")
    total = len(read_rows(generated_set / "metadata.csv"))

    report = run(app, params)

    (result,) = report.results
    assert (result.name, result.status) == ("lab-2024-05", "processed")
    assert result.moved_to is not None and result.moved_to.parent.name == "processed"
    assert result.moved_to.name.endswith("-lab-2024-05")
    assert not (app.settings.inbox_dir / "lab-2024-05").exists()
    summary = json.loads((result.moved_to / "summary.json").read_text())
    assert summary["status"] == "processed" and summary["steward"] == "dana"
    assert summary["import"]["registered"] == total and summary["import"]["quarantined"] == 0
    assert (result.moved_to / "metadata.csv").is_file()
    assert not (result.moved_to / "quarantine.csv").exists()
    assert len(registered_ids(app)) == total
    assert f"{total} rows: {total} registered" in "\n".join(report.summary_lines())


def test_bad_rows_are_quarantined_valid_rows_kept_and_export_filed_as_failed(
    app, params, generated_set
):
    export = drop(generated_set, app, "lab-bad")
    rows = read_rows(export / "metadata.csv")
    (export / "images" / f"{rows[0]['image_id']}.jpg").unlink()
    rows[1]["dx"] = "melanoma?"
    write_rows(export / "metadata.csv", rows)

    (result,) = run(app, params).results

    assert result.status == "failed" and result.summary is not None
    assert result.moved_to is not None and result.moved_to.parent.name == "failed"
    assert result.summary.registered == len(rows) - 2
    assert registered_ids(app) == {row["image_id"] for row in rows[2:]}
    refused = quarantine_report(result.moved_to)
    assert [(r["row_number"], r["image_id"], r["reason_kind"]) for r in refused] == [
        ("2", rows[0]["image_id"], "missing-image"),
        ("3", rows[1]["image_id"], "unknown-dx"),
    ]
    assert "melanoma?" in refused[1]["reason"]
    summary = json.loads((result.moved_to / "summary.json").read_text())
    assert summary["import"]["reasons"] == {"missing-image": 1, "unknown-dx": 1}


def test_export_without_csv_fails_with_reason_and_imports_nothing(app, params, generated_set):
    export = drop(generated_set, app, "no-csv")
    (export / "metadata.csv").unlink()

    (result,) = run(app, params).results

    assert result.status == "failed" and result.summary is None
    assert "no metadata CSV" in result.reason
    assert result.moved_to is not None
    (refused,) = quarantine_report(result.moved_to)
    assert refused["reason_kind"] == "no-metadata-file" and "no metadata CSV" in refused["reason"]
    assert json.loads((result.moved_to / "summary.json").read_text())["status"] == "failed"
    assert registered_ids(app) == set()


def test_export_with_several_csvs_fails_naming_them(app, params, generated_set):
    export = drop(generated_set, app, "two-csvs")
    (export / "metadata.csv").rename(export / "part1.csv")
    shutil.copy(export / "part1.csv", export / "part2.csv")

    (result,) = run(app, params).results

    assert result.status == "failed" and "part1.csv, part2.csv" in result.reason
    assert registered_ids(app) == set()


def test_single_csv_of_another_name_with_images_beside_it_is_imported(app, params, generated_set):
    export = drop(generated_set, app, "flat")
    (export / "metadata.csv").rename(export / "lab_export.csv")
    for image in (export / "images").iterdir():
        image.rename(export / image.name)
    (export / "images").rmdir()

    (result,) = run(app, params).results

    assert result.status == "processed", result.reason
    assert result.summary is not None and result.summary.registered == result.summary.rows


def test_export_still_being_copied_waits(app, generated_set):
    drop(generated_set, app, "copying")
    patient = load_params(PARAMS_FILE, ["inbox.settle_seconds=3600"])

    (result,) = process_inbox(app, patient, steward="dana").results

    assert (result.status, result.moved_to) == ("waiting", None)
    assert "3600s" in result.reason
    assert (app.settings.inbox_dir / "copying" / "metadata.csv").is_file()
    assert registered_ids(app) == set()


def test_filed_and_hidden_folders_are_not_scanned(app, params, generated_set):
    drop(generated_set, app, ".partial-upload")
    drop(generated_set, app, "lab")
    first = run(app, params)
    second = run(app, params)

    assert [r.name for r in first.results] == ["lab"]
    assert second.results == ()
    assert len(list((app.settings.inbox_dir / "processed").iterdir())) == 1


def test_dropping_the_same_export_again_changes_nothing(app, params, generated_set):
    total = len(read_rows(generated_set / "metadata.csv"))
    drop(generated_set, app, "lab")
    first = run(app, params).results[0]
    drop(generated_set, app, "lab")

    again = run(app, params).results[0]

    assert again.status == "processed" and again.summary is not None
    assert (again.summary.registered, again.summary.unchanged) == (0, total)
    assert first.moved_to is not None and again.moved_to is not None
    assert first.moved_to != again.moved_to
    assert sorted(p.name for p in (app.settings.inbox_dir / "processed").iterdir()) == sorted(
        [first.moved_to.name, again.moved_to.name]
    )


def test_unreachable_registry_leaves_the_export_in_place(app, params, generated_set, monkeypatch):
    from registry.database import StoreUnavailable

    drop(generated_set, app, "lab")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("label database unreachable")

    monkeypatch.setattr(type(app.label_registry()), "import_metadata", unreachable)
    with pytest.raises(StoreUnavailable):
        run(app, params)
    assert (app.settings.inbox_dir / "lab" / "metadata.csv").is_file()
    assert not (app.settings.inbox_dir / "lab" / "summary.json").exists()
