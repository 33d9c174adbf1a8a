"""`cme db ...`: schema migrations of the label registry (production runs these explicitly)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cme.cli.common import command_group, fail

if TYPE_CHECKING:
    from sqlalchemy import Engine

app = command_group("Label registry database schema (Alembic migrations).")


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default head)."""
    from sqlalchemy.exc import DBAPIError

    from registry.database import translated
    from registry.labels import schema

    engine = _engine()
    try:
        schema.upgrade(engine, revision)
        typer.echo(f"label registry at revision {schema.current_revision(engine)}")
    except DBAPIError as error:  # unreachable: exit 3; the database refused the SQL: 4
        fail(f"cannot migrate {_shown(engine)}: {error.orig}", translated(error).exit_code)
    finally:
        engine.dispose()


@app.command("current")
def current() -> None:
    """Print the schema revision of the database and the one the code needs."""
    from sqlalchemy.exc import DBAPIError

    from registry.database import translated
    from registry.labels import schema

    engine = _engine()
    try:
        typer.echo(
            f"database {schema.current_revision(engine) or 'empty'}; "
            f"code needs {schema.head_revision()}"
        )
    except DBAPIError as error:
        fail(f"cannot read {_shown(engine)}: {error.orig}", translated(error).exit_code)
    finally:
        engine.dispose()


def _engine() -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError

    from cme.bootstrap import bootstrap

    url = bootstrap().settings.label_database_url
    try:
        return create_engine(url)
    except ArgumentError as error:
        fail(f"CME_DATABASE_URL is not usable: {error}")


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
