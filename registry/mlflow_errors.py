"""Which MLflow failures mean that the server could not be reached, told by exception type.

MLflow's REST client (mlflow/utils/rest_utils.py) retries a request, then raises an
`MlflowException` from inside its `except`: the `requests` error that ended the retries
(ConnectionError when nothing answers, Timeout, RetryError when the server kept answering
429/5xx) is the exception's `__cause__` or `__context__`. A server that answered 503 or 504
gives an `MlflowException` whose `error_code` says so. A tracking URI naming a database
(the embedded SQLite default) fails with the SQLAlchemy error in the chain instead."""

from __future__ import annotations

from collections.abc import Iterator

from registry.database import is_unreachable as database_unreachable

UNAVAILABLE_ERROR_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED"})


def is_unreachable(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says the server was not reached."""
    return any(_says_unreachable(link) for link in _chain(error))


def _says_unreachable(error: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, MlflowException):
        return error.error_code in UNAVAILABLE_ERROR_CODES
    if isinstance(error, DBAPIError):
        return database_unreachable(error)
    unreachable = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    return isinstance(error, unreachable)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then the ones it was raised from or while handling (no cycles)."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__
