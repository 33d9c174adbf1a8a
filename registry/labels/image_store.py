"""Content-addressed image store: identical bytes are stored once, every write is atomic.

New files are first written to a private staging folder, held under an exclusive lock while
the importer commits the matching database rows, and only then moved into place. If the
process dies in between, `recover()` (run when the registry opens) finishes the job from
the database's point of view: staged files the database references are moved into place,
the others are deleted. The store therefore never holds an orphan, and the database never
references a file that is missing once the registry is open.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING = ".staging"
LOCK_NAME = ".lock"


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative_path(sha256: str, extension: str) -> str:
        return f"{sha256[:2]}/{sha256}.{extension}"

    def absolute(self, relative: str) -> Path:
        return self.root / relative

    def contains(self, relative: str) -> bool:
        return self.absolute(relative).is_file()

    def read(self, relative: str) -> bytes:
        return self.absolute(relative).read_bytes()

    @contextmanager
    def staging(self) -> Iterator[StagedWrites]:
        """Stage new files; publish them after the database commit, or discard on error."""
        staged = StagedWrites(self)
        try:
            yield staged
        except BaseException:
            staged.discard()
            raise
        else:
            staged.publish()

    def recover(self, is_referenced: Callable[[str], bool]) -> int:
        """Finish or undo writes of crashed importers; returns how many files were settled."""
        staging_root = self.root / STAGING
        if not staging_root.is_dir():
            return 0
        settled = 0
        for folder in staging_root.iterdir():
            lock = _try_lock(folder / LOCK_NAME)
            if lock is None:
                continue  # a live importer still owns it
            try:
                for staged_file in folder.iterdir():
                    if staged_file.name == LOCK_NAME:
                        continue
                    relative = _relative_from_staged(staged_file.name)
                    if is_referenced(relative):
                        self._move_into_place(staged_file, relative)
                    else:
                        staged_file.unlink()
                    settled += 1
                shutil.rmtree(folder, ignore_errors=True)
            finally:
                os.close(lock)
        return settled

    def _move_into_place(self, staged_file: Path, relative: str) -> None:
        target = self.absolute(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged_file.replace(target)


class StagedWrites:
    """Files written by one transaction, invisible in the store until `publish()`."""

    def __init__(self, store: ImageStore) -> None:
        self._store = store
        self._folder: Path | None = None
        self._lock: int | None = None
        self._pending: dict[str, Path] = {}

    def put(self, relative: str, content: bytes) -> None:
        if relative in self._pending or self._store.contains(relative):
            return
        folder = self._ensure_folder()
        staged = folder / relative.replace("/", "__")
        temporary = staged.with_name(staged.name + ".part")
        temporary.write_bytes(content)
        temporary.replace(staged)
        self._pending[relative] = staged

    def publish(self) -> None:
        for relative, staged in self._pending.items():
            self._store._move_into_place(staged, relative)
        self._pending.clear()
        self._close()

    def discard(self) -> None:
        self._pending.clear()
        self._close()

    def _ensure_folder(self) -> Path:
        if self._folder is None:
            folder = self._store.root / STAGING / uuid.uuid4().hex
            folder.mkdir(parents=True)
            self._lock = _try_lock(folder / LOCK_NAME)
            self._folder = folder
        return self._folder

    def _close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _relative_from_staged(name: str) -> str:
    return name.replace("__", "/", 1)


def _try_lock(path: Path) -> int | None:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor
