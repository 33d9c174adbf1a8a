"""What every command shares: opening the app, overrides, formats and error handling."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

import typer

from cme.bootstrap import App, bootstrap
from pipelines import errors

T = TypeVar("T")

# The exit statuses of the kinds of error (`pipelines.errors`), as the commands name them.
EXIT_REFUSED = errors.EXIT_REFUSED
EXIT_USAGE = errors.EXIT_BAD_INPUT
EXIT_UNAVAILABLE = errors.EXIT_RETRYABLE
EXIT_FAULT = errors.EXIT_FAULT


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


OVERRIDES = typer.Option(
    [], "-S", "--set", help="Override a params.yaml value, e.g. -S intake.batch_size=200."
)

STEWARD = typer.Option(None, "--steward", help="Who does this; default $CME_STEWARD, $USER.")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def opened_app() -> Iterator[App]:
    """The app for one command; a platform error ends it with its kind's exit status (bad
    input 2, refused 1, unavailable or retryable 3, fault 4) and its message, no traceback."""
    app = bootstrap()
    try:
        yield app
    except errors.PlatformError as error:
        fail(str(error), error.exit_code)
    finally:
        app.close()


def run_app_command(command: Callable[[App], T]) -> T:
    with opened_app() as app:
        return command(app)


def emit(rows: Iterable[dict[str, Any]], columns: Sequence[str], output: OutputFormat) -> None:
    """Write rows as an aligned table, CSV or a JSON array, streaming where the format allows."""
    if output is OutputFormat.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elif output is OutputFormat.json:
        _emit_json(rows)
    else:
        _emit_table(list(rows), columns)


def _emit_json(rows: Iterable[dict[str, Any]]) -> None:
    out = sys.stdout
    out.write("[")
    for index, row in enumerate(rows):
        out.write(",\n" if index else "\n")
        out.write(json.dumps(row, default=str))
    out.write("\n]\n")


def _emit_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)
    ]
    typer.echo(
        "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))
    )
    for line in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    if not rows:
        typer.echo("(none)")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
