"""The steward's command line, run as a real process against embedded and PostgreSQL stores."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry.labels import schema
from tests.conftest import POSTGRES_ADMIN_URL, read_rows, write_rows

pytestmark = pytest.mark.integration


def cme(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cme", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=120,
    )


def import_export(export: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    metadata, images = str(export / "metadata.csv"), str(export / "images")
    return cme("labels", "import", metadata, "--images", images, env=env, cwd=cwd)


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = {
        "CME_HOME": str(tmp_path / "home"),
        "CME_DATA_DIR": str(tmp_path / "data"),
        "CME_STEWARD": "dana",
        "CME_PARAMS_FILE": str(tmp_path / "params.yaml"),
    }
    env.pop("CME_DATABASE_URL", None)
    return tmp_path, env


def test_import_exit_codes_and_summary(workdir, lab_export):
    cwd, env = workdir
    metadata, images = str(lab_export / "metadata.csv"), str(lab_export / "images")
    total = len(read_rows(lab_export / "metadata.csv"))

    clean = cme("labels", "import", metadata, "--images", images, "-S", "intake.batch_size=10",
                env=env, cwd=cwd)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert f"{total} rows: {total} registered, 0 unchanged, 0 quarantined" in clean.stdout
    # Not a terminal: a plain progress line after each committed batch, on stderr.
    progress = [line for line in clean.stderr.splitlines() if line.startswith("importing ")]
    assert re.fullmatch(
        rf"importing metadata.csv: 10 of {total} rows \(about \d+ s left\): "
        "10 registered, 0 unchanged, 0 quarantined",
        progress[0],
    ), progress[0]
    assert len(progress) == -(-total // 10)
    assert progress[-1].startswith(f"importing metadata.csv: {total} of {total} rows: {total} ")

    rows = read_rows(lab_export / "metadata.csv")
    rows.append(dict(rows[0], image_id="ISIC_BAD", sex="none"))
    write_rows(lab_export / "metadata.csv", rows)
    partial = cme("labels", "import", metadata, "--images", images, env=env, cwd=cwd)
    assert partial.returncode == 1
    assert f"0 registered, {total} unchanged, 1 quarantined" in partial.stdout
    assert f"{metadata}, row {total + 2} (image_id ISIC_BAD): sex 'none'" in partial.stderr

    missing = cme("labels", "import", str(cwd / "nope.csv"), "--images", images, env=env, cwd=cwd)
    assert missing.returncode == 2 and "nope.csv: no such metadata file" in missing.stderr
    no_dir = cme("labels", "import", metadata, "--images", str(cwd / "nodir"), env=env, cwd=cwd)
    assert no_dir.returncode == 2 and "no such folder" in no_dir.stderr
    bad_override = cme(
        "labels", "import", metadata, "--images", images, "-S", "intake.nope=1", env=env, cwd=cwd
    )
    assert bad_override.returncode == 2 and "unknown key 'nope'" in bad_override.stderr


def test_list_and_quarantine_formats(workdir, lab_export):
    cwd, env = workdir
    rows = read_rows(lab_export / "metadata.csv")
    rows[1]["dx"] = "??"
    write_rows(lab_export / "metadata.csv", rows)
    import_export(lab_export, env, cwd)

    listed = cme("labels", "list", "--format", "csv", env=env, cwd=cwd)
    records = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert len(records) == len(rows) - 1
    assert {"image_id", "lesion_id", "dx", "dx_type", "confirmed_at", "sha256"} <= set(records[0])
    assert records[0]["steward"] == "dana"

    histo = json.loads(
        cme("labels", "list", "--source", "histo", "--format", "json", env=env, cwd=cwd).stdout
    )
    assert {r["dx_type"] for r in histo} == {"histo"}
    assert len(histo) == sum(r["dx_type"] == "histo" for i, r in enumerate(rows) if i != 1)

    [entry] = json.loads(cme("labels", "quarantine", "--format", "json", env=env, cwd=cwd).stdout)
    assert (entry["reason_kind"], entry["row_number"], entry["submitted"]["dx"]) == (
        "unknown-dx",
        3,
        "??",
    )
    stats = json.loads(cme("labels", "stats", "--format", "json", env=env, cwd=cwd).stdout)
    assert stats["images"] == len(rows) - 1 and stats["quarantined"] == 1


def test_add_and_relabel_from_the_terminal(workdir, lab_export):
    cwd, env = workdir
    picture = lab_export / "images" / f"{read_rows(lab_export / 'metadata.csv')[0]['image_id']}.jpg"
    added = cme(
        "labels",
        "add",
        str(picture),
        "--lesion-id",
        "HAM_X1",
        "--dx",
        "nv",
        "--dx-type",
        "histo",
        "--age",
        "40",
        "--sex",
        "female",
        env=env,
        cwd=cwd,
    )
    assert added.returncode == 0, added.stderr

    relabelled = cme(
        "labels",
        "relabel",
        picture.stem,
        "--dx",
        "mel",
        "--dx-type",
        "histo",
        "--reason",
        "excision histopathology",
        env=env,
        cwd=cwd,
    )
    assert relabelled.returncode == 0 and "now mel/histo" in relabelled.stdout
    history = json.loads(
        cme("labels", "history", picture.stem, "--format", "json", env=env, cwd=cwd).stdout
    )
    assert [(e["kind"], e["dx"]) for e in history] == [("add", "nv"), ("relabel", "mel")]

    refused = cme(
        "labels",
        "add",
        str(lab_export / "metadata.csv"),
        "--lesion-id",
        "HAM_X2",
        "--dx",
        "nv",
        "--dx-type",
        "histo",
        env=env,
        cwd=cwd,
    )
    assert refused.returncode == 1 and "not a readable image" in refused.stderr


@pytest.fixture
def empty_postgres_database(postgres_database) -> str:
    name = f"cme_cli_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_production_database_must_be_migrated_explicitly(
    workdir, lab_export, empty_postgres_database
):
    cwd, env = workdir
    env = {**env, "CME_DATABASE_URL": empty_postgres_database}

    before = cme("labels", "stats", env=env, cwd=cwd)
    assert before.returncode == 3 and "run `cme db upgrade`" in before.stderr

    upgraded = cme("db", "upgrade", env=env, cwd=cwd)
    head = schema.head_revision()
    assert upgraded.returncode == 0 and f"at revision {head}" in upgraded.stdout
    imported = import_export(lab_export, env, cwd)
    assert imported.returncode == 0, imported.stderr


def test_unreachable_database_is_a_clear_error(workdir):
    cwd, env = workdir
    env = {**env, "CME_DATABASE_URL": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}
    result = cme("labels", "stats", env=env, cwd=cwd)
    assert result.returncode == 3
    assert "label registry database error" in result.stderr and "Traceback" not in result.stderr


def test_sample_data_then_params_overrides(workdir):
    cwd, env = workdir
    made = cme(
        "sample-data",
        str(cwd / "set"),
        "--n",
        "6",
        "--seed",
        "4",
        "-S",
        "sample_data.image_size=48",
        env=env,
        cwd=cwd,
    )
    assert made.returncode == 0, made.stderr
    assert len(list((cwd / "set" / "images").glob("*.jpg"))) == 6
    shown = cme("params", "-S", "intake.batch_size=7", env=env, cwd=cwd)
    assert "batch_size: 7" in shown.stdout


def test_configuration_mistakes_are_clear_errors_not_tracebacks(workdir):
    cwd, env = workdir
    unreachable = {**env, "CME_DATABASE_URL": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}
    current = cme("db", "current", env=unreachable, cwd=cwd)
    assert current.returncode == 3 and "cannot read" in current.stderr

    no_driver = {**env, "CME_DATABASE_URL": "mysql+nodriver://x@127.0.0.1/db"}
    for command in (("db", "current"), ("labels", "stats")):
        result = cme(*command, env=no_driver, cwd=cwd)
        assert result.returncode == 2 and "not usable" in result.stderr

    bad_yaml = cme("params", "-S", "intake.batch_size=[", env=env, cwd=cwd)
    assert bad_yaml.returncode == 2 and "not valid YAML" in bad_yaml.stderr
    (cwd / "params.yaml").write_text("intake: [unclosed\n")
    broken_file = cme("params", env=env, cwd=cwd)
    assert broken_file.returncode == 2 and "params.yaml: not valid YAML" in broken_file.stderr
    for result in (current, bad_yaml, broken_file):
        assert "Traceback" not in result.stderr
