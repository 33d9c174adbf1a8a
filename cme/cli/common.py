"""What every command shares: opening the app, overrides, formats and error handling."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import typer

from cme.bootstrap import App, bootstrap
from pipelines import errors
from pipelines.durations import duration

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


def command_group(help: str, **settings: Any) -> typer.Typer:
    """A Typer app whose help reads as Markdown: a docstring's paragraph is rewrapped to the
    terminal's width instead of keeping the source's line breaks."""
    return typer.Typer(help=help, rich_markup_mode="markdown", **settings)


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


class Advance(Protocol):
    def __call__(
        self, done: int, detail: str, total: int | None = None, unit: str | None = None
    ) -> None: ...


def on_terminal() -> bool:
    """Whether progress shows as a bar (stderr is a terminal), not as plain lines."""
    return sys.stderr.isatty()


@contextmanager
def progress(
    what: str,
    total: int | None,
    unit: str = "",
    *,
    time_left: bool = True,
    plain_lines: bool = True,
) -> Iterator[Advance]:
    """Report `done` of `total` `unit` as work goes: a bar on a terminal, else a plain line
    each time (flows, CI, a log file; none with `plain_lines=False`, for work that prints
    its own), with the time left at the pace so far unless the units are too uneven for
    that (`time_left=False`). Yields `advance(done, detail, total=None, unit=None)`; a total
    or unit given there replaces the one known before (e.g. steps, then a step's files)."""
    if not on_terminal():
        yield _plain_progress(what, total, unit, time_left) if plain_lines else _quiet
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
    ]  # fmt: skip
    if time_left:
        columns.append(TimeRemainingColumn())
    columns.append(TextColumn("{task.fields[detail]}"))
    # On stderr: what is printed meanwhile goes above the bar, but output piped elsewhere
    # (`cme train | tee log`) stays there.
    console = Console(file=sys.stderr)
    with Progress(*columns, console=console, transient=True,
                  redirect_stdout=sys.stdout.isatty()) as bar:  # fmt: skip
        task = bar.add_task(what, total=total, detail="", unit=unit)
        shown = unit

        def advance(
            done: int, detail: str, total: int | None = None, unit: str | None = None
        ) -> None:
            nonlocal shown
            shown = unit if unit is not None else shown
            bar.update(task, completed=done, detail=detail, total=total, unit=shown)

        yield advance


def _quiet(done: int, detail: str, total: int | None = None, unit: str | None = None) -> None:
    return None


def _plain_progress(what: str, total: int | None, unit: str, time_left: bool) -> Advance:
    started = time.monotonic()
    planned, named = total, unit

    def line(done: int, detail: str, total: int | None = None, unit: str | None = None) -> None:
        nonlocal planned, named
        planned = total if total is not None else planned
        named = unit if unit is not None else named
        of = f" of {planned}" if planned is not None else ""
        counted = f"{done}{of} {named}".rstrip()
        if time_left and planned and 0 < done < planned:
            left = (time.monotonic() - started) / done * (planned - done)
            counted += f" (about {duration(left)} left)"
        typer.echo(f"{what}: {counted}{': ' + detail if detail else ''}", err=True)

    return line


def data_rows(csv_file: Path) -> int | None:
    """How many data rows a CSV holds (for a progress total), or None if it cannot be read."""
    try:
        with csv_file.open(newline="", encoding="utf-8") as handle:
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
