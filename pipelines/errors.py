"""The platform's errors: one base, and the kinds that say how a failure ends.

Every error the platform raises on purpose is a `PlatformError` of exactly one kind; the
kind, not the class, decides the exit status of a command and whether a flow retries:

- `BadInput`: the request or the data is wrong (usage, a file, a value): exit 2.
- `Refused`: understood, but not allowed now (the policy, the state, another holder): exit 1.
- `Retryable`: may pass by itself, so the flows retry it: exit 3.
  `Unavailable` is the common case: a system of record (the label store's database, the
  MLflow server, the DVC remote) cannot be reached.
- `Fault`: a defect, or a store answering with an error a retry would meet again (SQL the
  schema does not match, a model answering NaN): never retried, exit 4.

Families such as `LabelRegistryError` group the errors of one system of record; they add no
kind, and each error in them is of exactly one kind.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
EXIT_RETRYABLE = 3
EXIT_FAULT = 4


class PlatformError(Exception):
    """Base of every error the platform raises on purpose; the message is meant for its user.

    Never raised itself: an error of no kind ends as a fault would."""

    exit_code: ClassVar[int] = EXIT_FAULT


class BadInput(PlatformError):
    """The request or the data is wrong: a usage error, an unreadable file, a refused value."""

    exit_code = EXIT_BAD_INPUT


class Refused(PlatformError):
    """Understood, but not allowed now: the policy, the state of a registry, another holder."""

    exit_code = EXIT_REFUSED


class Retryable(PlatformError):
    """May pass by itself: the flows retry it, with backoff."""

    exit_code = EXIT_RETRYABLE


class Unavailable(Retryable):
    """A system of record cannot be reached (or is not ready for this code yet)."""


class Fault(PlatformError):
    """A defect, or a store answering with an error that a retry would meet again."""

    exit_code = EXIT_FAULT


KINDS: tuple[type[PlatformError], ...] = (BadInput, Refused, Retryable, Fault)
"""The kinds an error is of; `Unavailable` is a `Retryable`."""


def kind_of(error: type[BaseException]) -> type[PlatformError] | None:
    """The one kind of an error class, or None (not a platform error, or a family base)."""
    kinds = [kind for kind in KINDS if issubclass(error, kind)]
    return kinds[0] if len(kinds) == 1 else None
