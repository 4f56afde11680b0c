"""Transient vs permanent classification and bounded backoff."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from framescale.worker.errors import PermanentJobError, TransientJobError
from framescale.worker.retry import RetryPolicy, aws_error


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("SlowDown", 503), TransientJobError),
        (client_error("InternalError", 500), TransientJobError),
        (client_error("PreconditionFailed", 412), TransientJobError),
        (client_error("404", 404), PermanentJobError),
        (client_error("AccessDenied", 403), PermanentJobError),
        (EndpointConnectionError(endpoint_url="http://x"), TransientJobError),
    ],
)
def test_classification(error: Exception, kind: type) -> None:
    assert isinstance(aws_error(error, stage="download", what="GET s3://b/k"), kind)


def test_retries_transient_then_succeeds() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("SlowDown", 503)
        return "ok"

    policy = RetryPolicy(attempts=5, base_seconds=0.1, max_seconds=1.0)
    result = policy.call(flaky, classify=lambda e: aws_error(e, stage="s", what="w"), sleep=sleeps.append)
    assert result == "ok" and len(calls) == 3 and len(sleeps) == 2
    assert all(0.0 < pause <= 1.0 for pause in sleeps)


def test_gives_up_after_the_bound_with_a_transient_error() -> None:
    policy = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.02)
    calls = []

    def always() -> None:
        calls.append(1)
        raise client_error("SlowDown", 503)

    with pytest.raises(TransientJobError):
        policy.call(always, classify=lambda e: aws_error(e, stage="s", what="w"), sleep=lambda _: None)
    assert len(calls) == 3


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise client_error("404", 404)

    with pytest.raises(PermanentJobError):
        RetryPolicy().call(missing, classify=lambda e: aws_error(e, stage="s", what="w"), sleep=lambda _: None)
    assert len(calls) == 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_seconds=1.0, max_seconds=4.0)
    assert all(policy.delay(10) <= 4.0 for _ in range(50))
    assert all(0.5 <= policy.delay(1) <= 1.0 for _ in range(50))
