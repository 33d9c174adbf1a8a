"""At most one weekly retrain at a time: the run lease, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from registry.database import StoreUnavailable
from registry.run_leases import LeaseHeld, RunLease, RunLeaseRepository, exclusive

pytestmark = pytest.mark.integration

RETRAIN = "weekly-retrain"
T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
TEN_MINUTES = timedelta(minutes=10)


@pytest.fixture
def repository(database_url: str) -> Iterator[RunLeaseRepository]:
    repository = RunLeaseRepository.open(database_url, migrate=True)
    yield repository
    repository.close()


class FlakyRepository:
    """The real repository, except for the calls a test makes fail."""

    def __init__(self, real: RunLeaseRepository, *, renew_failures: int = 0, release_fails=False):
        self._real = real
        self.renew_failures = renew_failures
        self.release_fails = release_fails
        self.renewals = 0

    def renew(self, *args: Any) -> RunLease | None:
        if self.renew_failures > 0:
            self.renew_failures -= 1
            raise StoreUnavailable("label registry database error: connection reset")
        self.renewals += 1
        return self._real.renew(*args)

    def release(self, name: str, holder: str) -> bool:
        if self.release_fails:
            raise StoreUnavailable("label registry database error: server closed")
        return self._real.release(name, holder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# -- the repository's lease ----------------------------------------------------------------


def test_a_second_holder_is_refused_while_the_first_holds_the_lease(repository):
    first = repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, T0)

    assert first == RunLease(RETRAIN, "worker-a", T0, T0, T0 + TEN_MINUTES)
    still_held = T0 + timedelta(minutes=9)
    assert repository.acquire(RETRAIN, "worker-b", TEN_MINUTES, still_held) is None
    assert repository.current(RETRAIN) == first
    assert first.expires_at.tzinfo is not None


def test_another_run_takes_over_the_lease_of_a_crashed_holder(repository):
    repository.acquire(RETRAIN, "crashed-worker", TEN_MINUTES, T0)
    lapsed = T0 + TEN_MINUTES

    taken = repository.acquire(RETRAIN, "worker-b", TEN_MINUTES, lapsed)

    assert taken == RunLease(RETRAIN, "worker-b", lapsed, lapsed, lapsed + TEN_MINUTES)
    assert repository.current(RETRAIN) == taken
    assert repository.renew(RETRAIN, "crashed-worker", TEN_MINUTES, lapsed) is None
    assert repository.release(RETRAIN, "crashed-worker") is False
    assert repository.current(RETRAIN) == taken


def test_re_acquiring_by_the_same_holder_renews_it(repository):
    repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, T0)
    later = T0 + timedelta(minutes=5)

    again = repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, later)

    assert again == RunLease(RETRAIN, "worker-a", T0, later, later + TEN_MINUTES)


def test_release_lets_the_next_run_in(repository):
    repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, T0)

    assert repository.release(RETRAIN, "worker-b") is False
    assert repository.current(RETRAIN) is not None
    assert repository.release(RETRAIN, "worker-a") is True
    assert repository.current(RETRAIN) is None
    assert repository.acquire(RETRAIN, "worker-b", TEN_MINUTES, T0) is not None
    assert repository.release(RETRAIN, "worker-a") is False


def test_renew_extends_the_lease_and_a_non_holder_cannot_renew(repository):
    repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, T0)
    later = T0 + timedelta(minutes=8)

    renewed = repository.renew(RETRAIN, "worker-a", TEN_MINUTES, later)

    assert renewed == RunLease(RETRAIN, "worker-a", T0, later, later + TEN_MINUTES)
    assert repository.renew(RETRAIN, "worker-b", TEN_MINUTES, later) is None
    assert repository.renew("nobody-holds-this", "worker-a", TEN_MINUTES, later) is None
    refused_at = T0 + timedelta(minutes=12)  # past the first expiry, within the renewed one
    assert repository.acquire(RETRAIN, "worker-b", TEN_MINUTES, refused_at) is None


def test_a_lapsed_lease_nobody_took_can_still_be_renewed_by_its_holder(repository):
    repository.acquire(RETRAIN, "slow-worker", TEN_MINUTES, T0)
    late = T0 + timedelta(minutes=15)

    renewed = repository.renew(RETRAIN, "slow-worker", TEN_MINUTES, late)

    assert renewed is not None and renewed.expires_at == late + TEN_MINUTES


def test_leases_of_different_names_are_independent(repository):
    assert repository.acquire(RETRAIN, "worker-a", TEN_MINUTES, T0) is not None
    assert repository.acquire("backtest", "worker-b", TEN_MINUTES, T0) is not None


def test_two_workers_racing_for_the_lease_exactly_one_wins(database_url, repository):
    contenders = 6
    workers = [RunLeaseRepository.open(database_url, migrate=False) for _ in range(contenders)]
    try:
        for round_number in range(3):
            name = f"{RETRAIN}-{round_number}"
            start = threading.Barrier(contenders)
            won: list[str] = []
            errors: list[BaseException] = []

            def contend(
                worker: RunLeaseRepository,
                holder: str,
                name: str = name,
                start: threading.Barrier = start,
                won: list[str] = won,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    start.wait()
                    if worker.acquire(name, holder, TEN_MINUTES, T0) is not None:
                        won.append(holder)
                except BaseException as error:
                    errors.append(error)

            threads = [
                threading.Thread(target=contend, args=(worker, f"worker-{i}"))
                for i, worker in enumerate(workers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            assert errors == []
            assert len(won) == 1
            held = repository.current(name)
            assert held is not None and held.holder == won[0]
    finally:
        for worker in workers:
            worker.close()


def test_workers_racing_to_take_over_a_lapsed_lease_exactly_one_wins(database_url, repository):
    """No label write lock keeps them apart: the lease's own row, read FOR UPDATE, does."""
    contenders = 6
    repository.acquire(RETRAIN, "crashed-worker", TEN_MINUTES, T0)
    lapsed = T0 + TEN_MINUTES + timedelta(seconds=1)
    workers = [RunLeaseRepository.open(database_url, migrate=False) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    won: list[str] = []
    errors: list[BaseException] = []

    def contend(worker: RunLeaseRepository, holder: str) -> None:
        try:
            start.wait()
            if worker.acquire(RETRAIN, holder, TEN_MINUTES, lapsed) is not None:
                won.append(holder)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=contend, args=(worker, f"worker-{i}"))
        for i, worker in enumerate(workers)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for worker in workers:
            worker.close()
    assert errors == []
    assert len(won) == 1
    held = repository.current(RETRAIN)
    assert held is not None and held.holder == won[0] and held.acquired_at == lapsed


