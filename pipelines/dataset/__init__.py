"""Snapshot manifests, the lesion-grouped split, tf.data builders and augmentation."""

from pipelines.dataset.split import SPLITS, SplitFractions, assign_lesion_splits

__all__ = ["SPLITS", "SplitFractions", "assign_lesion_splits"]
