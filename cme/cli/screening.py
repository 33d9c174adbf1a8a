"""`cme screen`: pre-screen a patient's images (or a clinic day's) on Dask workers into a
ranked worklist for the dermatologist."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cme.cli.common import (
    EXIT_REFUSED,
    OVERRIDES,
    Advance,
    OutputFormat,
    emit,
    fail,
    opened_app,
    progress,
)

if TYPE_CHECKING:
    from usecases.screening import BatchOutcome, ScreeningModel

WORKLIST_SHOWN = ("rank", "patient_id", "image", "probability", "decision", "model_version")


def screen(
    source: str = typer.Argument(
        ...,
        help="A folder of one patient's images, or a CSV manifest (image, patient_id, "
        "lesion_id, body_site): a local path or an object-store URL (s3://bucket/day/).",
        show_default=False,
    ),
    patient: str | None = typer.Option(
        None,
        "--patient",
        help="The patient's id: required for a folder; for a manifest, only this patient's rows.",
    ),
    model_uri: str | None = typer.Option(
        None,
        "--model-uri",
        help="A registered version, models:/NAME/VERSION or "
        "models:/NAME@ALIAS; default the champion.",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Dask workers of the local cluster; default one per "
        "core (ignored with CME_DASK_ADDRESS).",
    ),
    out: Path = typer.Option(
        Path(".cme/screening"), "--out", help="Where worklist.csv, .json and .html go."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per Dask task."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv, json."),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Pre-screen images on Dask workers into each patient's worklist, highest probability
    of melanoma first.

    One model version scores every image in batches; every prediction goes to the
    prediction log. Images scored before by that version are not scored again, so a run that
    was stopped resumes. Exit 1 when some files could not be scored (each is named with the
    reason; the rest are scored)."""
    from cme.cli.flows import _finished, _prefect_ready
    from usecases.screening import ScreeningSourceError, on_local_disk, read_source

    try:
        local = on_local_disk(source)
        source = str(Path(source).resolve()) if local else source
        images = len(read_source(source, patient))  # a usage error before any worker starts
    except ScreeningSourceError as error:
        fail(str(error))
    settings = _prefect_ready()  # before Prefect is imported: it reads its settings once
    from cme.orchestration import shared_prefect_server
    from flows.batch_screening import BATCHES, in_flight, on_dask

    remote = settings.dask_address
    model = _screening_model(model_uri)
    # The flow logs a line per batch; on a terminal a bar below them.
    bar = progress("screening", images, "images", plain_lines=False)
    cluster = _cluster(remote, workers, model, overrides)
    with (shared_prefect_server(cluster) as address, bar as advance,
          BATCHES.watching(partial(_advanced, advance))):  # fmt: skip
        state = on_dask(address)(
            source=source, out=str(out.resolve()), patient=patient, model_uri=model.uri,
            batch_size=batch_size, overrides=overrides,
            carry_images=bool(remote) and local,  # its workers cannot read our disk
            in_flight=in_flight(remote, workers), return_state=True,
        )  # fmt: skip
        summary = _finished(state)
    _show(summary, output)
    for refused in summary["not_scored"]:
        typer.secho(f"not scored: {refused['image']}: {refused['reason']}", err=True,
                    fg=typer.colors.RED)  # fmt: skip
    if summary["not_scored"]:
        raise typer.Exit(EXIT_REFUSED)


def _screening_model(model_uri: str | None) -> ScreeningModel:
    """The version to screen with, resolved before anything starts (none is an error)."""
    from usecases.screening import screening_model

    with opened_app() as cme:
        return screening_model(cme, model_uri)


def _cluster(
    remote: str | None, workers: int | None, model: ScreeningModel, overrides: list[str]
) -> AbstractContextManager[str]:
    """The Dask cluster to screen on: the remote one, or an embedded one whose workers load
    the model while Prefect's server starts."""
    from flows.batch_screening import ScreeningPlan, warm_cluster

    if remote:
        return nullcontext(remote)
    return warm_cluster(workers, ScreeningPlan(model, tuple(overrides)))


def _advanced(advance: Advance, outcomes: Sequence[BatchOutcome]) -> None:
    from usecases.screening import images_done, progress_counts

    advance(images_done(outcomes), progress_counts(outcomes))


def _show(summary: dict[str, Any], output: OutputFormat) -> None:
    import pandas as pd

    text = {"patient_id": str, "model_version": str, "lesion_id": str, "body_site": str}
    worklist = pd.read_csv(summary["worklist_csv"], dtype=text)
    worklist = worklist.astype(object).where(worklist.notna(), None)
    columns = WORKLIST_SHOWN if output is OutputFormat.table else tuple(worklist.columns)
    emit(worklist.to_dict("records"), columns, output)
    typer.echo(
        f"{summary['images']} images of {len(summary['patients'])} patients: "
        f"{summary['scored']} scored now, {summary['already_scored']} scored before by "
        f"{summary['model_uri']}, {len(summary['not_scored'])} not scored; worklist "
        f"{summary['worklist_html']}",
        err=output is not OutputFormat.table,
    )
