"""Fixtures of the real-stack scenarios: a whole local stack per test (moto in this process, the
Kubernetes API emulator, the fleet of fake nodes, the referee). The operators are started by the
tests themselves, since some tests kill them or run two."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios import harness


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[harness.Stack]:
    if request.node.get_closest_marker("needs_handshake") and not harness.operator_drains_before_terminating():
        pytest.skip("waiting for the operator's drain handshake (framescale_operator.plan)")
    timing = getattr(request, "param", None) or harness.NodeTiming()
    with harness.local_stack(tmp_path, timing=timing) as made:
        yield made
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for run in made.operators:
                print(f"--- {run.name} log (tail) ---\n{run.log_tail(150)}")
            print(f"--- the referee's record: {tmp_path / 'ledger.jsonl'} (written at teardown)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
