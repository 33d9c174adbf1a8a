"""PostgreSQL restarted in the middle of a steward's import. The machine's own server on 5432
serves the other tests and is never touched: this test starts a private one (initdb and
pg_ctl, a temporary data folder, a free port) and restarts that."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import HAM10000
from tests.e2e.topology import LOOPBACK, free_port

pytestmark = [pytest.mark.e2e]

ROWS = 3_000  # of the HAM10000 copy: six progress lines of 500
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, its tools run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, list[str]]]:
    """A PostgreSQL server of this test's own; yields its URL and its restart command."""
    assert POSTGRES_BIN, "PostgreSQL's server binaries under /usr/lib/postgresql/*/bin"
    bin_dir, port = POSTGRES_BIN[-1], free_port()
    # Outside pytest's folders, which the postgres user may not enter.
    folder = Path(tempfile.mkdtemp(prefix="cme-e2e-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    initdb = [str(bin_dir / "initdb"), "-D", str(folder), "-U", "postgres", "--auth=trust"]
    done = subprocess.run(as_postgres(initdb), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    options = f"-p {port} -k {folder} -c listen_addresses={LOOPBACK}"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(folder), "-o", options, "-l",
              str(folder / "server.log"), "-w"]  # fmt: skip
    subprocess.run(as_postgres([*pg_ctl, "start"]), check=True, capture_output=True)
    try:
        yield (
            f"postgresql+psycopg2://postgres@{LOOPBACK}:{port}/postgres",
            as_postgres([*pg_ctl, "-m", "fast", "restart"]),
        )
    finally:
        subprocess.run(as_postgres([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def ham10000_slice(folder: Path, rows: int) -> Path:
    folder.mkdir()
    with (HAM10000 / "metadata.csv").open(newline="") as source:
        reader = csv.DictReader(source)
        assert reader.fieldnames is not None
        with (folder / "metadata.csv").open("w", newline="") as target:
            writer = csv.DictWriter(target, fieldnames=reader.fieldnames)
            writer.writeheader()
            for _, row in zip(range(rows), reader, strict=False):
                writer.writerow(row)
    return folder / "metadata.csv"


def test_postgres_restarted_mid_import_leaves_whole_rows_and_the_retry_completes(
    private_postgres: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, restart = private_postgres
    metadata = ham10000_slice(tmp_path / "export", ROWS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_"))}
    env |= {"CME_DATABASE_URL": url, "CME_AUTO_MIGRATE": "true",
            "CME_HOME": str(tmp_path / ".cme"), "CME_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    command = ["cme", "labels", "import", str(metadata), "--images", str(HAM10000 / "images"),
               "--steward", "lab"]  # fmt: skip

    importing = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert importing.stdout is not None
    seen = []
    for line in importing.stdout:
        seen.append(line)
        if f"500 of {ROWS} rows" in line:  # the first batch is in: restart under the second
            subprocess.run(restart, check=True, capture_output=True)
            break
    output = "".join(seen) + importing.stdout.read()
    first = importing.wait(timeout=600)
    print(f"\nthe import under a restart: exit {first}\n{output[-400:]}")
    assert first in (0, 3), output  # it went through, or stopped as "unavailable" (exit 3)
    if first == 3:
        assert "unavailable" in output.lower() or "connection" in output.lower(), output

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            images = connection.execute(text("SELECT count(*) FROM images")).scalar_one()
            unlabelled = connection.execute(text(
                "SELECT count(*) FROM images i WHERE NOT EXISTS "
                "(SELECT 1 FROM label_events e WHERE e.image_id = i.image_id)"
            )).scalar_one()  # fmt: skip
        assert unlabelled == 0  # no image without its label: no half-written row
        stored = [p for p in (tmp_path / "data" / "images").rglob("*") if p.is_file()]
        assert len(stored) >= images

        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        with engine.connect() as connection:
            total = connection.execute(text("SELECT count(*) FROM images")).scalar_one()
        duplicates = 0  # the first 3,000 rows of the copy hold no byte-identical twin
        assert total == ROWS - duplicates
        assert f"{images} unchanged" in again.stdout or first == 0
    finally:
        engine.dispose()
