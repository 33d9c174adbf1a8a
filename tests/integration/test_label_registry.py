"""The label registry as stewards use it, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from registry.labels import (
    Diagnosis,
    IntakeRules,
    LabelRegistry,
    LabelRepository,
    LesionConflict,
    MetadataFileError,
    RejectedSubmission,
    UnknownImage,
)
from tests.conftest import WITH_CONFIRMED_AT, read_rows, write_rows
from usecases.sample_data import SampleSpec, write_sample_data

pytestmark = pytest.mark.integration


def import_export(registry: LabelRegistry, export: Path, batch_size: int = 500):
    return registry.import_metadata(
        export / "metadata.csv", export / "images", steward="ana", batch_size=batch_size
    )


def stored_files(registry: LabelRegistry) -> set[str]:
    root = registry.store.root
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_import_registers_every_row_with_its_image_and_label(registry, lab_export):
    summary = import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")

    assert (summary.registered, summary.quarantined, summary.exit_code) == (len(rows), 0, 0)
    labels = {image.image_id: image for image in registry.labels()}
    assert set(labels) == {row["image_id"] for row in rows}
    first = rows[0]
    image = labels[first["image_id"]]
    assert (image.lesion_id, image.dx, image.diagnosis.dx_type) == (
        first["lesion_id"],
        first["dx"],
        first["dx_type"],
    )
    assert image.steward == "ana" and image.facts.mode == "RGB" and image.facts.width == 64
    stored = registry.store.read(image.stored_path)
    assert stored == (lab_export / "images" / f"{first['image_id']}.jpg").read_bytes()
    assert stored_files(registry) == {i.stored_path for i in labels.values()}


def test_importing_the_same_file_twice_changes_nothing(registry, lab_export):
    rows = read_rows(lab_export / "metadata.csv")
    rows[2]["dx"] = "melanoma?"  # one bad row, so the quarantine is exercised too
    write_rows(lab_export / "metadata.csv", rows)
    first = import_export(registry, lab_export)
    before = (
        list(registry.labels()),
        registry.quarantine(),
        registry.stats(),
        stored_files(registry),
    )

    again = import_export(registry, lab_export)

    assert (again.registered, again.unchanged, again.quarantined) == (0, len(rows) - 1, 1)
    assert again.exit_code == first.exit_code == 1
    after = (
        list(registry.labels()),
        registry.quarantine(),
        registry.stats(),
        stored_files(registry),
    )
    assert after == before


def test_a_byte_identical_image_under_another_id_is_quarantined(registry, lab_export):
    rows = read_rows(lab_export / "metadata.csv")
    twin = dict(rows[0], image_id="TWIN_0001")  # same lesion and label, byte-identical image
    (lab_export / "images" / "TWIN_0001.jpg").write_bytes(
        (lab_export / "images" / f"{rows[0]['image_id']}.jpg").read_bytes()
    )
    write_rows(lab_export / "metadata.csv", [*rows, twin])

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.quarantined) == (len(rows), 1)
    assert "TWIN_0001" not in {image.image_id for image in registry.labels()}
    (held,) = registry.quarantine()
    assert (held.image_id, held.reason_kind) == ("TWIN_0001", "duplicate-image")
    assert rows[0]["image_id"] in held.reason
    assert len(stored_files(registry)) == len(rows)

    again = import_export(registry, lab_export)
    assert (again.registered, again.unchanged, again.quarantined) == (0, len(rows), 1)
    assert len(registry.quarantine()) == 1


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "brown").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then chunk length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _replace_image(content: bytes) -> Callable[[list[dict[str, str]], Path], None]:
    def spoil(rows: list[dict[str, str]], images: Path) -> None:
        (images / f"{rows[3]['image_id']}.jpg").write_bytes(content)

    return spoil


def _truncate_image(rows: list[dict[str, str]], images: Path) -> None:
    path = images / f"{rows[3]['image_id']}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set(column: str, value: str) -> Callable[[list[dict[str, str]], Path], None]:
    def spoil(rows: list[dict[str, str]], images: Path) -> None:
        rows[3][column] = value

    return spoil


def _remove_image(rows: list[dict[str, str]], images: Path) -> None:
    (images / f"{rows[3]['image_id']}.jpg").unlink()


BAD_ROWS = {
    "unknown dx": (_set("dx", "melanoma"), "unknown-dx", "dx 'melanoma' is not one of"),
    "unknown dx_type": (_set("dx_type", "biopsy"), "unknown-dx-type", "dx_type 'biopsy'"),
    "missing image file": (_remove_image, "missing-image", "does not exist"),
    "truncated image": (_truncate_image, "undecodable", "cannot be decoded"),
    "text file named .jpg": (
        _replace_image(b"lesion_id,image_id\nthis is not an image\n"),
        "not-an-image",
        "not a readable image",
    ),
    "zero-byte file": (_replace_image(b""), "empty-file", "empty (0 bytes)"),
    "decompression bomb": (
        _replace_image(_png_claiming(60_000, 60_000)),
        "too-large",
        "decompression bomb",
    ),
    "image_id with a path separator": (
        _set("image_id", "../../etc/passwd"),
        "unsafe-image-id",
        "path separator or '..'",
    ),
    "image_id with a backslash": (
        _set("image_id", "ISIC\\0001"),
        "unsafe-image-id",
        "path separator",
    ),
    "age out of range": (_set("age", "212"), "age-out-of-range", "age 212 is outside 0..120"),
    "age not a number": (_set("age", "forty"), "invalid-age", "age 'forty' is not a number"),
    "sex outside male/female/unknown": (_set("sex", "x"), "invalid-sex", "sex 'x' is not one of"),
    "unknown localization": (
        _set("localization", "elbow"),
        "unknown-localization",
        "localization 'elbow'",
    ),
    "confirmed in the future": (
        _set("confirmed_at", "2999-01-01"),
        "invalid-confirmed-at",
        "in the future",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_quarantined_with_its_reason_and_the_rest_goes_in(registry, lab_export, case):
    spoil, reason_kind, message = BAD_ROWS[case]
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    spoil(rows, lab_export / "images")
    write_rows(metadata, rows, WITH_CONFIRMED_AT)

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.quarantined, summary.exit_code) == (len(rows) - 1, 1, 1)
    [entry] = registry.quarantine()
    assert entry.reason_kind == reason_kind
    assert message in entry.reason
    assert (entry.source, entry.row_number) == (str(metadata), 5)  # header is row 1
    assert entry.submitted["image_id"] == rows[3]["image_id"]
    assert entry.steward == "ana"
    registered = {image.image_id for image in registry.labels()}
    assert registered == {row["image_id"] for i, row in enumerate(rows) if i != 3}
    assert stored_files(registry) == {image.stored_path for image in registry.labels()}


def test_missing_columns_quarantine_every_row_as_submitted(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    write_rows(metadata, rows, ("lesion_id", "image_id", "dx", "dx_type", "age", "localization"))

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.quarantined) == (0, len(rows))
    entries = registry.quarantine()
    assert {e.reason_kind for e in entries} == {"missing-columns"}
    assert "file lacks column(s): sex" in entries[0].reason
    assert entries[0].submitted["dx"] == rows[0]["dx"]  # kept as submitted, nothing lost


def test_a_short_row_is_quarantined(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:4])
    metadata.write_text("\n".join(lines) + "\n")

    summary = import_export(registry, lab_export)

    assert summary.quarantined == 1
    assert registry.quarantine()[0].reason_kind == "missing-fields"


def test_one_image_id_twice_with_different_labels_quarantines_both(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    other_dx = "mel" if rows[0]["dx"] != "mel" else "nv"
    write_rows(metadata, [*rows, dict(rows[0], dx=other_dx, lesion_id="HAM_OTHER")])

    summary = import_export(registry, lab_export)

    assert summary.quarantined == 2
    entries = registry.quarantine()
    assert {e.row_number for e in entries} == {2, len(rows) + 2}
    assert all(e.reason_kind == "conflicting-labels" for e in entries)
    assert f"rows 2, {len(rows) + 2}" in entries[0].reason
    assert rows[0]["image_id"] not in {i.image_id for i in registry.labels()}


def test_one_image_id_twice_with_the_same_label_registers_once(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    write_rows(metadata, [*rows, rows[0]])

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.unchanged, summary.quarantined) == (len(rows), 1, 0)


def test_one_lesion_given_two_diagnoses_in_a_file_quarantines_its_rows(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    lesion = rows[0]["lesion_id"]
    lesion_rows = [r for r in rows if r["lesion_id"] == lesion]
    other_dx = "mel" if rows[0]["dx"] != "mel" else "nv"
    extra = dict(rows[0], image_id="EXTRA_0001", dx=other_dx)
    (lab_export / "images" / "EXTRA_0001.jpg").write_bytes(
        (lab_export / "images" / f"{rows[1]['image_id']}.jpg").read_bytes()
    )
    write_rows(metadata, [*rows, extra])

    summary = import_export(registry, lab_export)

    assert summary.quarantined == len(lesion_rows) + 1
    assert {e.reason_kind for e in registry.quarantine()} == {"lesion-conflict"}
    assert lesion not in {image.lesion_id for image in registry.labels()}
    assert summary.registered == len(rows) - len(lesion_rows)


def test_a_later_file_cannot_give_a_registered_lesion_another_diagnosis(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    other_dx = "mel" if rows[0]["dx"] != "mel" else "nv"
    (lab_export / "images" / "LATER_0001.jpg").write_bytes(
        (lab_export / "images" / f"{rows[1]['image_id']}.jpg").read_bytes()
    )
    write_rows(lab_export / "metadata.csv", [dict(rows[0], image_id="LATER_0001", dx=other_dx)])

    summary = import_export(registry, lab_export)

    assert summary.quarantined == 1
    [entry] = registry.quarantine()
    assert entry.reason_kind == "lesion-conflict"
    assert f"registered as {rows[0]['dx']}" in entry.reason


def test_a_changed_label_for_a_registered_image_is_not_an_overwrite(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    rows[0]["dx_type"] = "consensus" if rows[0]["dx_type"] != "consensus" else "histo"
    write_rows(lab_export / "metadata.csv", rows)

    summary = import_export(registry, lab_export)

    assert summary.quarantined == 1
    assert registry.quarantine()[0].reason_kind == "already-labelled"
    assert len(registry.history(rows[0]["image_id"])) == 1


def test_bom_and_crlf_line_ends_are_fine(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    content = metadata.read_text().replace("\n", "\r\n")
    metadata.write_bytes(b"\xef\xbb\xbf" + content.encode())

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.quarantined) == (len(read_rows(metadata)), 0)


def test_imports_in_several_batches_give_the_same_registry(registry, lab_export):
    summary = import_export(registry, lab_export, batch_size=5)

    assert summary.registered == len(read_rows(lab_export / "metadata.csv"))
    assert registry.stats().images == summary.registered


def test_confirmed_at_from_the_file_is_kept_and_filters_the_listing(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    for index, row in enumerate(rows):
        row["confirmed_at"] = "2026-01-05" if index < 10 else "2026-02-02T09:30:00+00:00"
    write_rows(metadata, rows, WITH_CONFIRMED_AT)
    import_export(registry, lab_export)

    later = list(registry.labels(since=datetime(2026, 2, 1, tzinfo=UTC)))

    assert {image.image_id for image in later} == {row["image_id"] for row in rows[10:]}
    assert later[0].confirmed_at == datetime(2026, 2, 2, 9, 30, tzinfo=UTC)


def test_listing_filters_by_label_source(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")

    histo = {image.image_id for image in registry.labels(sources=["histo"])}

    assert histo == {row["image_id"] for row in rows if row["dx_type"] == "histo"}
    assert histo and len(histo) < len(rows)


def test_add_registers_one_image_by_the_same_rules(registry, lab_export, tmp_path):
    picture = tmp_path / "ISIC_9000001.jpg"
    picture.write_bytes(
        (
            lab_export / "images" / f"{read_rows(lab_export / 'metadata.csv')[0]['image_id']}.jpg"
        ).read_bytes()
    )
    diagnosis = Diagnosis(dx="mel", dx_type="histo", age=55, sex="female", localization="back")

    summary = registry.add_image(
        picture, lesion_id="HAM_9000001", diagnosis=diagnosis, steward="bo"
    )

    assert summary.registered == 1
    [image] = list(registry.labels())
    assert (image.image_id, image.dx, image.steward) == ("ISIC_9000001", "mel", "bo")

    bad = registry.add_image(
        picture,
        lesion_id="HAM_9000001",
        image_id="ISIC_9000002",
        diagnosis=Diagnosis("nv", "histo", None, "female", "back"),
        steward="bo",
    )
    assert bad.quarantined == 1 and bad.rejections[0].reason_kind == "lesion-conflict"
    assert registry.quarantine()[0].source == str(picture)


def test_relabel_appends_an_event_and_keeps_the_history(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    single = next(r for r in rows if sum(x["lesion_id"] == r["lesion_id"] for x in rows) == 1)
    new_dx = "mel" if single["dx"] != "mel" else "bkl"

    [event] = registry.relabel(
        single["image_id"], dx=new_dx, dx_type="histo", reason="second pathologist", steward="cy"
    )

    history = registry.history(single["image_id"])
    assert [e.kind for e in history] == ["import", "relabel"]
    assert history[0].diagnosis.dx == single["dx"]  # the old label is still there
    assert (event.diagnosis.dx, event.reason, event.steward) == (new_dx, "second pathologist", "cy")
    assert event.diagnosis.age == history[0].diagnosis.age  # metadata carried over
    current = {i.image_id: i for i in registry.labels()}[single["image_id"]]
    assert (current.dx, current.label_version) == (new_dx, 2)


def test_relabel_keeps_one_diagnosis_per_lesion(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    lesion = next(
        r["lesion_id"] for r in rows if sum(x["lesion_id"] == r["lesion_id"] for x in rows) > 1
    )
    images = [r for r in rows if r["lesion_id"] == lesion]
    new_dx = "mel" if images[0]["dx"] != "mel" else "nv"

    with pytest.raises(LesionConflict, match="--whole-lesion"):
        registry.relabel(
            images[0]["image_id"], dx=new_dx, dx_type="histo", reason="r", steward="cy"
        )
    events = registry.relabel(
        images[0]["image_id"],
        dx=new_dx,
        dx_type="histo",
        reason="r",
        steward="cy",
        whole_lesion=True,
    )

    assert {e.image_id for e in events} == {r["image_id"] for r in images}
    assert {i.dx for i in registry.labels() if i.lesion_id == lesion} == {new_dx}


def test_relabel_refuses_unknown_images_and_vocabulary(registry, lab_export):
    import_export(registry, lab_export)
    with pytest.raises(UnknownImage):
        registry.relabel("ISIC_NOPE", dx="mel", dx_type="histo", reason="r", steward="cy")
    image_id = read_rows(lab_export / "metadata.csv")[0]["image_id"]
    with pytest.raises(RejectedSubmission, match="dx 'cancer'"):
        registry.relabel(image_id, dx="cancer", dx_type="histo", reason="r", steward="cy")
    with pytest.raises(RejectedSubmission, match="needs a reason"):
        registry.relabel(image_id, dx="mel", dx_type="histo", reason=" ", steward="cy")


def test_label_events_cannot_be_updated_or_deleted(registry, lab_export, database_url):
    import_export(registry, lab_export)
    engine = create_engine(database_url)
    try:
        for statement in ("UPDATE label_events SET dx = 'mel'", "DELETE FROM label_events"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
    finally:
        engine.dispose()
    assert registry.stats().label_events == len(read_rows(lab_export / "metadata.csv"))


def test_stats_count_images_lesions_and_quarantine_reasons(registry, lab_export):
    rows = read_rows(lab_export / "metadata.csv")
    rows[0]["sex"] = "?"
    write_rows(lab_export / "metadata.csv", rows)
    import_export(registry, lab_export)

    stats = registry.stats()

    assert stats.images == len(rows) - 1
    assert stats.lesions == len({r["lesion_id"] for r in rows[1:]})
    assert sum(stats.by_dx.values()) == stats.images
    assert stats.quarantine_by_reason == {"invalid-sex": 1}


def test_labels_confirmed_before_a_cutoff_are_older_than_new_ones(registry, lab_export):
    import_export(registry, lab_export)
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert list(registry.labels(since=cutoff)) == []


def test_odd_ids_are_quarantined_without_costing_the_valid_rows(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    rows = read_rows(metadata)
    rows[1]["image_id"] = "ISIC_" + "9" * 300
    rows[2]["image_id"] = "ISIC\x00_0002"
    rows[3]["lesion_id"] = "HAM 0001"
    write_rows(metadata, rows)

    summary = import_export(registry, lab_export)

    assert (summary.registered, summary.quarantined) == (len(rows) - 3, 3)
    kinds = sorted(entry.reason_kind for entry in registry.quarantine())
    assert kinds == ["invalid-image-id", "invalid-image-id", "invalid-lesion-id"]


def test_an_overlong_steward_name_is_refused_before_anything_is_written(registry, lab_export):
    with pytest.raises(RejectedSubmission, match="steward name must be 1 to 128"):
        registry.import_metadata(
            lab_export / "metadata.csv", lab_export / "images", steward="x" * 200
        )
    assert registry.stats().images == 0


def test_the_same_file_under_another_path_spelling_changes_nothing(registry, lab_export):
    rows = read_rows(lab_export / "metadata.csv")
    rows[0]["sex"] = "?"
    write_rows(lab_export / "metadata.csv", rows)
    import_export(registry, lab_export)
    roundabout = lab_export / ".." / lab_export.name / "metadata.csv"

    again = registry.import_metadata(roundabout, lab_export / "images", steward="ana")

    assert again.quarantined == 1 and len(registry.quarantine()) == 1


def test_reimporting_the_original_export_after_a_relabel_changes_nothing(registry, lab_export):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    new_dx = "mel" if rows[0]["dx"] != "mel" else "nv"
    registry.relabel(rows[0]["image_id"], dx=new_dx, dx_type="histo", reason="review",
                     steward="cy", whole_lesion=True)  # fmt: skip
    before = (list(registry.labels()), registry.stats())

    again = import_export(registry, lab_export)

    assert (again.registered, again.quarantined, again.unchanged) == (0, 0, len(rows))
    assert (list(registry.labels()), registry.stats()) == before  # the relabel stands


def test_a_csv_syntax_error_stops_the_import_before_anything_is_written(registry, lab_export):
    metadata = lab_export / "metadata.csv"
    metadata.write_text(metadata.read_text() + 'HAM_X,ISIC_X,nv,histo,40,male,"' + "x" * 200_000)

    with pytest.raises(MetadataFileError, match=r"metadata.csv, line \d+: not a readable CSV"):
        import_export(registry, lab_export)

    assert registry.stats().images == 0


def test_a_file_over_the_size_limit_is_refused_unread(registry, lab_export):
    registry.rules = IntakeRules(max_file_bytes=500)

    summary = import_export(registry, lab_export)

    assert summary.registered == 0
    assert {e.reason_kind for e in registry.quarantine()} == {"too-large"}
    assert "exceeds 500 bytes" in registry.quarantine()[0].reason


def test_a_concurrent_registration_cannot_give_a_lesion_two_diagnoses(
    registry, database_url, lab_export, tmp_path
):
    rows = read_rows(lab_export / "metadata.csv")
    first = rows[0]
    other_dx = "mel" if first["dx"] != "mel" else "nv"
    rival_image = tmp_path / "RIVAL_0001.jpg"
    Image.open(lab_export / "images" / f"{rows[1]['image_id']}.jpg").rotate(90).save(rival_image)
    rival = LabelRegistry(
        LabelRepository.open(database_url, migrate=False), registry.store, IntakeRules()
    )
    decided_then_commit = registry.repository.record_intake
    raced = []

    def rival_commits_first(*args, **kwargs):
        if not raced:  # after this import decided, before it commits
            raced.append(rival.add_image(
                rival_image, lesion_id=first["lesion_id"], steward="rival",
                diagnosis=Diagnosis(other_dx, "histo", None, "unknown", "unknown"),
            ))  # fmt: skip
        return decided_then_commit(*args, **kwargs)

    registry.repository.record_intake = rival_commits_first  # type: ignore[method-assign]
    try:
        summary = import_export(registry, lab_export)
    finally:
        rival.repository.close()

    assert raced[0].registered == 1
    diagnoses = {i.dx for i in registry.labels() if i.lesion_id == first["lesion_id"]}
    assert diagnoses == {other_dx}  # one diagnosis: the rival's, committed first
    lesion_rows = sum(r["lesion_id"] == first["lesion_id"] for r in rows)
    assert summary.quarantined == lesion_rows
    assert {e.reason_kind for e in registry.quarantine()} == {"lesion-conflict"}
    assert summary.registered == len(rows) - lesion_rows


def planner_row_count(database_url: str, table: str) -> float | None:
    """The row count the database's query planner believes `table` has (None: unknown)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                query = "SELECT reltuples FROM pg_class WHERE relname = :table"
                reltuples = connection.execute(text(query), {"table": table}).scalar_one()
                return float(reltuples) if reltuples >= 0 else None
            analyzed = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
            if not connection.execute(text(analyzed)).scalar_one():
                return None
            # each row of a table's statistics starts with the table's row count
            query = "SELECT stat FROM sqlite_stat1 WHERE tbl = :table LIMIT 1"
            stat = connection.execute(text(query), {"table": table}).scalar()
            return float(stat.split()[0]) if stat else None
    finally:
        engine.dispose()


def test_a_bulk_import_leaves_the_planner_knowing_the_table_sizes(
    database_url, image_store, tmp_path
):
    """Right after a lab export of 10,000 rows, PostgreSQL planned the current-labels read
    for empty tables and took 3 s over it; after a bulk import the planner knows better."""
    export = tmp_path / "bulk"
    write_sample_data(export, SampleSpec(n=520, seed=3, image_size=32))
    repository = LabelRepository.open(database_url, migrate=True)
    registry = LabelRegistry(repository, image_store, IntakeRules())
    try:
        summary = import_export(registry, export)
    finally:
        repository.close()

    assert summary.registered == 520
    for table in ("images", "label_events"):
        assert planner_row_count(database_url, table) == 520, table
