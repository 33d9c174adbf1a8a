"""Domain errors of the label registry; database errors never leak past the repository."""

from __future__ import annotations


class LabelRegistryError(Exception):
    """Base of every label-registry error; the message is meant for a steward."""


class RegistryUnavailable(LabelRegistryError):
    """The database cannot be reached or answered with an error."""


class SchemaOutOfDate(LabelRegistryError):
    """The database schema is behind the code: run `cme db upgrade`."""


class RejectedSubmission(LabelRegistryError):
    """A single submission (`labels add`) was refused; `reason_kind` is its short code."""

    def __init__(self, reason_kind: str, message: str) -> None:
        super().__init__(message)
        self.reason_kind = reason_kind


class ConcurrentChange(LabelRegistryError):
    """Another writer changed the same images or lesions first; this write was rolled back."""


class UnknownImage(LabelRegistryError):
    """No registered image has that id."""


class UnknownSnapshot(LabelRegistryError):
    """No recorded snapshot has that id."""


class LesionConflict(LabelRegistryError):
    """A change would give one lesion two different diagnoses."""
