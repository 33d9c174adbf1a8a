"""`cme db ...`: schema migrations of the label registry (production runs these explicitly)."""

from __future__ import annotations

import typer

from cme.cli.common import EXIT_UNAVAILABLE, fail

app = typer.Typer(help="Label registry database schema (Alembic migrations).")


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default head)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError

    from cme.bootstrap import bootstrap
    from registry.labels import schema

    url = bootstrap().settings.label_database_url
    engine = create_engine(url)
    try:
        schema.upgrade(engine, revision)
        typer.echo(f"label registry at revision {schema.current_revision(engine)}")
    except DBAPIError as error:
        fail(
            f"cannot migrate {engine.url.render_as_string(hide_password=True)}: {error.orig}",
            EXIT_UNAVAILABLE,
        )
    finally:
        engine.dispose()


@app.command("current")
def current() -> None:
    """Print the schema revision of the database and the one the code needs."""
    from sqlalchemy import create_engine

    from cme.bootstrap import bootstrap
    from registry.labels import schema

    engine = create_engine(bootstrap().settings.label_database_url)
    try:
        typer.echo(
            f"database {schema.current_revision(engine) or 'empty'}; "
            f"code needs {schema.head_revision()}"
        )
    finally:
        engine.dispose()
