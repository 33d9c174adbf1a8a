"""`cme predict`, `cme serve`, `cme monitor`: the champion's answers, now and in the clinic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cme.cli.common import (
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    OVERRIDES,
    OutputFormat,
    emit,
    fail,
    opened_app,
)

if TYPE_CHECKING:
    from usecases.serving import ServedModel

MODEL_URI = typer.Option(
    None,
    "--model-uri",
    help="Any MLflow model URI; default models:/<CME_MODEL_NAME>@champion.",
)
PREDICTION_COLUMNS = ("image", "probability", "decision", "threshold", "model_version")


def predict(
    images: list[Path] = typer.Argument(
        ..., help="Image files (JPEG, PNG, ...).", show_default=False
    ),
    model_uri: str | None = MODEL_URI,
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv, json."),
    log_predictions: bool = typer.Option(
        False, "--log-predictions", help="Record them in the label registry for `cme monitor`."
    ),
) -> None:
    """Probability of melanoma for each image, the decision at the model's operating threshold
    and the model version. Exit 1 when an image could not be read (the others are answered)."""
    from registry.labels.service import utc_now
    from usecases.serving import CLI_SOURCE, Refusal, alias_uri, predict_files

    files, refused = [], []
    for path in images:
        try:
            files.append((str(path), path.read_bytes()))
        except OSError as error:
            refused.append(Refusal(str(path), f"cannot read the file ({error.strerror or error})"))
    table = output is OutputFormat.table
    with opened_app() as cme:
        cme.tracking()
        served = _loaded(model_uri or alias_uri(cme.settings.model_name))
        answered, not_images = predict_files(served, files)
        refused += not_images
        # The answers first: a failure to log them must not withhold them.
        emit((a.row() for a in answered), PREDICTION_COLUMNS + (() if table else ("sha256",)),
             output)  # fmt: skip
        if log_predictions:
            at, name = utc_now(), cme.settings.model_name
            records = [answer.record(name, CLI_SOURCE, at) for answer in answered]
            cme.prediction_log().record_predictions(records)
    for refusal in refused:
        typer.secho(f"error: {refusal.image_name}: {refusal.reason}", fg=typer.colors.RED, err=True)
    if refused:
        raise typer.Exit(EXIT_REFUSED)


def _loaded(uri: str) -> ServedModel:
    from mlflow.exceptions import MlflowException

    from registry.mlflow_errors import is_unreachable
    from usecases.serving import load_served_model

    try:
        return load_served_model(uri)
    except MlflowException as error:  # unreachable (exit 3), or no such model (exit 1)
        code = EXIT_UNAVAILABLE if is_unreachable(error) else EXIT_REFUSED
        fail(f"cannot load {uri}: {error.message}", code)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: all)."),
    port: int = typer.Option(5001, "--port", help="Port to listen on."),
    model_uri: str | None = typer.Option(
        None, "--model-uri", help="Serve this URI as it is, instead of following --alias."
    ),
    alias: str = typer.Option("champion", "--alias", help="Registry alias to serve and follow."),
    poll_seconds: float = typer.Option(
        30.0,
        "--poll-seconds",
        min=0.1,
        help="Seconds between asking where the alias points.",
    ),
    log_predictions: bool = typer.Option(
        True,
        "--log-predictions/--no-log-predictions",
        help="Record each prediction in the label registry for `cme monitor`.",
    ),
    max_request_mb: float = typer.Option(
        64.0, "--max-request-mb", min=0.001, help="Largest request body, in MiB."
    ),
    max_concurrent_requests: int = typer.Option(
        32, "--max-concurrent-requests", min=1, help="More at once are answered 503."
    ),
) -> None:
    """Answer POST /invocations (MLflow's scoring protocol) with the probability of melanoma,
    the decision and the model version, following the champion alias as it moves."""
    from usecases.serving import NoModelToServe, ServeOptions
    from usecases.serving import serve as run_server

    options = ServeOptions(
        host=host, port=port, model_uri=model_uri, alias=alias, poll_seconds=poll_seconds,
        log_predictions=log_predictions, max_request_bytes=int(max_request_mb * 2**20),
        max_concurrent_requests=max_concurrent_requests,
    )  # fmt: skip
    with opened_app() as cme:
        try:
            run_server(cme, options, announce=typer.echo)
        except NoModelToServe as error:
            fail(str(error), EXIT_REFUSED)


def monitor(
    since: datetime | None = typer.Option(
        None, "--since", help="Only predictions made from this date (YYYY-MM-DD, UTC) on."
    ),
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json."),
    overrides: list[str] = OVERRIDES,
) -> None:
    """The champion's real-world sensitivity, specificity and calibration on its logged
    predictions whose histopathology label arrived later, with the label delay. Exit 1 when
    the champion is below the policy's floors."""
    from pipelines.monitoring import render_text, to_json
    from usecases.real_world_monitoring import real_world_report

    with opened_app() as cme:
        report = real_world_report(cme, cme.params(overrides), _utc(since))
    if output is OutputFormat.json:
        document = to_json(report.performance) | {
            "champion": report.champion, "labelled_before_prediction": report.labelled_before,
        }  # fmt: skip
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render_text(report.performance, champion=report.champion), nl=False)
        if report.labelled_before:
            typer.echo(f"left out: {report.labelled_before} predictions of images whose label was "
                       "already registered when they were made")  # fmt: skip
    if report.champion_findings:
        raise typer.Exit(EXIT_REFUSED)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
