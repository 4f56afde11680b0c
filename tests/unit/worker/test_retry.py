"""Transient vs permanent classification and bounded backoff."""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from framescale.worker.errors import JobCancelled, PermanentJobError, TransientJobError
from framescale.worker.retry import RetryPolicy, aws_error


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("SlowDown", 503), TransientJobError),
        (client_error("InternalError", 500), TransientJobError),
        (client_error("PreconditionFailed", 412), TransientJobError),
        (client_error("ConditionalRequestConflict", 409), TransientJobError),
        (client_error("404", 404), PermanentJobError),
        (client_error("AccessDenied", 403), PermanentJobError),
        (EndpointConnectionError(endpoint_url="http://x"), TransientJobError),
        # botocore refused the request itself (e.g. a bucket name from settings S3 cannot have).
        (ParamValidationError(report="Invalid bucket name"), PermanentJobError),
    ],
)
def test_classification(error: Exception, kind: type) -> None:
    assert isinstance(aws_error(error, stage="download", what="GET s3://b/k"), kind)


def test_retries_transient_then_succeeds() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    policy = RetryPolicy(attempts=5, base_seconds=0.01, max_seconds=0.02)
    result = policy.call(flaky, classify=lambda e: aws_error(e, stage="s", what="w"))
    assert result == "ok" and len(calls) == 3


def test_a_cancel_ends_the_backoff_wait_at_once() -> None:
    cancel = threading.Event()

    def failing() -> None:
        threading.Timer(0.1, cancel.set).start()
        raise client_error("SlowDown", 503)

    policy = RetryPolicy(attempts=5, base_seconds=30.0, max_seconds=30.0)
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        policy.call(failing, classify=lambda e: aws_error(e, stage="s", what="w"), cancel=cancel)
    assert time.monotonic() - started < 5, "the 15-30 s backoff was slept through despite the cancel"


def test_gives_up_after_the_bound_with_a_transient_error() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.02)
    calls = []

    def always() -> None:
        calls.append(1)
        raise client_error("SlowDown", 503)

    with pytest.raises(TransientJobError):
        policy.call(always, classify=lambda e: aws_error(e, stage="s", what="w"))
    assert len(calls) == 3


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise client_error("404", 404)

    with pytest.raises(PermanentJobError):
        RetryPolicy().call(missing, classify=lambda e: aws_error(e, stage="s", what="w"))
    assert len(calls) == 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_seconds=1.0, max_seconds=4.0)
    assert all(policy.delay(10) <= 4.0 for _ in range(50))
    assert all(0.5 <= policy.delay(1) <= 1.0 for _ in range(50))
