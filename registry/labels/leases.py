"""Run leases: at most one weekly retrain at a time, across processes and machines.

The claim is a row of the label registry database (the store every worker shares). It lasts
`ttl` unless renewed; `exclusive` renews it in the background while its block runs, so only
a holder that crashed or hung lets it lapse, and then the next run may take it over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from registry.labels.domain import RunLease
from registry.labels.errors import LabelRegistryError
from registry.labels.repository import LabelRepository

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class LeaseHeld(LabelRegistryError):
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


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def exclusive(
    repository: LabelRepository,
    name: str,
    holder: str,
    ttl: timedelta,
    clock: Clock = _utc_now,
) -> Iterator[RunLease]:
    """Hold the named lease for the block: acquire it (LeaseHeld when another holder has it),
    renew it every ttl/3 in a daemon thread, and release it on the way out, whatever happens."""
    lease = repository.acquire_lease(name, holder, ttl, clock())
    if lease is None:
        raise LeaseHeld(name, repository.lease(name))
    stop = threading.Event()
    renewer = threading.Thread(
        target=_keep_renewed,
        args=(repository, lease, ttl, clock, stop),
        name=f"run-lease-{name}",
        daemon=True,
    )
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join(timeout=ttl.total_seconds())
        _release(repository, name, holder)


def _keep_renewed(
    repository: LabelRepository,
    lease: RunLease,
    ttl: timedelta,
    clock: Clock,
    stop: threading.Event,
) -> None:
    """Renew until told to stop or the lease is lost; a failed renewal is retried next tick."""
    interval = ttl.total_seconds() / 3
    while not stop.wait(interval):
        try:
            renewed = repository.renew_lease(lease.name, lease.holder, ttl, clock())
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


def _release(repository: LabelRepository, name: str, holder: str) -> None:
    """Never raises: a lease that cannot be released lapses on its own at its expiry."""
    try:
        released = repository.release_lease(name, holder)
    except Exception:
        log.exception("could not release run lease %r held by %s; it lapses", name, holder)
        return
    if not released:
        log.warning("run lease %r was no longer held by %s at release", name, holder)
