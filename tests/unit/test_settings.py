"""Settings: validated at start, with errors that name the variable."""

from __future__ import annotations

import pytest

from framescale.settings import SettingsError, load_settings
from framescale.worker.settings import WorkerSettings


def test_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMESCALE_WORKER_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q")
    monkeypatch.setenv("FRAMESCALE_WORKER_LABELS", '{"1": "person", "3": "car"}')
    settings = load_settings(WorkerSettings)
    assert settings.labels == {1: "person", 3: "car"}
    assert settings.heartbeat_period == settings.visibility_timeout_seconds / 3


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("FRAMESCALE_WORKER_BATCH_SIZE", "0", "FRAMESCALE_WORKER_BATCH_SIZE"),
        ("FRAMESCALE_WORKER_SAMPLE_FPS", "-1", "FRAMESCALE_WORKER_SAMPLE_FPS"),
        ("FRAMESCALE_WORKER_RESIZE_MODE", "crop", "FRAMESCALE_WORKER_RESIZE_MODE"),
        ("FRAMESCALE_WORKER_OUTPUT", "bucket/prefix", "s3://bucket/prefix/"),
        ("FRAMESCALE_WORKER_LEASE_ENABLED", "true", "FRAMESCALE_WORKER_NODE_NAME"),
        ("FRAMESCALE_WORKER_LABELS", "person", "FRAMESCALE_WORKER_LABELS"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str) -> None:
    monkeypatch.setenv("FRAMESCALE_WORKER_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/q")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings(WorkerSettings)
    assert says in str(error.value)


def test_missing_queue_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMESCALE_WORKER_QUEUE_URL", raising=False)
    with pytest.raises(SettingsError, match="FRAMESCALE_WORKER_QUEUE_URL"):
        load_settings(WorkerSettings)
