"""The frozen backbone's features of each image, computed once: feature extraction's head
retrains week after week on features, so a week costs what its new images cost.

A feature is the backbone's pooled output for one image, as the classifier computes it
(resizing and the backbone's preprocessing included), keyed by the image's sha256 under the
backbone's identity: a digest of its name, input size and every weight (batch statistics
included). A backbone whose weights changed in any way has another identity, so its
features are computed afresh; nothing stale is ever read.

Augmentation cannot pass through a cache of fixed features: with the cache, the head learns
from each training image as it is (no flips, zoom or colour changes). `bench/feature_cache.py`
measures what that costs.

On disk: `<folder>/<identity>/chunk-*.npz`, each the features of one computation with the
sha256s they belong to, written whole to a temporary file and renamed, so a crash leaves no
half chunk and two trainings computing at once only duplicate work. The least recently used
identities beyond `keep` are removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Extractor = Callable[[Sequence[str]], np.ndarray]  # image files -> features, row for row
KEPT_IDENTITIES = 3
ORPHAN_AGE_S = 3600.0


def backbone_identity(name: str, image_size: int, weights: Sequence[np.ndarray]) -> str:
    """The digest under which a backbone's features are kept."""
    digest = hashlib.sha256(f"{name}:{image_size}".encode())
    for weight in weights:
        array = np.ascontiguousarray(weight)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class CacheUse:
    """What one request found: how many images were read from the cache and computed."""

    cached: int
    computed: int


class FeatureCache:
    def __init__(self, folder: Path, identity: str, keep: int = KEPT_IDENTITIES) -> None:
        self.root = folder
        self.folder = folder / identity
        self.folder.mkdir(parents=True, exist_ok=True)
        os.utime(self.folder)  # most recently used
        _prune(folder, keep)
        for orphan in self.folder.glob("*.npz.tmp"):  # a crash's, once nobody can be writing it
            if time.time() - orphan.stat().st_mtime > ORPHAN_AGE_S:
                orphan.unlink(missing_ok=True)
        self._known: dict[str, np.ndarray] = {}
        self._read_chunks: set[str] = set()

    def features(
        self, sha256s: Sequence[str], files: Sequence[str], extract: Extractor,
        batch_size: int = 256,
    ) -> tuple[np.ndarray, CacheUse]:  # fmt: skip
        """The features of each image (`sha256s[i]` is `files[i]`'s digest), in order;
        those not cached are computed with `extract`, in batches, and kept."""
        self._read_new_chunks()
        missing = {sha: path for sha, path in zip(sha256s, files, strict=True)
                   if sha not in self._known}  # fmt: skip
        shas, paths = list(missing), list(missing.values())
        for start in range(0, len(paths), batch_size):
            computed = np.asarray(extract(paths[start : start + batch_size]), dtype=np.float32)
            self._write_chunk(shas[start : start + batch_size], computed)
        use = CacheUse(cached=len(set(sha256s)) - len(missing), computed=len(missing))
        if not sha256s:
            return np.zeros((0, 0), dtype=np.float32), use
        return np.stack([self._known[sha] for sha in sha256s]), use

    def _write_chunk(self, shas: list[str], features: np.ndarray) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".npz.tmp")
        with os.fdopen(handle, "wb") as file:
            np.savez(file, sha256=np.asarray(shas), features=features)
        chunk = self.folder / f"chunk-{uuid.uuid4().hex}.npz"
        Path(temporary).replace(chunk)
        self._read_chunks.add(chunk.name)
        self._known.update(zip(shas, features, strict=True))

    def _read_new_chunks(self) -> None:
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            if chunk.name in self._read_chunks:
                continue
            with np.load(chunk) as stored:
                self._known.update(zip(stored["sha256"].tolist(), stored["features"],
                                       strict=True))  # fmt: skip
            self._read_chunks.add(chunk.name)

    def __len__(self) -> int:
        self._read_new_chunks()
        return len(self._known)


def _prune(folder: Path, keep: int) -> None:
    identities = sorted((path for path in folder.iterdir() if path.is_dir()),
                        key=lambda path: path.stat().st_mtime, reverse=True)  # fmt: skip
    for stale in identities[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
