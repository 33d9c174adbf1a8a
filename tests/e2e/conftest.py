"""One installation of the production topology for the end-to-end session (tests/e2e run in
one process, in file order: the faults come after the clinic's week). A failing test's
report ends with the last lines of every service's log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.topology import Topology, running_topology

_RUNNING: list[Topology] = []


@pytest.fixture(scope="session")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with running_topology(tmp_path_factory.mktemp("topology")) as up:
        _RUNNING.append(up)
        yield up
        _RUNNING.remove(up)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report: pytest.TestReport = yield
    if report.failed and _RUNNING:
        report.sections.append(("the services' logs", _RUNNING[-1].tails()))
    return report
