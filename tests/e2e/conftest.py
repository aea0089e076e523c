"""Fixtures for end-to-end tests: one real Label Studio per test session.

Mark e2e tests with ``@pytest.mark.e2e``. Use a new project per test (``label_studio.create_project``); the
server and its admin are shared by the whole session. When a test that uses ``label_studio`` fails, the
server's log tail is attached to its failure report; the start-up timings are printed in the terminal summary.
"""

from __future__ import annotations

import pytest

from tests.e2e.labelstudio import LabelStudioServer

_timings: list[str] = []


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> LabelStudioServer:
    """A running Label Studio 1.23.2 on 127.0.0.1 (a copy of the cached template data dir), stopped at the end."""
    server = LabelStudioServer.start(tmp_path_factory.mktemp("label-studio"))
    built = server.template.build_seconds
    if built is not None:
        _timings.append(f"template built in {built:.1f} s (first start on an empty data dir, migrations)")
    _timings.append(f"started from the template in {server.startup_seconds:.1f} s at {server.url}")
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    server = getattr(item, "funcargs", {}).get("label_studio")
    if report.failed and isinstance(server, LabelStudioServer):
        report.sections.append(("Label Studio log tail", server.log_tail(80)))
    return report


def pytest_terminal_summary(terminalreporter):
    for line in _timings:
        terminalreporter.write_line(f"[e2e] Label Studio: {line}")
