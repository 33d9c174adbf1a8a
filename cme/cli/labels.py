"""`cme labels ...`: what data stewards run."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from cme.cli.common import (
    EXIT_USAGE,
    OVERRIDES,
    STEWARD,
    OutputFormat,
    command_group,
    data_rows,
    emit,
    fail,
    opened_app,
    progress,
)
from registry.labels.domain import METADATA_COLUMNS

app = command_group("Register labelled images, correct labels, read the registry.")

TABLE_COLUMNS = ("image_id", "lesion_id", *METADATA_COLUMNS[2:], "confirmed_at")
LABEL_COLUMNS = (
    *TABLE_COLUMNS,
    "steward",
    "label_version",
    "sha256",
    "width",
    "height",
    "brightness_mean",
    "brightness_std",
    "stored_path",
)
QUARANTINE_COLUMNS = (
    "quarantine_id",
    "source",
    "row_number",
    "image_id",
    "reason_kind",
    "reason",
    "steward",
    "quarantined_at",
    "submitted",
)


@app.command("import")
def import_metadata(
    metadata: Path = typer.Argument(..., help="HAM10000-layout CSV (lesion_id,image_id,dx,...)."),
    images: Path = typer.Option(..., "--images", help="Folder holding <image_id>.jpg files."),
    steward: str | None = STEWARD,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Import a lab export. Exit 0: every row in; 1: some rows quarantined; 2: usage error."""
    if not images.is_dir():
        fail(f"--images {images}: no such folder")
    with opened_app() as cme:
        intake = cme.params(overrides).intake
        registry = cme.label_registry(intake.rules())
        with progress(f"importing {metadata.name}", data_rows(metadata), "rows") as advance:
            summary = registry.import_metadata(
                metadata,
                images,
                steward=cme.steward(steward),
                batch_size=intake.batch_size,
                on_batch=lambda done: advance(done.rows, done.outcome_counts()),
            )
    typer.echo(f"{summary.source}: {summary.counts_line()}")
    for reason_kind, count in sorted(summary.reasons.items(), key=lambda item: -item[1]):
        typer.echo(f"  {count:6d}  {reason_kind}")
    for rejection in summary.rejections[:10]:
        typer.echo(
            f"  {rejection.source}, row {rejection.row_number} "
            f"(image_id {rejection.image_id or '?'}): {rejection.reason}",
            err=True,
        )
    if summary.quarantined > 10:
        typer.echo(f"  ... see `cme labels quarantine` for all {summary.quarantined}", err=True)
    raise typer.Exit(summary.exit_code)


