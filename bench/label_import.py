"""Label registry figures on the real HAM10000 copy, into the local PostgreSQL.

    uv run python bench/label_import.py --data ../shared/data/ham10000

Prints: import throughput (images/s) and its ratio to a naive insert-and-commit-per-row
loop run in the same process; peak memory of the import as the file grows; and the time
of `cme labels list --format csv` over every label. Targets (issue 2): >= 500 images/s,
flat memory, listing 10,015 labels in under 2 s.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import resource
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).parent))
from _support import Stopwatch, fresh_postgres_database

from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository
from registry.labels.images import file_extension, inspect_image
from registry.labels.intake import check_row, read_metadata
from registry.labels.orm import ImageRow, LabelEventRow, LesionRow
from registry.labels.repository import NewImage, _first_event_values, _image_values


def import_with_registry(url: str, metadata: Path, images: Path, store: Path) -> int:
    registry = LabelRegistry(
        LabelRepository.open(url, migrate=True), ImageStore(store), IntakeRules()
    )
    try:
        summary = registry.import_metadata(metadata, images, steward="bench")
        return summary.registered
    finally:
        registry.repository.close()


def import_naively(url: str, metadata: Path, images: Path, store: Path) -> int:
    """The obvious loop: check, read, store the file, insert and commit, one row at a time."""
    LabelRepository.open(url, migrate=True).close()
    engine = create_engine(url)
    rules, registered = IntakeRules(), 0
    with Session(engine) as session:
        for row in read_metadata(metadata):
            now = datetime.now(UTC)
            checked = check_row(row, rules, now)
            content = (images / f"{checked.image_id}.jpg").read_bytes()
            facts = inspect_image(content, rules)
            relative = ImageStore.relative_path(facts.sha256, file_extension(facts.format))
            target = store / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            if session.get(LesionRow, checked.lesion_id) is None:
                session.add(LesionRow(lesion_id=checked.lesion_id, registered_at=now))
                session.flush()
            image = NewImage(
                image_id=checked.image_id,
                lesion_id=checked.lesion_id,
                facts=facts,
                stored_path=relative,
                diagnosis=checked.diagnosis,
                confirmed_at=now,
                steward="bench",
                kind="import",
                source=None,
            )
            session.add(ImageRow(**_image_values(image, now)))
            session.flush()
            session.add(LabelEventRow(**_first_event_values(image, now)))
            session.commit()
            registered += 1
    engine.dispose()
    return registered


def first_rows(metadata: Path, rows: int, folder: Path) -> Path:
    target = folder / f"metadata_{rows}.csv"
    with metadata.open(newline="") as source:
        target.write_text("".join(itertools.islice(source, rows + 1)))
    return target


def peak_memory_mib(metadata: Path, images: Path, work: Path) -> float:
    """Import in a child process and return its peak resident memory."""
    child = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from label_import import import_with_registry
from _support import fresh_postgres_database
from pathlib import Path
with fresh_postgres_database("cme_bench_mem") as url:
    import_with_registry(url, Path({str(metadata)!r}), Path({str(images)!r}), Path({str(work)!r}))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    output = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True
    )
    return int(output.stdout.split()[-1]) / 1024


def time_listing(url: str, work: Path) -> tuple[float, int]:
    env = {
        **os.environ,
        "CME_DATABASE_URL": url,
        "CME_HOME": str(work / "home"),
        "CME_DATA_DIR": str(work / "data"),
    }
    cme = Path(sys.executable).with_name("cme")
    with Stopwatch() as watch:
        result = subprocess.run(
            [str(cme), "labels", "list", "--format", "csv"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return watch.seconds, sum(1 for _ in csv.reader(result.stdout.splitlines())) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--baseline-rows", type=int, default=1000)
    args = parser.parse_args()
    metadata, images = args.data / "metadata.csv", args.data / "images"
    if not metadata.is_file():
        sys.exit(f"no HAM10000 copy at {args.data}; pass --data DIR")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        total = sum(1 for _ in read_metadata(metadata))
        with fresh_postgres_database() as url:
            with Stopwatch() as ours:
                registered = import_with_registry(url, metadata, images, work / "store")
            listing_seconds, listed = time_listing(url, work)
        baseline_file = first_rows(metadata, args.baseline_rows, work)
        with fresh_postgres_database() as url, Stopwatch() as naive:
            naive_rows = import_naively(url, baseline_file, images, work / "naive_store")
        ours_rate, naive_rate = registered / ours.seconds, naive_rows / naive.seconds
        print(
            f"import into PostgreSQL: {registered:,} of {total:,} images in {ours.seconds:.1f} s"
            f" = {ours_rate:,.0f} images/s (target >= 500)"
        )
        print(
            f"naive commit-per-row loop: {naive_rows:,} images in {naive.seconds:.1f} s"
            f" = {naive_rate:,.0f} images/s; ratio {ours_rate / naive_rate:.1f}x"
        )
        print(
            f"cme labels list --format csv: {listed:,} labels in {listing_seconds:.2f} s "
            "(target < 2 s, process start-up included)"
        )
        print("peak memory of the import as the file grows:")
        for rows in (2500, 5000, total):
            part = first_rows(metadata, rows, work)
            peak = peak_memory_mib(part, images, work / f"mem_{rows}")
            print(f"  {rows:>6,} rows: {peak:6.1f} MiB")
    print(f"(own peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
