"""What every flow shares: the platform a flow run works on, and how a step is retried."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from pipelines.errors import Retryable
from usecases.params import Params
from usecases.platform import Platform

R = TypeVar("R")
E = TypeVar("E")
PlatformOpener = Callable[[Sequence[str]], AbstractContextManager[tuple[Platform, Params]]]

# The composition root that builds the platform, named in pyproject.toml: the flows depend on
# the `Platform` it returns, never on the package that builds it.
COMPOSITION_ROOT = ("cme.composition_root", "platform")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Retryable,  # a system of record unreachable (Unavailable), or a lost race: decide again
    ConnectionError,
    TimeoutError,
)
RETRIES = 3
BACKOFF_SECONDS = 10  # 10, 20, 40 s, with jitter


def is_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed step only when its error may pass by itself (a database, MLflow or
    DVC remote out of reach, a concurrent change); bad input, a refusal or a fault would
    fail the same way again."""
    try:
        state.result()
    except TRANSIENT_ERRORS:
        return True
    except BaseException:
        return False
    return False


def step(name: str, *, retries: int = RETRIES) -> Callable[[Callable[..., R]], Task[..., R]]:
    """A task around one domain call: retried with backoff on transient errors, never
    cached (each run works on what the registries hold now)."""
    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_SECONDS),
        retry_jitter_factor=0.5,
        retry_condition_fn=is_transient,
        cache_policy=NO_CACHE,
    )


@contextmanager
def opened(overrides: list[str] | None) -> Iterator[tuple[Platform, Params]]:
    """The platform as configured by the environment (CME_*), with params.yaml and any
    `key=value` overrides; closed when the flow run ends."""
    with composition_root()(overrides or []) as (platform, params):
        yield platform, params


def composition_root() -> PlatformOpener:
    group, name = COMPOSITION_ROOT
    found = entry_points(group=group, name=name)
    if not found:
        raise LookupError(f"no entry point {name!r} in group {group!r}: is cme installed?")
    opener: PlatformOpener = next(iter(found)).load()
    return opener


def skipped(result: Any, message: str) -> State[Any]:
    """A run that ended early on purpose: completed, named Skipped in the Prefect UI."""
    return Completed(name="Skipped", message=message, data=result)


class Watchers(Generic[E]):
    """Who else hears of a flow's progress in this process (and thread), e.g. the progress
    bar of the command that runs the flow: a flow takes no callback as a parameter (the
    orchestrator stores its parameters). Work done by a worker elsewhere is not heard."""

    def __init__(self, name: str) -> None:
        self._watchers: ContextVar[tuple[Callable[[E], None], ...]] = ContextVar(name, default=())

    @contextmanager
    def watching(self, watcher: Callable[[E], None]) -> Iterator[None]:
        token = self._watchers.set((*self._watchers.get(), watcher))
        try:
            yield
        finally:
            self._watchers.reset(token)

    def teller(self) -> Callable[[E], None]:
        """Tells `event` to the watchers of the caller's context (taken now: a step's
        callbacks may run where the context is not the same)."""
        watchers = self._watchers.get()

        def tell(event: E) -> None:
            for watcher in watchers:
                watcher(event)

        return tell