# -- exclusive: holding the lease for a whole run ------------------------------------------


def test_exclusive_refuses_a_second_run_naming_the_holder(repository):
    with exclusive(repository, RETRAIN, "worker-a", TEN_MINUTES) as lease:
        assert lease.holder == "worker-a"
        with (
            pytest.raises(LeaseHeld, match="worker-a") as refused,
            exclusive(repository, RETRAIN, "worker-b", TEN_MINUTES),
        ):
            pytest.fail("a second run started while the first held the lease")
        assert refused.value.holder == "worker-a"
        assert refused.value.expires_at is not None
        assert refused.value.expires_at.isoformat() in str(refused.value)
    assert repository.current(RETRAIN) is None


def test_exclusive_releases_the_lease_when_the_run_fails(repository):
    with (
        pytest.raises(RuntimeError, match="training diverged"),
        exclusive(repository, RETRAIN, "worker-a", TEN_MINUTES),
    ):
        raise RuntimeError("training diverged")

    assert repository.current(RETRAIN) is None
    with exclusive(repository, RETRAIN, "worker-b", TEN_MINUTES) as lease:
        assert lease.holder == "worker-b"


def test_exclusive_keeps_a_short_lease_alive_past_its_ttl(repository):
    # Renewed every ttl/3: a 3 s lease tolerates a renewal 2 s late, which a busy 2-core CI
    # machine running training beside this test can cause (0.6 s failed there once).
    ttl = timedelta(seconds=3)
    with exclusive(repository, RETRAIN, "worker-a", ttl) as lease:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            now = datetime.now(UTC)
            assert repository.acquire(RETRAIN, "worker-b", ttl, now) is None
            time.sleep(0.1)
        held = repository.current(RETRAIN)
        assert held is not None and held.holder == "worker-a"
        assert held.expires_at > lease.expires_at
        assert datetime.now(UTC) - lease.acquired_at > ttl
    assert repository.current(RETRAIN) is None


def test_exclusive_stops_its_renewal_thread_promptly(repository):
    started = time.monotonic()
    with exclusive(repository, RETRAIN, "worker-a", timedelta(minutes=30)):
        pass
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name == f"run-lease-{RETRAIN}"]


def test_a_transient_error_while_renewing_is_logged_and_retried(repository, caplog):
    flaky = FlakyRepository(repository, renew_failures=2)
    with exclusive(flaky, RETRAIN, "worker-a", timedelta(seconds=0.3)):
        assert wait_until(lambda: flaky.renewals >= 2)
        held = repository.current(RETRAIN)
        assert held is not None and held.holder == "worker-a"
    assert "could not renew run lease" in caplog.text
    assert repository.current(RETRAIN) is None


def test_a_lost_lease_is_logged_as_an_error(repository, caplog):
    frozen = T0  # the holder's clock stands still, so its lease lapses

    with exclusive(
        repository, RETRAIN, "hung-worker", timedelta(seconds=0.3), clock=lambda: frozen
    ):
        later = T0 + timedelta(hours=1)
        assert repository.acquire(RETRAIN, "worker-b", TEN_MINUTES, later) is not None
        assert wait_until(
            lambda: any(r.levelno == logging.ERROR and "was lost" in r.getMessage()
                        for r in caplog.records)
        )  # fmt: skip
    held = repository.current(RETRAIN)
    assert held is not None and held.holder == "worker-b"


def test_a_failed_release_does_not_hide_the_runs_own_error(repository, caplog):
    flaky = FlakyRepository(repository, release_fails=True)

    with (
        pytest.raises(RuntimeError, match="evaluation failed"),
        exclusive(flaky, RETRAIN, "worker-a", TEN_MINUTES),
    ):
        raise RuntimeError("evaluation failed")

    assert "could not release run lease" in caplog.text