@app.command("add")
def add(
    image: Path = typer.Argument(..., help="The image file (JPEG or PNG)."),
    lesion_id: str = typer.Option(..., "--lesion-id"),
    dx: str = typer.Option(..., "--dx", help="akiec, bcc, bkl, df, mel, nv or vasc."),
    dx_type: str = typer.Option(..., "--dx-type", help="histo, follow_up, consensus, confocal."),
    age: float | None = typer.Option(None, "--age"),
    sex: str = typer.Option("unknown", "--sex", help="male, female or unknown."),
    localization: str = typer.Option("unknown", "--localization"),
    image_id: str | None = typer.Option(None, "--image-id", help="Default: the file's stem."),
    steward: str | None = STEWARD,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Register one labelled image. Exit 0 when registered (or already there), 1 if refused."""
    from registry.labels import Diagnosis

    if not image.is_file():
        fail(f"{image}: no such file")
    diagnosis = Diagnosis(dx=dx, dx_type=dx_type, age=age, sex=sex, localization=localization)
    with opened_app() as cme:
        registry = cme.label_registry(cme.params(overrides).intake.rules())
        summary = registry.add_image(
            image,
            lesion_id=lesion_id,
            diagnosis=diagnosis,
            steward=cme.steward(steward),
            image_id=image_id,
        )
    if summary.rejections:
        rejection = summary.rejections[0]
        typer.secho(f"quarantined {image}: {rejection.reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    state = "registered" if summary.registered else "already registered, unchanged"
    typer.echo(f"{image_id or image.stem}: {state}")


@app.command("relabel")
def relabel(
    image_id: str = typer.Argument(...),
    dx: str = typer.Option(..., "--dx"),
    dx_type: str = typer.Option(..., "--dx-type"),
    reason: str = typer.Option(..., "--reason", help="Why the label changes (kept forever)."),
    whole_lesion: bool = typer.Option(
        False, "--whole-lesion", help="Relabel every image of the lesion (one diagnosis each)."
    ),
    steward: str | None = STEWARD,
) -> None:
    """Correct a label: appends a new label event; the history keeps every earlier one."""
    from registry.labels import RejectedSubmission

    with opened_app() as cme:
        try:
            events = cme.label_registry().relabel(
                image_id,
                dx=dx,
                dx_type=dx_type,
                reason=reason,
                steward=cme.steward(steward),
                whole_lesion=whole_lesion,
            )
        except RejectedSubmission as error:
            fail(str(error), EXIT_USAGE)
    if not events:
        typer.echo(f"{image_id}: already {dx}/{dx_type}, nothing changed")
    for event in events:
        typer.echo(f"{event.image_id}: now {event.diagnosis.dx}/{event.diagnosis.dx_type}")


@app.command("list")
def list_labels(
    since: datetime | None = typer.Option(
        None, "--since", help="Only labels confirmed at or after this ISO date."
    ),
    source: str | None = typer.Option(
        None, "--source", help="Comma-separated dx_type values, e.g. histo,consensus."
    ),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format"),
) -> None:
    """The current label of every registered image."""
    sources = [s.strip() for s in source.split(",") if s.strip()] if source else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with opened_app() as cme:
        rows = (
            _label_row(image) for image in cme.label_registry().labels(since=since, sources=sources)
        )
        emit(rows, TABLE_COLUMNS if output is OutputFormat.table else LABEL_COLUMNS, output)


@app.command("history")
def history(
    image_id: str = typer.Argument(...),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format"),
) -> None:
    """Every label event of one image, oldest first."""
    with opened_app() as cme:
        events = cme.label_registry().history(image_id)
    if not events:
        fail(f"no registered image has image_id {image_id}")
    rows = [
        {
            "event_id": e.event_id,
            "kind": e.kind,
            **asdict(e.diagnosis),
            "confirmed_at": e.confirmed_at.isoformat(),
            "steward": e.steward,
            "reason": e.reason,
            "source": e.source,
        }
        for e in events
    ]
    emit(rows, list(rows[0]), output)


@app.command("quarantine")
def quarantine(output: OutputFormat = typer.Option(OutputFormat.table, "--format")) -> None:
    """Rows that were refused, as submitted, with the reason."""
    with opened_app() as cme:
        entries = cme.label_registry().quarantine()
    rows = [
        {**asdict(entry), "quarantined_at": entry.quarantined_at.isoformat()} for entry in entries
    ]
    if output is not OutputFormat.json:
        for row in rows:
            row["submitted"] = ",".join(f"{k}={v}" for k, v in row["submitted"].items())
    columns = QUARANTINE_COLUMNS if output is not OutputFormat.table else QUARANTINE_COLUMNS[:-1]
    emit(rows, columns, output)


@app.command("stats")
def stats(output: OutputFormat = typer.Option(OutputFormat.table, "--format")) -> None:
    """Counts of images, lesions, labels by diagnosis and source, and quarantine reasons."""
    with opened_app() as cme:
        figures = cme.label_registry().stats()
    if output is OutputFormat.json:
        import json

        typer.echo(json.dumps(asdict(figures), indent=2))
        return
    typer.echo(
        f"images {figures.images}  lesions {figures.lesions}  "
        f"label events {figures.label_events}  quarantined {figures.quarantined}"
    )
    for title, counts in (
        ("dx", figures.by_dx),
        ("dx_type", figures.by_dx_type),
        ("quarantine reason", figures.quarantine_by_reason),
    ):
        typer.echo(f"{title}:")
        for key, count in counts.items():
            typer.echo(f"  {key:<22} {count}")
        if not counts:
            typer.echo("  (none)")


def _label_row(image: Any) -> dict[str, Any]:
    diagnosis, facts = image.diagnosis, image.facts
    return {
        "image_id": image.image_id,
        "lesion_id": image.lesion_id,
        "dx": diagnosis.dx,
        "dx_type": diagnosis.dx_type,
        "age": diagnosis.age,
        "sex": diagnosis.sex,
        "localization": diagnosis.localization,
        "confirmed_at": image.confirmed_at.isoformat(),
        "steward": image.steward,
        "label_version": image.label_version,
        "sha256": facts.sha256,
        "width": facts.width,
        "height": facts.height,
        "brightness_mean": facts.brightness_mean,
        "brightness_std": facts.brightness_std,
        "stored_path": image.stored_path,
    }
