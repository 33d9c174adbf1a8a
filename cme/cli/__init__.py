"""The `cme` command line: a thin layer over the domain functions."""

from __future__ import annotations

import sys

import typer

from cme.cli import (
    access,
    data,
    dataset,
    db,
    flows,
    labels,
    models,
    screening,
    serving,
    training,
    webhooks,
)
from cme.cli.common import command_group, fail, run_app_command

app = command_group(
    name="cme",
    help="Continual retraining of a melanoma classifier (label registry, validation, training, "
    "champion/challenger gate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(labels.app, name="labels")
app.add_typer(db.app, name="db")
app.add_typer(access.app, name="access")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(dataset.snapshot_app, name="snapshot")
app.command("export")(dataset.export)
app.command("validate")(dataset.validate)
app.command("train")(training.train)
app.command("evaluate")(models.evaluate)
app.command("promote")(models.promote)
app.command("approve")(models.approve)
app.command("reject")(models.reject)
app.command("rollback")(models.rollback)
app.command("status")(models.status)
app.command("audit")(models.audit)
app.command("retrain")(flows.retrain)
app.command("inbox")(flows.inbox)
app.command("deploy")(flows.deploy)
app.command("demo")(flows.demo)
app.command("backtest")(flows.backtest)
app.command("backtest-compare")(flows.backtest_compare)
app.command("predict")(serving.predict)
app.command("serve")(serving.serve)
app.command("monitor")(serving.monitor)
app.command("screen")(screening.screen)
app.command("sample-data")(data.sample_data)
app.command("params")(data.show_params)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from importlib.metadata import version as package_version

        typer.echo(f"cme {package_version('cme')}")
        raise typer.Exit()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "fail", "main", "run_app_command"]
