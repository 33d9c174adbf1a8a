"""Load on loopback, bounded in count and time: the scoring service under 2,000 requests at
concurrency 16 while the champion alias moves, and the whole HAM10000 copy imported beside
it. Latency percentiles are printed (`make e2e` shows them; docs/results.md keeps them)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import HAM10000
from tests.e2e.clinic import champion, eventually, label_registry_url, signed_in, versions
from tests.e2e.topology import ADMIN, Topology

pytestmark = [pytest.mark.e2e]

REQUESTS = 2_000
CONCURRENCY = 16
MOVE_AFTER = 400  # requests answered before the alias is moved
REGISTERED = re.compile(r"rows: (\d+) registered")


@dataclass(frozen=True)
class Answer:
    status: int
    version: str | None
    seconds: float


def ask(url: str, body: bytes) -> Answer:
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
            version = str(answer["predictions"][0]["model_version"])
            return Answer(response.status, version, time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        return Answer(error.code, None, time.perf_counter() - started)


def rows_in(topology: Topology, table: str) -> int:
    engine = create_engine(label_registry_url(topology))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_scoring_under_load_while_the_alias_moves_and_ham10000_is_imported(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (HAM10000 / "metadata.csv").is_file(), f"the shared HAM10000 copy at {HAM10000}"
    reviewer = signed_in(topology, "CME_REVIEWER_MLFLOW", monkeypatch)
    serving = champion(topology, reviewer)
    unapproved = max(int(v.version) for v in versions(topology, reviewer))
    assert serving is not None and str(unapproved) != serving
    labels_before, logged_before = rows_in(topology, "images"), rows_in(topology, "predictions")
    image = min((HAM10000 / "images").iterdir()).read_bytes()
    rows = [[base64.b64encode(image).decode()]]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()

    steward = topology.environment("worker-cpu")
    importing = subprocess.Popen(
        ["cme", "labels", "import", str(HAM10000 / "metadata.csv"), "--images",
         str(HAM10000 / "images"), "--steward", "lab"],
        cwd=topology.project, env=steward, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    answered = threading.Semaphore(0)

    def move_the_alias_by_hand() -> tuple[str, str | None]:
        """A hand in the MLflow UI moves the alias to a version no reviewer approved; the
        webhook receiver's guard puts it back: two moves, neither a version to serve."""
        for _ in range(MOVE_AFTER):
            answered.acquire()
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", topology.password("MLFLOW_AUTH_ADMIN"))
        reviewer.set_registered_model_alias(topology.model_name, "champion", str(unapproved))
        moved_back = eventually(lambda: champion(topology, reviewer) == serving, timeout_s=60)
        return str(unapproved), serving if moved_back else champion(topology, reviewer)

    def one(_: int) -> Answer:
        answer = ask(topology.scoring_url, body)
        answered.release()
        return answer

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENCY + 1) as pool:
        moves = pool.submit(move_the_alias_by_hand)
        answers = list(pool.map(one, range(REQUESTS)))
        moved_to, put_back_to = moves.result(timeout=120)
    seconds = time.monotonic() - started
    output, _ = importing.communicate(timeout=900)

    # Exit 1: every row in but the copy's two byte-identical twins, quarantined as they are
    # in every import of it.
    assert importing.returncode == 1 and "2 quarantined" in output, output
    assert moved_to == str(unapproved) and put_back_to == serving
    statuses = dict(Counter(a.status for a in answers))
    assert set(statuses) <= {200, 503}, statuses  # 503: above the concurrency limit, nothing else
    assert {a.version for a in answers if a.status == 200} == {serving}  # never the hand-moved one
    latency = np.array([a.seconds for a in answers if a.status == 200]) * 1000
    print(
        f"\n{REQUESTS} requests at concurrency {CONCURRENCY} in {seconds:.1f} s "
        f"({REQUESTS / seconds:.1f} req/s) beside the HAM10000 import: {statuses}; "
        f"p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms"
    )
    summary = next(line for line in output.splitlines() if REGISTERED.search(line))
    print(summary)

    ok = statuses.get(200, 0)
    assert eventually(lambda: rows_in(topology, "predictions") == logged_before + ok, 60), (
        "every answered prediction is in the prediction log, once"
    )
    registered = int(REGISTERED.search(summary)[1])  # type: ignore[index]
    assert rows_in(topology, "images") == labels_before + registered
