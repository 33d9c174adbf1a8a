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
NEW_PREFIX = ".new-"


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
        """Stage new files; publish them after the database commit. On an error before the
        commit was attempted they are discarded; after it (the commit may have gone through,
        say an interrupt as it returned) they are left for `recover()`, which asks the
        database."""
        staged = StagedWrites(self)
        try:
            yield staged
        except BaseException:
            staged.abandon()
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
            if folder.name.startswith(NEW_PREFIX):
                if not _owner_alive(folder):  # died before staging anything
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            lock = _try_lock(folder / LOCK_NAME, create=False)
            if lock is None:
                continue  # a live importer owns it, or it is already gone
            try:
                settled += self._settle(folder, is_referenced)
            except FileNotFoundError:
                continue  # its importer finished and removed it while we looked
            finally:
                os.close(lock)
        return settled

    def _settle(self, folder: Path, is_referenced: Callable[[str], bool]) -> int:
        settled = 0
        for staged_file in folder.iterdir():
            if staged_file.name == LOCK_NAME:
                continue
            if staged_file.name.endswith(".part"):
                staged_file.unlink()
                continue
            relative = _relative_from_staged(staged_file.name)
            if is_referenced(relative):
                self._move_into_place(staged_file, relative)
            else:
                staged_file.unlink()
            settled += 1
        shutil.rmtree(folder, ignore_errors=True)
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
        self._commit_attempted = False

    def committing(self) -> None:
        """Mark that the database commit is about to be tried: from now on the staged files
        are never deleted here, only settled by `recover()` against the database."""
        self._commit_attempted = True

    def put(self, relative: str, content: bytes) -> None:
        if relative in self._pending or self._store.contains(relative):
            return
        folder = self._ensure_folder()
        staged = folder / relative.replace("/", "__")
        temporary = staged.with_name(staged.name + ".part")
        temporary.write_bytes(content)
        temporary.replace(staged)
        self._pending[relative] = staged

    def rolled_back(self) -> None:
        """The database says the commit did not happen: the staged files may be discarded."""
        self._commit_attempted = False

    def publish(self) -> None:
        for relative, staged in self._pending.items():
            self._store._move_into_place(staged, relative)
        self._pending.clear()
        self._close()

    def abandon(self) -> None:
        if self._commit_attempted:
            self._release(remove=False)  # recover() settles it against the database
        else:
            self._release(remove=True)
        self._pending.clear()

    def _ensure_folder(self) -> Path:
        """Create and lock the folder under a private name, then rename it into view, so
        that `recover()` never sees a staging folder without its owner's lock."""
        if self._folder is None:
            name = uuid.uuid4().hex
            hidden = self._store.root / STAGING / f"{NEW_PREFIX}{os.getpid()}-{name}"
            hidden.mkdir(parents=True)
            lock = _try_lock(hidden / LOCK_NAME, create=True)
            if lock is None:
                raise RuntimeError(f"could not lock the new staging folder {hidden}")
            self._lock = lock
            self._folder = hidden.rename(hidden.with_name(name))
        return self._folder

    def _close(self) -> None:
        self._release(remove=True)

    def _release(self, *, remove: bool) -> None:
        if self._folder is not None and remove:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _relative_from_staged(name: str) -> str:
    return name.replace("__", "/", 1)


def _owner_alive(folder: Path) -> bool:
    """A folder still being created is named .new-<pid>-<uuid>: is that process alive?"""
    try:
        pid = int(folder.name[len(NEW_PREFIX) :].split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _try_lock(path: Path, *, create: bool) -> int | None:
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor
