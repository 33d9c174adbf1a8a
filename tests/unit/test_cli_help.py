"""`cme --help` and every command's help read cleanly: a docstring's paragraph is rewrapped to
the terminal, never broken where its source line happened to end."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cme.cli import app

WIDE = 400


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command's words, sub-commands included (Typer's groups are click-like)."""
    for name in group.list_commands(None):
        yield (*path, name)
        command = group.get_command(None, name)
        if hasattr(command, "list_commands"):
            yield from commands(command, (*path, name))


def command_at(path: tuple[str, ...]) -> Any:
    command = typer.main.get_command(app)
    for name in path:
        command = command.get_command(None, name)  # type: ignore[attr-defined]
    return command


ALL = list(commands(typer.main.get_command(app)))


def paragraphs(text: str) -> list[str]:
    """A docstring's paragraphs, each as one line of words (Markdown's inline code marks
    left out, as the help shows them)."""
    cleaned = inspect.cleandoc(text).replace("`", "")
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", cleaned) if block.strip()]


def help_of(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)},
                                terminal_width=width, color=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_has_help():
    assert len(ALL) > 35  # the sub-commands (cme labels import, ...) are there too
    for path in ALL:
        assert command_at(path).help, f"cme {' '.join(path)} has no help"


@pytest.mark.parametrize("path", ALL, ids=lambda path: " ".join(path))
def test_each_paragraph_of_a_commands_help_is_one_line_on_a_wide_terminal(path):
    shown = [" ".join(line.strip(" │").split()) for line in help_of(path, WIDE).splitlines()]
    for paragraph in paragraphs(command_at(path).help or ""):
        if paragraph.startswith(("- ", "* ")):
            continue  # a list: one item a line, as Markdown renders it
        assert paragraph in shown, f"cme {' '.join(path)}: {paragraph!r} is broken in the help"


GROUPS = [(), *(path for path in ALL if hasattr(command_at(path), "list_commands"))]


@pytest.mark.parametrize("group", GROUPS, ids=lambda path: " ".join(("cme", *path)))
def test_the_list_of_commands_shows_each_ones_first_paragraph_on_one_line(group):
    shown = [" ".join(line.strip(" │").split()) for line in help_of(group, WIDE).splitlines()]
    for name in command_at(group).list_commands(None):
        first = paragraphs(command_at((*group, name)).help or "")[0]
        assert any(line.endswith(first) for line in shown), (
            f"cme {' '.join((*group, name))}: {first!r} is broken in the list of commands"
        )
