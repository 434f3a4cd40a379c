"""The `reliability` fixture: tests record the figures that `make reliability` reports."""

from collections.abc import Callable

import pytest

from pipelines.cli import edge
from tests.reliability_report import ReliabilityReport

_report = ReliabilityReport()

Record = Callable[..., None]


@pytest.fixture(autouse=True)
def fresh_edge_settings() -> None:
    """Each test that runs a CLI command in-process reads the environment as it set it."""
    edge.settings.cache_clear()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Record:
    """`reliability(scenario, figure, value, goal="")` adds one row to the report."""
    test = request.node.nodeid

    def record(scenario: str, figure: str, value: float | int | str, goal: str = "") -> None:
        _report.record(test, scenario, figure, value, goal)

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call" or report.failed:
        _report.settle(item.nodeid, report.outcome)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = _report.write()
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"reliability figures: {path} and {path.with_suffix('.md')}")
