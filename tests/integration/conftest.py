"""Fixtures for integration tests that need a Kubernetes API (the operator's and the worker's Lease)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.operator.kube_emulator import EmulatorThread


@pytest.fixture(scope="module")
def kube_api() -> Iterator[EmulatorThread]:
    """kmock's Kubernetes emulator (with our small extension) over HTTP on 127.0.0.1."""
    emulator = EmulatorThread().start()
    try:
        yield emulator
    finally:
        emulator.stop()
