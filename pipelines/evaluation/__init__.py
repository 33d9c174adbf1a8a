"""Evaluation of champion and challenger on the same locked test set: metrics at the
operating threshold, curves, subgroups and paired statistics -> EvaluationReport."""
