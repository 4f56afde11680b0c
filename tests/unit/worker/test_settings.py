"""Worker settings checks that span fields, and the growing retry delay."""

from __future__ import annotations

import pytest

from framescale.settings import SettingsError, load_settings
from framescale.worker.settings import SQS_MAX_VISIBILITY_SECONDS, WorkerSettings

QUEUE = "https://sqs.us-east-1.amazonaws.com/1/q"


def settings(**values: str) -> WorkerSettings:
    return load_settings(WorkerSettings, queue_url=QUEUE, **values)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        # A beat that comes after the visibility ran out lets another worker take the job.
        (
            {"visibility_timeout_seconds": "30", "heartbeat_seconds": "30"},
            ["FRAMESCALE_WORKER_HEARTBEAT_SECONDS", "FRAMESCALE_WORKER_VISIBILITY_TIMEOUT_SECONDS"],
        ),
        (
            {"backoff_base_seconds": "5", "backoff_max_seconds": "1"},
            ["FRAMESCALE_WORKER_BACKOFF_MAX_SECONDS", "FRAMESCALE_WORKER_BACKOFF_BASE_SECONDS"],
        ),
        ({"lease_enabled": "true"}, ["FRAMESCALE_WORKER_NODE_NAME", "FRAMESCALE_WORKER_LEASE_ENABLED"]),
        # No bucket: every job would fail on its first upload.
        ({"output": "s3://"}, ["FRAMESCALE_WORKER_OUTPUT", "naming a bucket"]),
        ({"output": "s3:///prefix/"}, ["FRAMESCALE_WORKER_OUTPUT", "naming a bucket"]),
    ],
)
def test_bad_combinations_name_every_variable_involved(values: dict[str, str], names: list[str]) -> None:
    with pytest.raises(SettingsError) as error:
        settings(**values)
    for name in names:
        assert name in error.value.message, error.value.message


def test_a_heartbeat_shorter_than_the_visibility_timeout_is_accepted() -> None:
    assert settings(visibility_timeout_seconds="30", heartbeat_seconds="29.5").heartbeat_period == 29.5


def test_retry_delay_doubles_with_each_receive_up_to_its_cap() -> None:
    config = settings(retry_delay_seconds="30", retry_delay_max_seconds="3600")
    assert [config.retry_delay(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert config.retry_delay(8) == 3600
    assert config.retry_delay(10_000) == 3600  # no overflow, still capped
    # The cap never pulls the delay below the base delay, and never past SQS's 12 hours.
    assert settings(retry_delay_seconds="600", retry_delay_max_seconds="60").retry_delay(1) == 600
    with pytest.raises(SettingsError, match="FRAMESCALE_WORKER_RETRY_DELAY_MAX_SECONDS"):
        settings(retry_delay_max_seconds=str(SQS_MAX_VISIBILITY_SECONDS + 1))
