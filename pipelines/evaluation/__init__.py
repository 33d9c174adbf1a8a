"""Evaluation of champion and challenger on the same locked test set: metrics at the
operating threshold, curves, subgroups and paired statistics -> EvaluationReport."""

from pipelines.errors import BadInput


class EvaluationError(BadInput, ValueError):
    """The test set or a model's scores cannot support an evaluation; the message says why."""
