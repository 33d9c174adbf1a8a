"""Run leases: at most one weekly retrain at a time, across processes and machines.

The claim is a row of the label store's database (the store every worker shares). It lasts
`ttl` unless renewed; `exclusive` renews it in the background while its block runs, so only
a holder that crashed or hung lets it lapse, and then the next run may take it over.

A lease write takes no label write lock, so it never waits for a label import (on
PostgreSQL; SQLite has one writer at a time for the whole file). Two claims of one lease
are kept apart by the lease's own row: it is read FOR UPDATE, and a first claim inserts it
only if nobody inserted it meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Row

from pipelines.errors import BadInput, Refused
from registry.database import Repository, insert_ignoring_duplicates
from registry.labels.orm import RunLeaseRow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_NAME_MAX = 64  # run_leases.name
_HOLDER_MAX = 256  # run_leases.holder


@dataclass(frozen=True)
class RunLease:
    """A named claim (e.g. the weekly retrain) held by one holder until `expires_at`,
    unless renewed; a lease past `expires_at` is free for anyone to take."""

    name: str
    holder: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at <= now


class LeaseHeld(Refused):
    """Another holder has the lease and its claim has not lapsed: this run must not start."""

    def __init__(self, name: str, current: RunLease | None) -> None:
        self.name = name
        self.holder = current.holder if current is not None else None
        self.expires_at = current.expires_at if current is not None else None
        if current is None:
            message = f"run lease {name!r} was held by another holder a moment ago; try again"
        else:
            message = (
                f"run lease {name!r} is held by {current.holder} (since "
                f"{current.acquired_at.isoformat()}); its claim lapses at "
                f"{current.expires_at.isoformat()} unless renewed"
            )
        super().__init__(message)


class InvalidLease(BadInput, ValueError):
    """A lease asked for with a name, holder, duration or moment that cannot be stored."""


class RunLeaseRepository(Repository):
    """The run leases' rows: one per name while someone holds it."""

    def current(self, name: str) -> RunLease | None:
        """The run lease of that name as recorded, expired or not; None when nobody holds it."""
        query = select(RunLeaseRow).where(RunLeaseRow.name == name)
        with self.database.reading() as connection:
            row = connection.execute(query).first()
            return _run_lease(row) if row is not None else None

    def acquire(self, name: str, holder: str, ttl: timedelta, now: datetime) -> RunLease | None:
        """Take the named lease until `now + ttl` when it is free, lapsed (a crashed holder)
        or already `holder`'s (then it is renewed); None while another holder's claim runs."""
        _check_lease(name, holder, ttl, now)
        with self.database.writing() as connection:
            current = _locked(connection, name)
            if current is None:
                return _claim(connection, RunLease(name, holder, now, now, now + ttl))
            if current.holder != holder and not current.is_expired(now):
                return None
            acquired_at = current.acquired_at if current.holder == holder else now
            lease = RunLease(name, holder, acquired_at, now, now + ttl)
            connection.execute(
                update(RunLeaseRow).where(RunLeaseRow.name == name).values(_run_lease_values(lease))
            )
            return _in_utc(lease)

    def renew(self, name: str, holder: str, ttl: timedelta, now: datetime) -> RunLease | None:
        """Extend `holder`'s lease to `now + ttl`, even a lapsed one nobody took; None when
        `holder` no longer holds it."""
        _check_lease(name, holder, ttl, now)
        with self.database.writing() as connection:
            current = _locked(connection, name)
            if current is None or current.holder != holder:
                return None
            lease = replace(current, renewed_at=now, expires_at=now + ttl)
            connection.execute(
                update(RunLeaseRow)
                .where(RunLeaseRow.name == name)
                .values(renewed_at=lease.renewed_at, expires_at=lease.expires_at)
            )
            return _in_utc(lease)

    def release(self, name: str, holder: str) -> bool:
        """Give the lease up if `holder` holds it; False when it held nothing to give up."""
        with self.database.writing() as connection:
            released = connection.execute(
                delete(RunLeaseRow).where(RunLeaseRow.name == name, RunLeaseRow.holder == holder)
            )
            return bool(released.rowcount)


