"""Fixtures shared by every test folder: the moto server (real HTTP) and its environment."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framescale import synthetic
from framescale.local.moto_server import MotoServer
from framescale.local.stack import LocalStack
from framescale.local.worker_process import WorkerProcess

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


@pytest.fixture(scope="session")
def model_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One TF-Serving-protocol server (real TensorFlow) over the exported models, for the session."""
    from framescale.local.model_server import ModelServerProcess

    server = ModelServerProcess(models_dir, log_path=tmp_path_factory.mktemp("model-server") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_worker(aws_env: dict[str, str], model_server: Any, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``python -m framescale.worker`` processes for a stack; stopped (and checked alive) at teardown."""
    started: list[WorkerProcess] = []

    def start(
        stack: LocalStack,
        *,
        model: str = "synthetic",
        slots: int = 1,
        labels: dict[int, str] | None = None,
        env_overrides: dict[str, str] | None = None,
        **settings: str,
    ) -> WorkerProcess:
        env = dict(aws_env)
        env.update(
            stack.worker_env(
                FRAMESCALE_WORKER_MODEL_SERVER=model_server.grpc_target,
                FRAMESCALE_WORKER_MODEL_NAME=model,
                FRAMESCALE_WORKER_LABELS=json.dumps(labels or synthetic.LABELS),
                FRAMESCALE_WORKER_SLOTS=str(slots),
                FRAMESCALE_WORKER_WAIT_TIME_SECONDS="1",
                FRAMESCALE_WORKER_WORK_DIR=str(tmp_path / f"work-{len(started)}"),
                FRAMESCALE_WORKER_LOG_FORMAT="json",
            )
        )
        env.update({f"FRAMESCALE_WORKER_{key.upper()}": str(value) for key, value in settings.items()})
        env.update(env_overrides or {})
        worker = WorkerProcess(env, log_path=tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=30)


def worker_log(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's JSON log records (non-JSON lines, e.g. tracebacks, are skipped)."""
    records = []
    if worker.log_path is None or not worker.log_path.exists():
        return records
    for line in worker.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records
