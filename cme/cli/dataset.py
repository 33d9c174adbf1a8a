"""`cme export`, `cme validate`, `cme snapshot ...`: the dataset stages of dvc.yaml."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from cme.cli.common import (
    OVERRIDES,
    STEWARD,
    OutputFormat,
    command_group,
    emit,
    fail,
    on_terminal,
    opened_app,
    progress,
)

VERSIONING = "versioning data/ with DVC"

snapshot_app = command_group(
    "Freeze the current labels as a DVC-versioned snapshot (default), list, restore.",
    invoke_without_command=True,
)

SNAPSHOT_COLUMNS = (
    "snapshot_id", "created_at", "images", "lesions", "melanoma", "label_sources", "dvc_hash",
    "created_by",
)  # fmt: skip


def export(
    out: Path = typer.Option(
        Path(".cme/pipeline/candidate.csv"), "--out", help="Where to write the manifest CSV."
    ),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Write the manifest a snapshot would freeze now (current labels, lesion splits)."""
    from usecases.snapshots import export_manifest

    with opened_app() as cme:
        manifest = export_manifest(cme, cme.params(overrides), out)
    typer.echo(f"{out}: {len(manifest)} images, {manifest['lesion_id'].nunique()} lesions")


def validate(
    snapshot: str | None = typer.Option(None, "--snapshot", help="Validate a recorded snapshot."),
    manifest_file: Path | None = typer.Option(
        None, "--manifest", help="Validate a manifest file (as `cme export` writes)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Also write the JSON report here."),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Validate with Great Expectations (the current labels by default). Exit 1 on failure,
    naming the failed expectations and offending rows; Data Docs under $CME_HOME/reports."""
    from pipelines.dataset.manifest import read_manifest
    from usecases import snapshots

    if snapshot and manifest_file:
        fail("give --snapshot or --manifest, not both")
    with opened_app() as cme:
        params = cme.params(overrides)
        if snapshot:
            manifest, subject = snapshots.snapshot_manifest(cme, snapshot), f"snapshot {snapshot}"
        elif manifest_file:
            manifest, subject = read_manifest(manifest_file), str(manifest_file)
        else:
            manifest, subject = snapshots.current_manifest(cme, params), "the current labels"
        outcome = snapshots.validate(cme, params, manifest, subject, report)
    for line in outcome.summary_lines():
        typer.echo(line)
    raise typer.Exit(0 if outcome.success else 1)


@snapshot_app.callback()
def snapshot(
    ctx: typer.Context,
    manifest_file: Path | None = typer.Option(
        None, "--manifest", help="Freeze this manifest (as `cme export` wrote) instead."
    ),
    record_file: Path | None = typer.Option(
        None, "--record", help="Also write the snapshot's record (id, DVC hash) here as JSON."
    ),
    steward: str | None = STEWARD,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Freeze the current labels into data/snapshots/<id>/ and version data/ with DVC;
    prints the snapshot id and the DVC hash."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.dataset.manifest import read_manifest
    from usecases import snapshots

    steps = snapshots.SNAPSHOT_STEPS
    with opened_app() as cme, progress("snapshot", steps, "steps", time_left=False) as advance:
        params = cme.params(overrides)
        manifest = read_manifest(manifest_file) if manifest_file else None

        def on_step(done: int, doing: str) -> None:
            advance(done, doing, total=steps, unit="steps")

        def on_files(doing: str, done: int, total: int | None) -> None:
            if total is None:  # DVC counting without knowing how many: no bar to fill
                advance(snapshots.VERSIONING_STEP, f"{VERSIONING}: {doing}: {done:,} files",
                        total=steps, unit="steps")  # fmt: skip
            else:
                advance(done, f"{VERSIONING}: {doing}", total=total, unit="files")

        outcome = snapshots.take_snapshot(
            cme, params, steward=cme.steward(steward), manifest=manifest, on_step=on_step,
            on_files=on_files if on_terminal() else None,  # a line a file in a log: no
        )  # fmt: skip
    record = outcome.record
    if record_file is not None:
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(asdict(record), indent=2, default=str) + "\n")
    verb = "snapshot" if outcome.created else "unchanged since snapshot"
    typer.echo(f"{verb} {record.snapshot_id}")
    typer.echo(f"dvc hash {record.dvc_hash}")
    typer.echo(
        f"{record.images} images, {record.lesions} lesions, {record.melanoma} melanoma "
        f"({', '.join(record.label_sources)}) in {outcome.folder}"
    )
    for line in outcome.drift.summary_lines():
        typer.echo(line)


@snapshot_app.command("list")
def list_snapshots(output: OutputFormat = typer.Option(OutputFormat.table, "--format")) -> None:
    """Every recorded snapshot, oldest first."""
    with opened_app() as cme:
        records = cme.label_registry().snapshots()
    rows = [
        {
            **asdict(record),
            "created_at": record.created_at.isoformat(),
            "label_sources": ",".join(record.label_sources),
        }
        for record in records
    ]
    emit(
        rows,
        SNAPSHOT_COLUMNS
        if output is OutputFormat.table
        else [*SNAPSHOT_COLUMNS, "manifest_sha256", "labels_as_of", "previous_snapshot_id"],
        output,
    )


@snapshot_app.command("restore")
def restore(
    reference: str = typer.Argument(..., help="A snapshot id or a DVC hash (xxxx.dir)."),
    to: Path = typer.Option(..., "--to", help="New folder to restore the data folder into."),
) -> None:
    """Restore the versioned data folder, byte for byte, from the DVC remote."""
    from usecases.snapshots import restore_snapshot

    with opened_app() as cme:
        dvc_hash = restore_snapshot(cme, reference, to)
    typer.echo(f"restored {dvc_hash} to {to}")
