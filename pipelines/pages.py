"""The shared kit of the pages a reviewer reads (the evaluation's and the backtest's): how
numbers are written, how a figure is embedded, and the HTML rendered from the Jinja2
templates in pipelines/templates (package data), every value escaped.

`page.html.j2` is the self-contained layout with the shared stylesheet; a page extends it,
fills its `body` block (and adds to `style`), and imports `row` from `macros.html.j2`."""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path
from typing import Any

import jinja2


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def image_source(name: str, folder: Path | None) -> str:
    """The PNG `name` embedded as a data URI when `folder` holds it (MLflow's artifact
    viewer does not resolve relative links), else the bare name to link."""
    if folder is None:
        return name
    encoded = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def render_page(template: str, **context: Any) -> str:
    """The page `template` (a file of pipelines/templates) filled with `context`: plain
    values, escaped as they are written."""
    return _environment().get_template(template).render(**context)


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(number=number, signed=signed)
    return environment
