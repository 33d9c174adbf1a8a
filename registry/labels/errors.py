"""Domain errors of the label registry, each of one kind (`pipelines.errors`). The database's
own (unreachable, a lost race, a schema behind the code, a fault) are `registry.database`'s,
raised for every repository over that database."""

from __future__ import annotations

from pipelines.errors import BadInput, PlatformError


class LabelRegistryError(PlatformError):
    """The family of the label registry's own errors; the message is meant for a steward.
    Adds no kind: each error below is of exactly one."""


class RejectedSubmission(LabelRegistryError, BadInput):
    """A single submission (`labels add`) was refused; `reason_kind` is its short code."""

    def __init__(self, reason_kind: str, message: str) -> None:
        super().__init__(message)
        self.reason_kind = reason_kind


class UnknownImage(LabelRegistryError, BadInput, LookupError):
    """No registered image has that id."""


class UnknownSnapshot(LabelRegistryError, BadInput, LookupError):
    """No recorded snapshot has that id."""


class LesionConflict(LabelRegistryError, BadInput):
    """A change would give one lesion two different diagnoses (relabel the whole lesion)."""
