"""Fixtures shared by every test folder: the moto server (real HTTP) and its environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from framescale.local.moto_server import MotoServer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server process for the session; tests create uniquely named resources in it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = MotoServer(log_path=log).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this process's boto3 clients at the moto server; returns the variables for children."""
    for key, value in moto_server.client_env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    return dict(moto_server.client_env)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The exported SavedModels (``make models``); tests that need them fail with the fix if absent."""
    path = Path(os.environ.get("FRAMESCALE_TEST_MODELS", REPO_ROOT / "models"))
    if not (path / ".exported").exists():
        pytest.fail(f"exported models not found in {path}: run `make models` (make test does it for you)")
    return path
