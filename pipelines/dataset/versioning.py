"""Data versions with DVC: `data.dvc` at the project root tracks the whole data folder (the
image store and the snapshot manifests); each version is pushed to a DVC remote (a folder
under $CME_HOME by default; S3 or any DVC remote in production) and can be restored,
byte for byte, from its hash alone.

DVC's Python API runs in this process (each `dvc` subprocess would cost a second of
start-up); its repository lock still keeps two writers apart. The API takes no progress
callback: DVC draws its own progress bars (tqdm) when stderr is a terminal, and a caller that
asks to hear them (`FileProgress`) has them drawn nowhere and read instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import BadInput, Fault, PlatformError, Unavailable

_WORK_IN_PROGRESS = (".staging/", ".*.partial")
HEARD_EVERY_SECONDS = 0.2

FileProgress = Callable[[str, int, int | None], None]
"""Hears DVC at work: what it is doing (e.g. `Adding data to cache`), files done, and of how
many when DVC knows."""


class DataVersionError(PlatformError):
    """The family of the data versioning errors; the message carries DVC's own explanation.
    Adds no kind: each error below is of exactly one."""


class DataRemoteUnavailable(DataVersionError, Unavailable):
    """DVC could not move data to or from the remote (unreachable, or failing for now)."""


class DataVersionFailed(DataVersionError, Fault):
    """A DVC step failed in a way a retry would meet again (a broken project or cache)."""


class DataFolderError(DataVersionError, BadInput):
    """A folder given to DVC is not where it can be (outside the project, already there)."""


@dataclass(frozen=True)
class DataVersioning:
    project_dir: Path
    data_dir: Path
    remote_url: str
    remote_name: str = "cme"
    remote_endpoint: str | None = None  # an S3-compatible store's URL (MinIO)

    @property
    def pointer_file(self) -> Path:
        return self.project_dir / f"{self.data_dir.name}.dvc"

    def commit(self, on_files: FileProgress | None = None) -> str:
        """Version the data folder as it is now, push it to the remote, return its hash;
        `on_files` hears DVC's progress through the files as it goes."""
        with self._repository() as repo, _progress_heard(on_files):
            repo.add([self._relative(self.data_dir)])
            repo.push([self.pointer_file.name], remote=self.remote_name)
        return self.current_hash() or self._fail_without_hash()

    def current_hash(self) -> str | None:
        if not self.pointer_file.is_file():
            return None
        pointer = yaml.safe_load(self.pointer_file.read_text(encoding="utf-8")) or {}
        outs = pointer.get("outs") or [{}]
        md5 = outs[0].get("md5")
        return str(md5) if md5 else None

    def restore(self, dvc_hash: str, target: Path) -> None:
        """Materialize the data folder of version `dvc_hash` at `target` (which must not
        exist), fetching from the remote what the local cache lacks."""
        if target.exists():
            raise DataFolderError(f"{target} already exists; restore into a new folder")
        staging = self.project_dir / f".cme-restore-{dvc_hash[:12]}-{os.getpid()}"
        pointer = staging.with_name(staging.name + ".dvc")
        pointer.write_text(
            yaml.safe_dump({"outs": [{"md5": dvc_hash, "path": staging.name, "hash": "md5"}]}),
            encoding="utf-8",
        )
        try:
            with self._repository() as repo:
                repo.pull([pointer.name], remote=self.remote_name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging, target)
        finally:
            pointer.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    @contextlib.contextmanager
    def _repository(self) -> Iterator[Any]:
        """The DVC repository at the project root (created on first use), with the remote
        configured, inside the project folder as DVC expects; DVC errors are translated."""
        from dvc.exceptions import DvcException, FileTransferError, HTTPError
        from dvc.repo import Repo

        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        logging.getLogger("dvc").setLevel(logging.WARNING)
        try:
            with contextlib.chdir(self.project_dir):
                if not Path(".dvc").is_dir():
                    with contextlib.redirect_stdout(io.StringIO()):
                        Repo.init(".", no_scm=not Path(".git").exists())
                self._ignore_work_in_progress()
                with Repo(".") as repo:
                    self._configure(repo)
                    yield repo
        except (FileTransferError, HTTPError) as error:
            raise DataRemoteUnavailable(f"dvc: {error}") from error
        except DvcException as error:
            raise DataVersionFailed(f"dvc: {error}") from error

    def _configure(self, repo: Any) -> None:
        remote = {"url": self.remote_url}
        if self.remote_endpoint:
            remote["endpointurl"] = self.remote_endpoint
        local = repo.config.read("local")
        if local.get("remote", {}).get(self.remote_name) != remote:
            with repo.config.edit(level="local") as config:
                config["remote"][self.remote_name] = remote
        if repo.config.read("repo").get("core", {}).get("analytics") is not False:
            with repo.config.edit(level="repo") as config:
                config["core"]["analytics"] = False

    def _ignore_work_in_progress(self) -> None:
        """Files being written (image-store staging, partial snapshot folders) are never
        part of a version."""
        dvcignore = Path(".dvcignore")
        present = dvcignore.read_text(encoding="utf-8").splitlines() if dvcignore.exists() else []
        missing = [pattern for pattern in _WORK_IN_PROGRESS if pattern not in present]
        if missing:
            with dvcignore.open("a", encoding="utf-8") as handle:
                handle.write("".join(f"{pattern}\n" for pattern in missing))

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.project_dir.resolve()))
        except ValueError:
            raise DataFolderError(
                f"data folder {path} is outside the DVC project {self.project_dir}"
            ) from None

    def _fail_without_hash(self) -> str:
        raise DataVersionFailed(f"{self.pointer_file} has no md5 after `dvc add`")


@contextlib.contextmanager
def _progress_heard(on_files: FileProgress | None) -> Iterator[None]:
    """DVC's progress bars, drawn nowhere and read every HEARD_EVERY_SECONDS into `on_files`
    (the innermost bar open: DVC nests a bar per file set in one per target)."""
    if on_files is None:
        yield
        return
    from tqdm import tqdm

    def innermost() -> Any:
        with tqdm.get_lock():
            bars = [bar for bar in tqdm._instances if not bar.disable]
        return max(bars, key=lambda bar: abs(bar.pos), default=None)

    def listen(stopped: threading.Event) -> None:
        while not stopped.wait(HEARD_EVERY_SECONDS):
            bar = innermost()
            if bar is not None:  # a total below the count is one DVC has not set yet
                done, total = int(bar.n), int(bar.total or 0)
                on_files(
                    str(bar.desc).strip(": "), done, total if total and total >= done else None
                )

    stopped = threading.Event()
    listener = threading.Thread(target=listen, args=(stopped,), name="dvc-progress")
    with (
        Path(os.devnull).open("w", encoding="utf-8") as nowhere,
        contextlib.redirect_stderr(nowhere),  # where DVC's bars draw (they would on a terminal)
        _environment("DVC_IGNORE_ISATTY", "true"),  # and draw, so count, on any stderr
    ):
        listener.start()
        try:
            yield
        finally:
            stopped.set()
            listener.join()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