def _locked(connection: Connection, name: str) -> RunLease | None:
    """The lease's row, locked until the transaction ends (SQLite: the whole file is)."""
    query = select(RunLeaseRow).where(RunLeaseRow.name == name).with_for_update()
    row = connection.execute(query).first()
    return _run_lease(row) if row is not None else None


def _claim(connection: Connection, lease: RunLease) -> RunLease | None:
    """Insert a first claim; None when a concurrent first claim inserted one meanwhile."""
    claim = insert_ignoring_duplicates(connection, RunLeaseRow, ["name"])
    inserted = connection.execute(claim.values(_run_lease_values(lease)))
    return _in_utc(lease) if inserted.rowcount else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def exclusive(
    leases: RunLeaseRepository,
    name: str,
    holder: str,
    ttl: timedelta,
    clock: Clock = _utc_now,
) -> Iterator[RunLease]:
    """Hold the named lease for the block: acquire it (LeaseHeld when another holder has it),
    renew it every ttl/3 in a daemon thread, and release it on the way out, whatever happens."""
    lease = leases.acquire(name, holder, ttl, clock())
    if lease is None:
        raise LeaseHeld(name, leases.current(name))
    stop = threading.Event()
    renewer = threading.Thread(
        target=_keep_renewed,
        args=(leases, lease, ttl, clock, stop),
        name=f"run-lease-{name}",
        daemon=True,
    )
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join(timeout=ttl.total_seconds())
        _release(leases, name, holder)


def _keep_renewed(
    leases: RunLeaseRepository,
    lease: RunLease,
    ttl: timedelta,
    clock: Clock,
    stop: threading.Event,
) -> None:
    """Renew until told to stop or the lease is lost; a failed renewal is retried next tick."""
    interval = ttl.total_seconds() / 3
    while not stop.wait(interval):
        try:
            renewed = leases.renew(lease.name, lease.holder, ttl, clock())
        except Exception:  # a transient database error: the next tick tries again
            log.warning(
                "could not renew run lease %r for %s; retrying in %.1f s",
                lease.name,
                lease.holder,
                interval,
                exc_info=True,
            )
            continue
        if renewed is None:
            if not stop.is_set():
                log.error(
                    "run lease %r was lost by %s: it lapsed and another holder took it; "
                    "two runs may now overlap",
                    lease.name,
                    lease.holder,
                )
            return


def _release(leases: RunLeaseRepository, name: str, holder: str) -> None:
    """Never raises: a lease that cannot be released lapses on its own at its expiry."""
    try:
        released = leases.release(name, holder)
    except Exception:
        log.exception("could not release run lease %r held by %s; it lapses", name, holder)
        return
    if not released:
        log.warning("run lease %r was no longer held by %s at release", name, holder)


def _check_lease(name: str, holder: str, ttl: timedelta, now: datetime) -> None:
    if not 0 < len(name) <= _NAME_MAX:
        raise InvalidLease(f"a lease name has 1 to {_NAME_MAX} characters: {name!r}")
    if not 0 < len(holder) <= _HOLDER_MAX:
        raise InvalidLease(f"a lease holder has 1 to {_HOLDER_MAX} characters")
    if ttl <= timedelta(0):
        raise InvalidLease(f"a lease lasts a positive time, not {ttl}")
    if now.tzinfo is None:
        raise InvalidLease("naive datetime given to the label registry; use UTC")


def _run_lease(row: Row[Any]) -> RunLease:
    return RunLease(
        name=row.name,
        holder=row.holder,
        acquired_at=row.acquired_at,
        renewed_at=row.renewed_at,
        expires_at=row.expires_at,
    )


def _run_lease_values(lease: RunLease) -> dict[str, Any]:
    return {name: getattr(lease, name) for name in RunLease.__dataclass_fields__}


def _in_utc(lease: RunLease) -> RunLease:
    """As the database gives it back: every moment in UTC."""
    return replace(
        lease,
        acquired_at=lease.acquired_at.astimezone(UTC),
        renewed_at=lease.renewed_at.astimezone(UTC),
        expires_at=lease.expires_at.astimezone(UTC),
    )
